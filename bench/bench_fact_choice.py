"""Choosing the fact that answers a question, on questions phrased unlike the facts
(bench/fact_paraphrases.json: 2 per fact and 2 that no fact answers, for each of the 20 shared
subjects). Each question is scored against its subject's 3 facts two ways: the language model's
pointwise mutual information (use.ask.note_gains, pocket, the concept at neutral rows: the choice
reads only the prompt's text, and training 20 concepts takes hours here) and the sentence model's
cosine similarity (models.sentences). The rules are then compared: a question is "right" when the
fact that answers it is quoted, "wrong" when another fact is, and a question no fact answers counts
a "false quote" when any is. The sentence model's cut is chosen on one half of the subjects
(alphabetical even positions) and reported on the other half.

    python bench/bench_fact_choice.py --rescore   # writes bench/results/fact-choice.json (~10 min on 2 cores)
    python bench/bench_fact_choice.py            # the rules again, on the stored scores
    python bench/bench_fact_choice.py --cosine   # the sentence model's scores again, the LM's kept
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "concepts"
OUT = HERE / "results" / "fact-choice.json"


def scores() -> list[dict]:
    """Every question with both scores for each of its subject's facts."""
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.models.prompts import Prompt
    from yollava_cli.models.sentences import load_sentences
    from yollava_cli.store.facts import as_sentence
    from yollava_cli.use.ask import note_gains, with_identifiers

    facts = json.loads((DATA / "facts.json").read_text())
    questions = json.loads((HERE / "fact_paraphrases.json").read_text())["subjects"]
    vlm, sentences = load_vlm("pocket"), load_sentences()
    rows = []
    for subject, asked in questions.items():
        vlm.tokens.add(subject, 16)
        notes = [as_sentence(subject, f) for f in facts[subject]["facts"]]
        items = [(q["question"], q["fact"]) for q in asked["answered"]] + [(q, None) for q in asked["unanswered"]]
        for question, answer in items:
            question = with_identifiers(question, [subject])
            rows.append({"subject": subject, "question": question, "fact": answer, "facts": notes,
                         "pmi": [round(g, 3) for g in note_gains(vlm, Prompt(question, concepts=[subject]), notes)],
                         "cosine": [round(c, 4) for c in sentences.similarity(question, notes)]})
        vlm.tokens.remove(subject)
    return rows


def choose(values: list[float], cut: float) -> int | None:
    best = max(range(len(values)), key=values.__getitem__)
    return best if values[best] > cut else None


def rates(rows: list[dict], score, cut: float) -> dict:
    answered = [r for r in rows if r["fact"] is not None]
    unanswered = [r for r in rows if r["fact"] is None]
    picks = [choose(score(r), cut) for r in answered]
    right = sum(p == r["fact"] for p, r in zip(picks, answered))
    wrong = sum(p is not None and p != r["fact"] for p, r in zip(picks, answered))
    false = [r["question"] for r in unanswered if choose(score(r), cut) is not None]
    return {"right": round(right / len(answered), 3), "wrong": round(wrong / len(answered), 3),
            "false_quote": round(len(false) / len(unanswered), 3), "answered": len(answered),
            "unanswered": len(unanswered), "falsely_quoted": false}


def calibrated_cut(rows: list[dict], score) -> float:
    """The lowest cut at which at most 5% of the fact questions quote a wrong fact and at most 10% of
    the questions no fact answers quote one: quoting more is worth it only while it stays right."""
    for cut in sorted({s for r in rows for s in score(r)}):
        r = rates(rows, score, cut)
        if r["wrong"] <= 0.05 and r["false_quote"] <= 0.10:
            return cut
    raise SystemExit("no cut meets the bounds")


def spread(rows: list[dict], key: str) -> float:
    return statistics.pstdev([s for r in rows for s in r[key]])


def main() -> None:
    os.environ.setdefault("YOLLAVA_HOME", tempfile.mkdtemp(prefix="yollava-bench-"))
    from yollava_cli.use.ask import QUOTE_COSINE, QUOTE_NATS, QUOTE_SCORE, QUOTE_WEIGHT, looks_unanswered

    rows = scores() if "--rescore" in sys.argv or not OUT.exists() else json.loads(OUT.read_text())["rows"]
    if "--cosine" in sys.argv:  # the sentence model's scores only, the language model's kept
        from yollava_cli.models.sentences import load_sentences
        for row in rows:
            row["cosine"] = [round(c, 4) for c in load_sentences().similarity(row["question"], row["facts"])]
    subjects = sorted({r["subject"] for r in rows})
    halves = {"calibration": subjects[0::2], "held_out": subjects[1::2]}
    part = {name: [r for r in rows if r["subject"] in names] for name, names in halves.items()}
    # the sentence model's cosine in nats: the ratio of the two scores' spreads on the calibration half
    weight = round(spread(part["calibration"], "pmi") / spread(part["calibration"], "cosine"))

    def combined(w):
        return lambda r: [p + w * c for p, c in zip(r["pmi"], r["cosine"])]

    def checked(score, floor=-1.0):  # use.ask: a question about looks quotes only a fact naming what it asks,
        def rule(r):                   # and a fact under the cosine floor is not quoted
            values = score(r)
            best = max(range(len(values)), key=values.__getitem__)
            unanswered = looks_unanswered(r["question"], r["facts"][best]) or r["cosine"][best] < floor
            return [-1e9] * len(values) if unanswered else values
        return rule

    def cosine(r):
        return r["cosine"]

    def pmi(r):
        return r["pmi"]

    rules = {f"pmi > {QUOTE_NATS} nats (before)": (pmi, QUOTE_NATS),
             "cosine, cut on the calibration half": (cosine, calibrated_cut(part["calibration"], cosine)),
             f"pmi + {weight} x cosine, cut on the calibration half": (combined(weight), calibrated_cut(part["calibration"], combined(weight))),
             f"pmi + {QUOTE_WEIGHT} x cosine > {QUOTE_SCORE}": (combined(QUOTE_WEIGHT), QUOTE_SCORE),
             f"pmi + {QUOTE_WEIGHT} x cosine > {QUOTE_SCORE}, looks questions checked":
                 (checked(combined(QUOTE_WEIGHT)), QUOTE_SCORE),
             f"pmi + {QUOTE_WEIGHT} x cosine > {QUOTE_SCORE}, looks questions checked, cosine >= {QUOTE_COSINE} (use.ask)":
                 (checked(combined(QUOTE_WEIGHT), QUOTE_COSINE), QUOTE_SCORE)}
    result = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
              "model": "pocket (neutral concept rows) + all-MiniLM-L6-v2", "halves": halves,
              "argmax_right": {"pmi": rates(rows, pmi, -1e9)["right"], "cosine": rates(rows, cosine, -1e9)["right"],
                               "combined": rates(rows, combined(weight), -1e9)["right"]},
              "rules": {name: {"cut": round(cut, 3)} | {h: rates(part[h], score, cut) for h in part} | {"all": rates(rows, score, cut)}
                        for name, (score, cut) in rules.items()},
              "rows": rows}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    summary = {name: {"cut": r["cut"]} | {h: {k: r[h][k] for k in ("right", "wrong", "false_quote")} for h in ("calibration", "held_out", "all")}
               for name, r in result["rules"].items()}
    json.dump({"argmax_right": result["argmax_right"], "rules": summary}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
