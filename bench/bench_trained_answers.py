"""What pocket writes about concepts trained as `add` trains them (bench_answers.py reads concepts
at their starting rows): each concept's advice, gift, description and story questions, asked with
its notes through `ask`, from a data dir (the README's main job leaves dog, the tour cat). An
answer is judged by how often it says a concept's name (per 100 words: the identifier's trained
output row lifts it everywhere, "a <dog>-friendly <dog> food that is <dog> meat"), whether it uses
a note that says what the thing likes, contradicts a note that says what it is kept from, repeats a
4-gram or stutters (bench_answers' measures). Run it on two commits against the same data dir to
compare them (each writes its own --out).

    YOLLAVA_HOME=/path/to/home python bench/bench_trained_answers.py dog cat --out bench/results/trained-answers.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_answers import ADVICE, AVERSION, contradicts, cpu, holds, note_use, repeated_ngram, stutters, words  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "trained-answers.json"
QUESTIONS = [*ADVICE, "What should I buy him for his birthday?", "Describe <{x}>.", "Tell me a story about <{x}>."]


def judged(answer: str, notes: list[str]) -> dict:
    said = words(answer)
    liked = [n for n in notes if not AVERSION.search(n)]
    return {"names_per_100_words": round(100 * sum(w.startswith("<") for w in said) / max(len(said), 1), 1),
            "uses_a_note": any(holds(answer, n) for n in liked), "contradicts": contradicts(answer, notes),
            "repeated_4gram": repeated_ngram(answer), "stutters": stutters(answer), **note_use(answer, notes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("concepts", nargs="+", help="trained concepts in $YOLLAVA_HOME")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from yollava_cli.cli.output import open_registry
    from yollava_cli.models.decoding import Sampling
    from yollava_cli.store.facts import prompt_notes
    from yollava_cli.use.ask import ask
    from yollava_cli.use.session import open_session

    registry = open_registry()
    vlm, _ = open_session(registry, args.concepts, "")
    rows, start = [], time.perf_counter()
    for concept in args.concepts:
        notes = prompt_notes(registry, [concept])
        for template in QUESTIONS:
            question = template.format(x=concept)
            answer = ask(vlm, [concept], question, [], [], Sampling(max_new_tokens=args.max_tokens), notes=notes)["answer"]
            rows.append({"concept": concept, "question": question, "answer": answer, **judged(answer, notes)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {"answers": len(rows),
               "median_names_per_100_words": statistics.median(r["names_per_100_words"] for r in rows),
               "max_names_per_100_words": max(r["names_per_100_words"] for r in rows),
               **{k: sum(r[k] for r in rows) for k in ("uses_a_note", "uses_a_doing", "dwells_on_a_number", "contradicts",
                                                       "repeated_4gram", "stutters")}}
    result = {"commit": commit, "model": "pocket, concepts trained by `add` (the README's main job and tour)",
              "concepts": args.concepts, "max_tokens": args.max_tokens, "cpu": cpu(), "load": os.getloadavg()[0],
              "wall_s": round(time.perf_counter() - start, 1), "summary": summary, "answers": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    json.dump(summary, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
