"""bench/bench_gpu.py: its --tiny run on a CPU writes every field with sane values (as a user runs it),
and its full-size configs are the models they are named after."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "bench_gpu.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "x.json"
    # on the CPU whatever the machine has: the 4-bit case must then be skipped, with its reason
    env = {**os.environ, "YOLLAVA_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(BENCH), "--tiny", "--steps", "2", "--out", str(out)],
                            check=False, capture_output=True, text=True, env=env, timeout=120)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result, seconds


def test_tiny_run_is_quick_and_prints_what_it_writes(tiny_run):
    report, result, seconds = tiny_run
    assert seconds < 60
    assert json.loads(result.stdout) == report


def test_tiny_run_records_where_it_ran(tiny_run):
    report, _, _ = tiny_run
    where = report["where"]
    assert where["device"] == "cpu" and where["device_name"] and where["device_name"] != "unknown"
    assert where["torch"] and "cuda" in where and where["transformers"]
    assert where["policy"]["device"] == "cpu" and where["policy"]["precision"] in ("fp32", "bf16") and where["policy"]["reason"]
    assert report["tiny"] is True and report["settings"]["steps"] == 2


def test_tiny_run_measures_the_unquantized_model(tiny_run):
    report, _, _ = tiny_run
    case = report["models"]["llava-7b"]
    assert case["status"] == "measured", case
    assert case["config"]["hidden"] <= 64 and case["config"]["layers"] == 2
    train = case["train"]
    assert train["steps_measured"] == 2 and len(train["step_s_each"]) == 2 and train["step_s"] > 0
    assert train["batch"] == 8 and train["rows_changed"] is True
    assert all(math.isfinite(loss) and loss > 0 for loss in train["loss_first_last"])
    assert train["sequence_tokens"] > case["vision"]["feature_tokens"] > 0  # the photo's tokens are in the batch
    assert case["vision"]["s_per_photo"] > 0
    find = case["find"]
    assert find["photos"] == 32 and find["photos_per_s_cold"] > 0 and find["photos_per_s_warm"] > 0
    decode = case["decode"]
    assert 1 < decode["new_tokens"] <= 64 and decode["tokens_per_s"] > 0 and 0 < decode["first_token_s"] < decode["answer_s"]
    assert case["peak_gib"] > 0 and all(case[phase]["peak_gib"] > 0 for phase in ("train", "find", "decode"))
    assert "RSS" in case["memory_kind"]


def test_tiny_run_extrapolates_a_concept_at_the_papers_settings(tiny_run):
    report, _, _ = tiny_run
    plan, concept = report["paper_concept"], report["models"]["llava-7b"]["concept"]
    assert plan["assumed"]["epochs"] == 15 and plan["steps"] == 15 * plan["steps_per_epoch"] > 0
    assert concept["extrapolated"] is True
    assert concept["steps"] == plan["steps"] and "measured 2 steps" in concept["how"]
    parts = concept["parts_s"]
    assert concept["s"] > 0 and concept["s"] == pytest.approx(sum(parts.values()), abs=0.2)
    assert parts["steps"] == pytest.approx(plan["steps"] * report["models"]["llava-7b"]["train"]["step_s"], rel=0.05, abs=0.1)


def test_tiny_run_skips_4bit_without_cuda_and_reports_no_ratio_without_a_pair(tiny_run):
    report, _, _ = tiny_run
    case = report["models"]["llava-13b-4bit"]
    assert case["status"] == "skipped" and "CUDA" in case["reason"]
    assert "train" not in case
    assert report["ratios"] == {}  # one model measured: nothing to compare it with


def test_ratios_only_between_models_measured_in_the_same_run():
    bench = bench_module()
    measured = {"train": {"step_s": 2.0}, "decode": {"tokens_per_s": 10.0}, "find": {"photos_per_s_warm": 4.0},
                "peak_gib": 10.0, "status": "measured"}
    other = {"train": {"step_s": 3.0}, "decode": {"tokens_per_s": 5.0}, "find": {"photos_per_s_warm": 2.0},
             "peak_gib": 8.0, "status": "measured"}
    assert bench.ratios({"a": measured, "b": other}) == {"b / a": {
        "train_step_s": 1.5, "decode_tokens_per_s": 0.5, "find_photos_per_s_warm": 0.5, "peak_gib": 0.8}}
    assert bench.ratios({"a": measured, "b": {"status": "skipped", "reason": "no CUDA"}}) == {}


@pytest.mark.parametrize("name, billions", [("llava-7b", 7.06), ("llava-13b-4bit", 13.35)])
def test_full_size_configs_have_the_parameters_they_claim(name, billions):
    bench = bench_module()
    config = bench.llava_config(name, tiny=False)
    count = bench.parameter_count(config)  # on the meta device: no memory
    assert count == pytest.approx(billions * 1e9, rel=0.02)
    assert count == pytest.approx(bench.MODELS[name]["params"], rel=0.02)
    assert config.image_token_id == 32000 and config.text_config.vocab_size == 32064
    assert config.vision_config.image_size == 336 and config.vision_config.patch_size == 14
