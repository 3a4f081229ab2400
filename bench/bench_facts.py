"""Personal facts on pocket, for the 20 shared subjects (facts.json): each paraphrased question
asked with the subject's facts in its opening line and without (the control), through the tool's
own prompt path (use.ask.steered and answered: the note that answers the question is the answer, else
every word leans toward the notes, under the owner's line; a direct question no note answers gets none)
with the concept at its starting rows, the identifier at its class word as `add` starts it (no training,
so every subject costs seconds), plus the bare language model with the facts pasted into a plain prompt (no concept prompt).

    python bench/bench_facts.py   # writes bench/results/facts.json
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "concepts"
OUT = Path(__file__).resolve().parent / "results" / "facts.json"
TOKENS = 48


def main() -> None:
    os.environ.setdefault("YOLLAVA_HOME", tempfile.mkdtemp(prefix="yollava-bench-"))
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.models.prompts import Prompt
    from yollava_cli.store.facts import as_sentence
    from yollava_cli.use.ask import answered, steered

    facts = json.loads((DATA / "facts.json").read_text())
    classes = {name: entry["class"] for name, entry in json.loads((DATA / "manifest.json").read_text()).items()}
    vlm = load_vlm("pocket")
    settings = {"facts in the prompt": [], "no facts (control)": [], "bare, facts pasted as plain text": []}
    gifts = {name: [] for name in settings}
    answers = []
    start = time.perf_counter()
    for subject, entry in facts.items():
        name = subject.strip("<>")
        vlm.tokens.add(name, 16, init_word=classes[name])  # starting rows, the identifier at its class word as `add` starts it
        notes = [as_sentence(name, f) for f in entry["facts"]]
        plain = " ".join(f.replace(f"<{name}>", name.capitalize()) for f in entry["facts"])
        items = [(q, False) for q in entry["questions"]] + ([(entry["gift"], True)] if entry.get("gift") else [])
        for item, is_gift in items:
            prompts = {"facts in the prompt": (Prompt(item["question"], concepts=[name]), notes),
                       "no facts (control)": (Prompt(item["question"], concepts=[name]), []),
                       "bare, facts pasted as plain text": (Prompt(f"{plain}\n{item['question'].replace(f'<{name}>', name.capitalize())}"), [])}
            for setting, (prompt, given) in prompts.items():
                fitted, guidance = steered(vlm, prompt, given, TOKENS)
                answer = answered(vlm, fitted.prompt, guidance, TOKENS)
                hit = any(w.lower() in answer.lower() for w in item["answer_contains"])
                (gifts if is_gift else settings)[setting].append(hit)
                answers.append({"subject": name, "setting": setting, "question": item["question"], "answer": answer, "hit": hit})
        vlm.tokens.remove(name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"commit": commit, "model": "pocket", "subjects": len(facts), "max_new_tokens": TOKENS,
              "wall_s": round(time.perf_counter() - start, 1),
              "accuracy": {s: {"right": sum(v), "asked": len(v), "accuracy": round(sum(v) / len(v), 3)} for s, v in settings.items()},
              "gift_hits": {s: {"hits": sum(v), "asked": len(v)} for s, v in gifts.items()},
              "answers": answers}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    json.dump({k: result[k] for k in ("accuracy", "gift_hits", "wall_s")}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
