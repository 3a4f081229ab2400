"""Loops in what pocket writes, on the 20 shared subjects' open questions: each subject's fact
questions and gift question (facts.json), its first two text_qa questions asked open (no options),
"Describe <x>.", and its paraphrased fact questions and questions no fact answers
(fact_paraphrases.json), all through `ask` with the subject's facts as its notes and the concept at its
starting rows, the identifier at its class word as `add` starts it (no training: loops are the
decoder's, and every subject then costs seconds; at the word "thing" the model did not know <cat> is a
cat, and the birthday question got "Toys for a 7-year-old ..."). Each
question is asked under every guard setting in the same run: "old" is the decoding before this
benchmark (only an 8-token loop stop), the others are candidates; "new" is decoding.Guards().

An answer counts as looping when a 4-word sequence occurs twice in it (words: lowercased, a concept
name is one word, punctuation dropped), as stuttering when a 1-3 word phrase follows itself
("<dog>-friendly <dog>-friendly"); quality is the fact questions' right answers (answer_contains),
and how many answers end mid-sentence. A paraphrase is right when its answer holds its fact (most of
the fact's words), wrong when it holds another; an answer to a question no fact answers recites when
it holds any fact; a gift answer opens off the point when its first sentence answers a claim or a
story ("You're right, ...", "What a wonderful story!") instead of the question. Subjects with a note
that says what to keep from them ("is scared of the vacuum cleaner", "is allergic to chicken") are
also asked for advice (ADVICE), and a gift or advice answer contradicts a note when one of its
sentences names that thing with a liking or a recommendation and no word of caution ("the vacuum
cleaner is a toy that he loves to play with").

    python bench/bench_answers.py                  # old vs new: writes bench/results/answers.json
    python bench/bench_answers.py --candidates     # also the settings new was chosen among
    python bench/bench_answers.py --subjects dog cat backpack   # a few subjects only
    python bench/bench_answers.py --new-only --half held-out --out FILE   # today's guards, the odd half
    python bench/bench_answers.py --new-only --kinds gift advice --subjects dog dog3 dog7 --out FILE
    python bench/bench_answers.py --candidates --only new "no stutter guard" --kinds gift advice --out FILE
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
HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "answers.json"
STOP = {"the", "a", "an", "is", "are", "was", "were", "of", "in", "on", "to", "and", "my", "it", "for", "with", "at", "his",
        "her", "he", "she", "its", "very", "has", "have", "had", "be", "by", "from", "that", "this", "i", "thing"}
AVERSION = re.compile(r"\b(?:is |are )?(?:scared of|afraid of|frightened of|terrified of|allergic to|hates?|dislikes?|"
                      r"must not|mustn't|can't|cannot|never)\s+(.*)", re.IGNORECASE)
CAUTION = re.compile(r"\b(scared|afraid|fears?|fearful|frighten\w*|terrif\w*|allerg\w*|hates?|dislikes?|avoid\w*|not|no|"
                     r"never|n't|without|away|instead|careful|keep)\b", re.IGNORECASE)
LIKING = re.compile(r"loves?|likes?|enjoys?|favou?rite|toys?|buy|gifts?|presents?|recommend\w*|suggest\w*|treats?|"
                    r"play\w*|fun|great|perfect|ideal", re.IGNORECASE)
NUMBER = re.compile(r"\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|hundred|dozen)\b", re.IGNORECASE)
NEAR = 3  # words between the thing and the liking ("the vacuum cleaner is a toy")
ADVICE = ["What should I buy <{x}>?", "What could we do together this weekend?", "How can I make <{x}> happy?"]
OFF_THE_POINT = re.compile(r"^\W*(you're right|you are right|i apologi[sz]e|i'm sorry|i should|what a (wonderful|great|cute|lovely)|"
                           r"the (story|sentence|text|passage|information|phrase))", re.IGNORECASE)


def settings(candidates: bool, new_only: bool = False) -> dict:
    from yollava_cli.models.decoding import Guards

    chosen = {"new": Guards()} if new_only else {"old": Guards(0, 1.0, False, 0, 0.0), "new": Guards()}
    if candidates:
        chosen |= {"block 3-grams": Guards(3), "block 5-grams": Guards(5), "penalty 1.2": Guards(0, 1.2),
                   "block 4-grams + penalty 1.1": Guards(4, 1.1), "no stutter guard": Guards(no_stutter=0),
                   "no name penalty": Guards(name_penalty=0.0)}
    return chosen


def questions(subjects: list[str] | None, kinds: list[str] | None = None) -> list[dict]:
    asked = [q for q in every_question(subjects) if not kinds or q["kind"] in kinds]
    return sorted(asked, key=lambda q: q["subject"])


def every_question(subjects: list[str] | None) -> list[dict]:
    facts = json.loads((DATA / "facts.json").read_text())
    text_qa = json.loads((DATA / "text_qa.json").read_text())
    paraphrases = json.loads((HERE / "fact_paraphrases.json").read_text())["subjects"]
    asked = []
    for name, entry in facts.items():
        if subjects and name not in subjects:
            continue
        asked += [{"subject": name, "kind": "paraphrase", "question": q["question"], "fact": q["fact"]}
                  for q in paraphrases[name]["answered"]]
        asked += [{"subject": name, "kind": "no_fact", "question": q} for q in paraphrases[name]["unanswered"]]
        for item in entry["questions"]:
            asked.append({"subject": name, "kind": "fact", "question": item["question"], "expect": item["answer_contains"]})
        if any(AVERSION.search(f) for f in entry["facts"]):
            asked += [{"subject": name, "kind": "advice", "question": q.format(x=name)} for q in ADVICE]
        if entry.get("gift"):
            asked.append({"subject": name, "kind": "gift", "question": entry["gift"]["question"], "expect": entry["gift"]["answer_contains"]})
        asked += [{"subject": name, "kind": "open", "question": item["question"]} for item in text_qa.get(f"<{name}>", [])[:2]]
        asked.append({"subject": name, "kind": "describe", "question": f"Describe <{name}>."})
    return asked


def words(text: str) -> list[str]:
    return re.findall(r"<\w+>|[\w']+", text.lower())


def holds(answer: str, fact: str) -> bool:
    """Whether an answer states a fact: most of the fact's own words are in it."""
    def content(text: str) -> set[str]:
        return {w for w in re.findall(r"[a-z0-9]+", re.sub(r"<[^>]+>", " ", text.lower())) if w not in STOP}

    own = content(fact)
    return bool(own) and len(own & content(answer)) >= max(1, round(len(own) * 2 / 3))


def judged(item: dict, answer: str, notes: list[str]) -> dict:
    """What an answer to one question does with the facts (module docstring)."""
    if item["kind"] == "paraphrase":
        return {"right": holds(answer, notes[item["fact"]]),
                "wrong": any(holds(answer, n) for i, n in enumerate(notes) if i != item["fact"])}
    if item["kind"] == "no_fact":
        return {"recites": any(holds(answer, n) for n in notes)}
    if item["kind"] == "gift":
        return {"off_the_point": bool(OFF_THE_POINT.search(answer)), "contradicts": contradicts(answer, notes),
                **note_use(answer, notes)}
    if item["kind"] == "advice":
        return {"contradicts": contradicts(answer, notes), **note_use(answer, notes)}
    return {}


def note_use(answer: str, notes: list[str]) -> dict:
    """How an advice or gift answer uses the notes: whether it states one that says what the thing
    does or likes (not a quantity such as its age, not what it is kept from), and whether it dwells
    on a note's number (says one more than twice: "a 7-month-old cat named Luna ... 7 years ...")."""
    numbers = {m.lower() for n in notes for m in NUMBER.findall(n)}
    said = [m.lower() for m in NUMBER.findall(answer)]
    doings = [n for n in notes if not AVERSION.search(n) and not NUMBER.search(n)]
    return {"uses_a_doing": any(holds(answer, n) for n in doings),
            "dwells_on_a_number": any(said.count(number) > 2 for number in numbers)}


def contradicts(answer: str, notes: list[str]) -> bool:
    """Whether a sentence of the answer names what a note keeps the subject from (its object's
    content words) with a liking or a recommendation within NEAR words of it, and no word of caution."""
    def content(text: str) -> set[str]:
        return {w.removesuffix("s") for w in re.findall(r"[a-z]+", re.sub(r"<[^>]+>", " ", text.lower()))
                if w not in STOP and len(w) > 2}  # "vacuum cleaners" names "the vacuum cleaner"

    kept_from = [content(m.group(1)) for n in notes if (m := AVERSION.search(n))]
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", answer):
        said = re.findall(r"[a-z']+", re.sub(r"<[^>]+>", " ", sentence.lower()))
        liked = [i for i, w in enumerate(said) if LIKING.fullmatch(w)]
        for thing in (k for k in kept_from if k and k <= content(sentence)):
            named = [i for i, w in enumerate(said) if w.removesuffix("s") in thing]
            if any(abs(i - j) <= NEAR for i in named for j in liked) and not CAUTION.search(sentence):
                return True
    return False


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
            **{f"{kind} {label}": f"{sum(r[label] for r in rows if r['kind'] == kind)}/{sum(r['kind'] == kind for r in rows)}"
               for kind, label in (("paraphrase", "right"), ("paraphrase", "wrong"), ("no_fact", "recites"),
                                   ("gift", "off_the_point"), ("gift", "contradicts"), ("advice", "contradicts"),
                                   ("gift", "uses_a_doing"), ("gift", "dwells_on_a_number"), ("advice", "uses_a_doing"),
                                   ("advice", "dwells_on_a_number"))
               if any(r["kind"] == kind for r in rows)},
            "mean_words": round(sum(len(words(r["answer"])) for r in rows) / len(rows), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", action="store_true", help="also the settings the new guards were chosen among")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--subjects", nargs="*", help="only these subjects (default: all 20)")
    parser.add_argument("--half", choices=["calibration", "held-out"],
                        help="only the subjects at even (calibration) or odd (held-out) alphabetical positions")
    parser.add_argument("--kinds", nargs="*", help="only these kinds of question (fact, gift, advice, open, describe, paraphrase, no_fact)")
    parser.add_argument("--new-only", action="store_true", help="only today's guards")
    parser.add_argument("--only", nargs="*", help="only these settings, by name (with --candidates: any of theirs)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.half:
        names = sorted(json.loads((DATA / "facts.json").read_text()))
        args.subjects = names[args.half == "held-out" :: 2]
    os.environ.setdefault("YOLLAVA_HOME", tempfile.mkdtemp(prefix="yollava-bench-"))
    from yollava_cli.models.decoding import Sampling
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.store.facts import as_sentence
    from yollava_cli.use.ask import ask

    vlm = load_vlm("pocket")
    facts = json.loads((DATA / "facts.json").read_text())
    classes = {name: entry["class"] for name, entry in json.loads((DATA / "manifest.json").read_text()).items()}
    chosen = settings(args.candidates, args.new_only)
    if args.only:
        chosen = {name: chosen[name] for name in args.only}
    rows = {setting: [] for setting in chosen}
    start = time.perf_counter()
    for item in questions(args.subjects, args.kinds):
        name = item["subject"]
        vlm.tokens.add(name, 16, init_word=classes[name])  # starting rows: what the prompt alone carries
        notes = [as_sentence(name, f) for f in facts[name]["facts"]]
        for setting, guards in chosen.items():
            vlm.guards = guards
            answer = ask(vlm, [name], item["question"], [], [], Sampling(args.max_tokens), notes=notes)["answer"]
            rows[setting].append({**{k: v for k, v in item.items() if k != "expect"}, "answer": answer,
                                  "repeated_4gram": repeated_ngram(answer), "stutters": stutters(answer),
                                  "hit": any(w.lower() in answer.lower() for w in item.get("expect", [])),
                                  **judged(item, answer, notes)})
        vlm.tokens.remove(name)
        write(rows, args, start)  # after every question: a run cut short still says what it saw
    json.dump({k: v for k, v in json.loads(args.out.read_text()).items() if k in ("settings", "wall_s")}, sys.stdout, indent=1)


def write(rows: dict, args, start: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    first = next(iter(rows))
    quoted = [i for i, r in enumerate(rows[first]) if r["repeated_4gram"] or r["stutters"]][:6]
    result = {"commit": commit, "model": "pocket, concepts at their starting rows (identifier at the class word)", "max_tokens": args.max_tokens,
              "subjects": args.subjects or "all", "cpu": cpu(), "load": os.getloadavg()[0],
              "wall_s": round(time.perf_counter() - start, 1),
              "kinds": args.kinds or "all",
              "settings": {s: {**vars(settings(args.candidates)[s]), **summary(r)} for s, r in rows.items()},
              "quoted": [{"question": rows[first][i]["question"], **{s: rows[s][i]["answer"] for s in rows}} for i in quoted],
              "answers": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
