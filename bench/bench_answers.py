"""Loops in what pocket writes, on the 20 shared subjects' open questions: each subject's fact
questions and gift question (facts.json), its first two text_qa questions asked open (no options),
and "Describe <x>.", all through `ask` with the subject's facts as its notes and the concept at its
starting rows (no training: loops are the decoder's, and every subject then costs seconds). Each
question is asked under every guard setting in the same run: "old" is the decoding before this
benchmark (only an 8-token loop stop), the others are candidates; "new" is decoding.Guards().

An answer counts as looping when a 4-word sequence occurs twice in it (words: lowercased, a concept
name is one word, punctuation dropped), as stuttering when a 1-3 word phrase follows itself
("<dog>-friendly <dog>-friendly"); quality is the fact questions' right answers (answer_contains),
and how many answers end mid-sentence.

    python bench/bench_answers.py                  # old vs new: writes bench/results/answers.json
    python bench/bench_answers.py --candidates     # also the settings new was chosen among
    python bench/bench_answers.py --subjects dog cat backpack   # a few subjects only
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "concepts"
OUT = Path(__file__).resolve().parent / "results" / "answers.json"


def settings(candidates: bool) -> dict:
    from yollava_cli.models.decoding import Guards

    chosen = {"old": Guards(0, 1.0, False), "new": Guards()}
    if candidates:
        chosen |= {"block 3-grams": Guards(3), "block 5-grams": Guards(5), "penalty 1.2": Guards(0, 1.2),
                   "block 4-grams + penalty 1.1": Guards(4, 1.1)}
    return chosen


def questions(subjects: list[str] | None) -> list[dict]:
    facts = json.loads((DATA / "facts.json").read_text())
    text_qa = json.loads((DATA / "text_qa.json").read_text())
    asked = []
    for name, entry in facts.items():
        if subjects and name not in subjects:
            continue
        for item in entry["questions"]:
            asked.append({"subject": name, "kind": "fact", "question": item["question"], "expect": item["answer_contains"]})
        if entry.get("gift"):
            asked.append({"subject": name, "kind": "gift", "question": entry["gift"]["question"], "expect": entry["gift"]["answer_contains"]})
        asked += [{"subject": name, "kind": "open", "question": item["question"]} for item in text_qa.get(f"<{name}>", [])[:2]]
        asked.append({"subject": name, "kind": "describe", "question": f"Describe <{name}>."})
    return asked


def words(text: str) -> list[str]:
    return re.findall(r"<\w+>|[\w']+", text.lower())


def repeated_ngram(text: str, n: int = 4) -> bool:
    grams = [tuple(g) for g in zip(*(words(text)[i:] for i in range(n)))]
    return len(grams) != len(set(grams))


def stutters(text: str) -> bool:
    w = words(text)
    return any(w[i : i + n] == w[i + n : i + 2 * n] for n in (1, 2, 3) for i in range(len(w) - 2 * n + 1))


def summary(rows: list[dict]) -> dict:
    facts = [r for r in rows if r["kind"] in ("fact", "gift")]
    return {"answers": len(rows), "repeated_4gram": sum(r["repeated_4gram"] for r in rows),
            "stuttering": sum(r["stutters"] for r in rows),
            "ends_mid_sentence": sum(not re.search(r"[.!?][\"')\]]*$", r["answer"]) for r in rows),
            "fact_hits": f"{sum(r['hit'] for r in facts)}/{len(facts)}",
            "mean_words": round(sum(len(words(r["answer"])) for r in rows) / len(rows), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", action="store_true", help="also the settings the new guards were chosen among")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--subjects", nargs="*", help="only these subjects (default: all 20)")
    args = parser.parse_args()
    os.environ.setdefault("YOLLAVA_HOME", tempfile.mkdtemp(prefix="yollava-bench-"))
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.store.facts import as_sentence
    from yollava_cli.use.ask import GenerationOptions, ask

    vlm = load_vlm("pocket")
    facts = json.loads((DATA / "facts.json").read_text())
    rows = {setting: [] for setting in settings(args.candidates)}
    start = time.perf_counter()
    for item in questions(args.subjects):
        name = item["subject"]
        vlm.tokens.add(name, 16)  # starting rows: what the prompt alone carries
        notes = [as_sentence(name, f) for f in facts[name]["facts"]]
        for setting, guards in settings(args.candidates).items():
            vlm.guards = guards
            answer = ask(vlm, [name], item["question"], [], [], GenerationOptions(args.max_tokens), notes=notes)["answer"]
            rows[setting].append({**{k: v for k, v in item.items() if k != "expect"}, "answer": answer,
                                  "repeated_4gram": repeated_ngram(answer), "stutters": stutters(answer),
                                  "hit": any(w.lower() in answer.lower() for w in item.get("expect", []))})
        vlm.tokens.remove(name)
        write(rows, args, start)  # after every question: a run cut short still says what it saw
    json.dump({k: v for k, v in json.loads(OUT.read_text()).items() if k in ("settings", "wall_s")}, sys.stdout, indent=1)


def write(rows: dict, args, start: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    quoted = [i for i, r in enumerate(rows["old"]) if r["repeated_4gram"] or r["stutters"]][:6]
    result = {"commit": commit, "model": "pocket, concepts at their starting rows", "max_tokens": args.max_tokens,
              "subjects": args.subjects or "all", "cpu": cpu(), "load": os.getloadavg()[0],
              "wall_s": round(time.perf_counter() - start, 1),
              "settings": {s: {**vars(settings(args.candidates)[s]), **summary(r)} for s, r in rows.items()},
              "quoted": [{"question": rows["old"][i]["question"], **{s: rows[s][i]["answer"] for s in rows}} for i in quoted],
              "answers": rows}
    OUT.write_text(json.dumps(result, indent=1) + "\n")


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
