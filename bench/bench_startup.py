"""Start-up time: the commands that load no model (`--help`, `list`, `show NAME`, start to exit)
and `ask` on pocket (start to the answer's first character on stdout, text-only and with a photo).

Each is run as a fresh process, several times, in a scratch data dir holding one concept (the
shared `dog`, trained for one epoch against the ImageNet sample: `ask` needs trained tokens, and
their quality does not change the start); the median wall time is reported, and as a ratio to a
bare `python -c pass` timed in the same run, so machines of different speeds compare; `list` also
as a ratio to `llm models list` (when llm is installed, or $LLM names it), and what each package's
imports cost `list` (python -X importtime).
Run:  python bench/bench_startup.py [--out FILE]  (writes bench/results/startup.json; ~3 min, most of it setup)
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import where

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def wall(argv: list[str], env: dict, repeats: int) -> float:
    """Median seconds of `argv` from start to exit, output discarded."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_character(argv: list[str], env: dict, repeats: int) -> float:
    """Median seconds from start to the first byte of stdout (the answer streams there; the
    status lines go to stderr)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        proc.stdout.read(1)
        times.append(time.perf_counter() - start)
        proc.stdout.read()
        if proc.wait() != 0:
            raise SystemExit(f"{argv} failed")
    return statistics.median(times)


def import_costs(argv: list[str], env: dict, repeats: int) -> dict[str, float]:
    """Milliseconds each top-level package's imports take in `argv` (`python -X importtime`: the
    modules' own times summed per package, median over runs), largest first."""
    runs = []
    for _ in range(repeats):
        stderr = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True).stderr
        totals: dict[str, float] = {}
        for row in stderr.splitlines():
            if row.startswith("import time:") and "|" in row and not row.rstrip().endswith("imported package"):
                own, _, name = row.removeprefix("import time:").split("|")
                package = name.strip().split(".")[0]
                totals[package] = totals.get(package, 0.0) + int(own) / 1000
        runs.append(totals)
    packages = {name for totals in runs for name in totals}
    costs = {name: round(statistics.median(t.get(name, 0.0) for t in runs), 1) for name in packages}
    return dict(sorted(costs.items(), key=lambda item: -item[1]))


def beside_llm(argv: list[str], env: dict, repeats: int) -> tuple[float, float] | None:
    """Median seconds of `argv` and of `llm models list`, run alternately so a busy moment falls on
    both (Simon Willison's llm: a click CLI on sqlite-utils, the start-up yardstick); None where
    llm is not installed ($LLM may name it)."""
    llm = os.environ.get("LLM") or shutil.which("llm")
    if not llm:
        return None
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(wall(argv, env, 1))
        theirs.append(wall([llm, "models", "list"], {**env, "LLM_USER_PATH": env["YOLLAVA_HOME"]}, 1))
    return statistics.median(ours), statistics.median(theirs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "startup.json")
    parser.add_argument("--no-model", action="store_true", help="Only the commands that load no model (no training, ~1 min).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "YOLLAVA_HOME": home, "PYTHONPATH": str(REPO)}
        cli = [sys.executable, "-m", "yollava_cli"]
        for setup in (["add", "dog", str(DATA / "concepts" / "dog" / "train"), "--no-train"],
                      ["pool", "add", "imagenet", str(DATA / "pool" / "imagenet-sample")],
                      ["train", "dog", "--epochs", "1"])[: 1 if args.no_model else 3]:
            subprocess.run([*cli, *setup], env=env, check=True, capture_output=True)
        if not args.no_model:
            subprocess.run([*cli, "ask", "dog", "hi", "--max-tokens", "1"], env=env, check=True, capture_output=True)  # warm OS file cache
        bare = wall([sys.executable, "-c", "pass"], env, args.repeats)
        commands = {"--help": ["--help"], "list": ["list"], "show dog": ["show", "dog"]}
        results = {}
        for label, argv in commands.items():
            seconds = wall([*cli, *argv], env, args.repeats)
            results[label] = {"median_s": round(seconds, 3), "ratio_to_bare_python": round(seconds / bare, 1)}
            print(f"{label:10} {seconds:.3f} s  ({seconds / bare:.1f}x bare python)")
        paired = beside_llm([*cli, "list"], env, args.repeats)
        llm = paired and paired[1]
        if paired:
            results["list"]["ratio_to_llm_models_list"] = round(paired[0] / llm, 2)
            print(f"list {paired[0]:.3f} s beside llm models list {llm:.3f} s: {paired[0] / llm:.2f}x")
        costs = import_costs([*cli[1:], "list"], env, args.repeats)
        print("imports of `list` (ms): " + ", ".join(f"{name} {ms:g}" for name, ms in list(costs.items())[:10]))
        photo = str(DATA / "concepts" / "dog" / "test" / sorted(os.listdir(DATA / "concepts" / "dog" / "test"))[0])
        asks = {"ask (text), first character": ["ask", "dog", "What should I buy him for his birthday?"],
                "ask (photo), first character": ["ask", "dog", "What is <dog> doing?", "--image", photo]}
        for label, argv in {} if args.no_model else asks.items():
            seconds = first_character([*cli, *argv, "--max-tokens", "8"], env, args.repeats)
            results[label] = {"median_s": round(seconds, 3), "ratio_to_bare_python": round(seconds / bare, 1)}
            print(f"{label:30} {seconds:.3f} s  ({seconds / bare:.1f}x bare python)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": where(), "commit": commit, "repeats": args.repeats, "bare_python_s": round(bare, 3),
              # transformers imports torchvision (~1 s) when it is installed (the open_clip extra)
              "torchvision_installed": importlib.util.find_spec("torchvision") is not None,
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "commands": results,
              "llm_models_list_s": llm and round(llm, 3), "list_import_ms_by_package": costs}
    print(f"bare python {bare:.3f} s")
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
