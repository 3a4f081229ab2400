"""What the model writes after a quoted fact, on pocket: each paraphrased question
(bench/fact_paraphrases.json) whose fact is quoted (use.ask.quoted_note's rule, read from
bench/results/fact-choice.json) is answered as before this bench's change, to the end of the
paragraph after the quote, with the concept at neutral rows. Each sentence after the quote is
sorted (kind): it restates the quote, recites another note, changes a note ("<dog> is scared of
the vacuum cleaner. <dog> loves chasing the vacuum cleaner."), or says something else.

    python bench/bench_fact_answers.py   # writes bench/results/fact-answers.json
"""

import json
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "fact-answers.json"
TOKENS = 48
STOP = {"the", "a", "an", "is", "are", "was", "of", "in", "on", "to", "and", "my", "it", "for", "with", "at", "his", "her",
        "he", "she", "its", "loves", "love", "very", "only", "every", "has", "have", "be", "by", "from", "that", "this", "i"}


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", re.sub(r"<[^>]+>", " ", text.lower())) if w not in STOP and len(w) > 2}


def kind(sentence: str, subject: str, quote: str, notes: list[str]) -> str:
    """What a sentence after the quote does: restates the quoted note, recites another note, changes
    a note (shares a word with one, is none of them: "<dog> loves chasing the vacuum cleaner"), or
    says something else. The concept at neutral rows is often called "thing"."""
    def bare(text: str) -> str:
        return " ".join(re.sub(rf"<{subject}>|\bthing\b", "", text.lower()).replace("favorite", "favourite").split()).strip(" .")

    if bare(sentence) == bare(quote):
        return "restates the quote"
    if any(bare(sentence) == bare(n) for n in notes):
        return "recites another note"
    return "changes a note" if any(words(sentence) & words(n) for n in notes) else "other"


def classify(answers: list[dict]) -> dict:
    counts = {}
    for a in answers:
        sentences = [s.strip() for s in re.findall(r"[^.!?]+[.!?]?", a["after"]) if s.strip()]
        a["sentences"] = [[s, kind(s, a["subject"], a["quote"], a["notes"])] for s in sentences]
        for label in {k for _, k in a["sentences"]}:
            counts[label] = counts.get(label, 0) + 1
    return {"answers with nothing after the quote": sum(not a["after"] for a in answers),
            "answers with a sentence that": counts}


def main() -> None:
    os.environ.setdefault("YOLLAVA_HOME", tempfile.mkdtemp(prefix="yollava-bench-"))
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.models.prompts import Prompt
    from yollava_cli.use.ask import QUOTE_SCORE, QUOTE_WEIGHT

    rows = json.loads((HERE / "results" / "fact-choice.json").read_text())["rows"]
    vlm = load_vlm("pocket")
    out, loaded = [], None
    for row in rows:
        scores = [p + QUOTE_WEIGHT * c for p, c in zip(row["pmi"], row["cosine"])]
        best = max(range(3), key=scores.__getitem__)
        if scores[best] <= QUOTE_SCORE:
            continue
        if loaded != row["subject"]:
            if loaded:
                vlm.tokens.remove(loaded)
            vlm.tokens.add(loaded := row["subject"], 16)
        quote = row["facts"][best]
        answer = vlm.generate(Prompt(row["question"], concepts=[loaded], notes=row["facts"]), TOKENS, opening=quote)
        after = answer[len(quote):].strip() if answer.startswith(quote) else answer
        out.append({"subject": loaded, "question": row["question"], "quote": quote, "notes": row["facts"], "after": after})
        print(len(out), loaded, "|", answer, file=sys.stderr)
    result = {"model": "pocket (neutral concept rows)", "max_new_tokens": TOKENS, "quoted_answers": len(out),
              "paragraph after the quote (before)": classify(out), "answers": out}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    json.dump({k: v for k, v in result.items() if k != "answers"}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
