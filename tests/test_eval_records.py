"""eval's JSON keeps its shape: a results file as eval writes it (keys, their order, nulls) loads
into records and is written back byte for byte, so an interrupted run resumes from it; and the run's
result (`eval --json`, report.json, the registry's runs) keeps its keys and their order."""

import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from yollava_cli.evaluation.records import Forgetting, RunResult, subjects_from_json, subjects_to_json
from yollava_cli.evaluation.runs import run_summary

RECOGNITION = {"positive": 0.5, "negative": 1.0, "weighted": 0.75, "auc": 0.625, "threshold": 0.31,
               "weighted_at_threshold": 0.5}
LANGUAGE = {"text_mcq": {"accuracy": None, "n": 0}, "visual_mcq": {"accuracy": 0.5, "n": 2},
            "caption_recall": {"recall": 0.0, "n": 2}}
OLD_RESULTS = {  # one fold's results file, keys as eval writes them
    "dog": {"yollava": {"recognition": RECOGNITION, **LANGUAGE,
                        "facts_prompt": {"accuracy": 0.6666666666666666, "n": 3, "gift_hits": 1},
                        "facts_none": {"accuracy": 0.3333333333333333, "n": 3, "gift_hits": 0}},
            "head": {"recognition": RECOGNITION},
            "ask": {"recognition": RECOGNITION, "agreement_with_fused": {"rate": 1.0, "n": 4}}},
    "cat": {"yollava": {"recognition": RECOGNITION, **LANGUAGE},  # no facts noted
            "head": {"recognition": RECOGNITION},
            "ask": {"recognition": RECOGNITION, "agreement_with_fused": {"rate": 0.75, "n": 4}}},
}

RECOGNITION_MEANS = [k for figure in ("positive", "negative", "weighted", "auc", "weighted_at_threshold")
                     for k in (figure, f"{figure}_ci95")]
SUMMARY_KEYS = {  # each method's groups over subjects, and each group's keys, in order
    "yollava": {"recognition": RECOGNITION_MEANS, "text_mcq": ["accuracy", "accuracy_ci95", "n"],
                "visual_mcq": ["accuracy", "accuracy_ci95", "n"], "caption_recall": ["recall", "recall_ci95", "n"],
                "facts_none": ["accuracy", "accuracy_ci95", "n", "gift_hits", "gift_asked"],
                "facts_prompt": ["accuracy", "accuracy_ci95", "n", "gift_hits", "gift_asked"]},
    "head": {"recognition": RECOGNITION_MEANS},
    "ask": {"recognition": RECOGNITION_MEANS, "agreement_with_fused": ["rate", "rate_ci95", "n"]},
}


def test_a_results_file_loads_and_is_written_back_byte_for_byte():
    text = json.dumps(OLD_RESULTS, indent=1)
    loaded = subjects_from_json(json.loads(text))
    assert loaded["dog"]["yollava"].facts["facts_prompt"].gift_hits == 1
    assert loaded["cat"]["ask"].agreement_with_fused.rate == 0.75 and loaded["cat"]["head"].text_mcq is None
    assert json.dumps(subjects_to_json(loaded), indent=1) == text


def test_the_runs_result_keeps_its_keys_and_their_order():
    dataset = SimpleNamespace(subjects={"dog": None, "cat": None}, root=Path("/data/concepts"))
    done = subjects_from_json(json.loads(json.dumps(OLD_RESULTS)))
    result = run_summary(dataset, "tiny", [(done, Forgetting(6, 6, True))], ["yollava", "head", "ask"], [], "isolated", time.perf_counter())
    assert isinstance(result, RunResult)
    written = json.loads(json.dumps(result.to_json()))
    assert list(written) == ["model", "dataset", "methods", "subjects", "forgetting", "folds", "negatives", "protocol",
                             "wall_s", "finished_at"]
    assert {m: {g: list(keys) for g, keys in groups.items()} for m, groups in written["methods"].items()} == SUMMARY_KEYS
    assert [list(groups) for groups in written["methods"].values()] == [list(g) for g in SUMMARY_KEYS.values()]
    assert written["subjects"] == OLD_RESULTS and json.dumps(written["subjects"]) == json.dumps(OLD_RESULTS)
    assert list(written["forgetting"].items()) == [("identical", 6), ("compared", 6), ("passed", True)]
    facts = written["methods"]["yollava"]["facts_prompt"]
    assert (facts["accuracy"], facts["n"], facts["gift_hits"], facts["gift_asked"]) == (0.6666666666666666, 3, 1, 1)
    added = replace(result, ray={"nodes": 1}, run_id=7, report_files=["report.json"]).to_json()
    assert list(added)[-3:] == ["ray", "run_id", "report_files"]
