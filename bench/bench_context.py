"""`ask` with more facts than the model's context holds, on `pocket`: 100 facts near the 500-character
limit (over SmolLM2's 8,192 tokens together) against 3 short facts (the baseline), each run in a
child process: its peak resident memory (os.wait4's ru_maxrss), the seconds to the first word and
in all, how many facts the prompt kept and its tokens. Before the prompt was fitted to the context,
the 100 facts ran past it: nothing printed for 300 s, 6.2 GB (issue 24).

    python bench/bench_context.py [--repeats 3]   # writes bench/results/context.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What should I buy <dog> for his birthday?"
ANSWER_TOKENS = 32
FILLER = "and every morning he waits by the door for the mail carrier, barks twice, then lies down on the rug in the hall "


def facts(case: str) -> list[str]:
    if case == "3 short facts":
        return ["<dog> is 4 years old.", "<dog> loves chasing tennis balls.", "<dog> is scared of the vacuum cleaner."]
    return [f"<dog> is scared of vacuum cleaner number {i}, " + (FILLER * 5)[:450].rstrip() + "." for i in range(100)]


def one_run(case: str) -> dict:
    """In the child: pocket, a concept at neutral rows, the facts, one answer."""
    from yollava_cli.models.decoding import Sampling
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.models.prompts import Prompt
    from yollava_cli.reporting import Status, collecting
    from yollava_cli.use.ask import ask, prompt_tokens

    vlm = load_vlm("pocket")
    vlm.tokens.add("dog", 16)
    noted = facts(case)
    start = time.perf_counter()
    with collecting() as heard:
        result = ask(vlm, ["dog"], QUESTION, [], [], Sampling(max_new_tokens=ANSWER_TOKENS), notes=noted)
    said = [event.text for event in heard if isinstance(event, Status)]
    return {"seconds": round(time.perf_counter() - start, 2), "first_word_s": result["timings"]["first_token_s"],
            "facts": len(noted), "fact_chars": max(map(len, noted)), "facts_kept": len(noted) - len(result["notes_left_out"]),
            "prompt_tokens": result["context"]["prompt"], "context": result["context"]["limit"], "said": said,
            "tokens_with_every_fact": prompt_tokens(vlm, Prompt(QUESTION, concepts=["dog"], notes=noted)),
            "quoted_note": result["quoted_note"]}


def run_child(case: str, home: Path) -> dict:
    env = {**os.environ, "YOLLAVA_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, __file__, "--case", case], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{case} failed: {stderr.decode()[-2000:]}")
    return json.loads(stdout.decode().strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case")
    args = parser.parse_args()
    if args.case:  # the child
        run = one_run(args.case)
        import resource

        run["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(run))
        return
    home = Path(tempfile.mkdtemp(prefix="yollava-bench-context-"))  # pocket is built here by the first run
    cases = ("3 short facts", "100 facts of ~500 characters")
    runs = {case: [] for case in cases}
    for repeat in range(args.repeats + 1):
        for case in cases:
            run = run_child(case, home)
            if repeat:  # the first round builds pocket and warms the disk cache: not counted
                runs[case].append(run)
                print(f"{case} #{repeat}: {run['first_word_s']} s to the first word, {run['peak_mb']} MB peak, "
                      f"{run['facts_kept']} facts kept", file=sys.stderr)
    summary = {case: {key: statistics.median(r[key] for r in rs) for key in ("first_word_s", "seconds", "peak_mb")}
               | {key: rs[0][key] for key in ("facts", "fact_chars", "tokens_with_every_fact", "facts_kept", "prompt_tokens",
                                             "context", "said")}
               for case, rs in runs.items()}
    base, many = (summary[c] for c in cases)
    summary["ratios_vs_3_short_facts"] = {key: round(many[key] / base[key], 2) for key in ("first_word_s", "peak_mb")}
    sys.path.insert(0, str(REPO / "bench"))
    from measure import where

    report = {"summary": summary, "question": QUESTION, "answer_tokens": ANSWER_TOKENS, "runs": runs, "where": where(),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (REPO / "bench" / "results" / "context.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
