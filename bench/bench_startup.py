"""Start-up time: the commands that load no model (`--help`, `list`, `show NAME`, start to exit)
and `ask` on pocket (start to the answer's first character on stdout, text-only and with a photo).

Each is run as a fresh process, several times, in a scratch data dir holding one concept (the
shared `dog`, trained for one epoch against the ImageNet sample: `ask` needs trained tokens, and
their quality does not change the start); the median wall time is reported, and as a ratio to a
bare `python -c pass` timed in the same run, so machines of different speeds compare.
Run:  python bench/bench_startup.py [--out FILE]  (writes bench/results/startup.json; ~3 min, most of it setup)
"""

import argparse
import importlib.util
import json
import os
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "startup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "YOLLAVA_HOME": home, "PYTHONPATH": str(REPO)}
        cli = [sys.executable, "-m", "yollava_cli"]
        for setup in (["add", "dog", str(DATA / "concepts" / "dog" / "train"), "--no-train"],
                      ["pool", "add", "imagenet", str(DATA / "pool" / "imagenet-sample")],
                      ["train", "dog", "--epochs", "1"]):
            subprocess.run([*cli, *setup], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "ask", "dog", "hi", "--max-tokens", "1"], env=env, check=True, capture_output=True)  # warm OS file cache
        bare = wall([sys.executable, "-c", "pass"], env, args.repeats)
        commands = {"--help": ["--help"], "list": ["list"], "show dog": ["show", "dog"]}
        results = {}
        for label, argv in commands.items():
            seconds = wall([*cli, *argv], env, args.repeats)
            results[label] = {"median_s": round(seconds, 3), "ratio_to_bare_python": round(seconds / bare, 1)}
            print(f"{label:10} {seconds:.3f} s  ({seconds / bare:.1f}x bare python)")
        photo = str(DATA / "concepts" / "dog" / "test" / sorted(os.listdir(DATA / "concepts" / "dog" / "test"))[0])
        asks = {"ask (text), first character": ["ask", "dog", "What should I buy him for his birthday?"],
                "ask (photo), first character": ["ask", "dog", "What is <dog> doing?", "--image", photo]}
        for label, argv in asks.items():
            seconds = first_character([*cli, *argv, "--max-tokens", "8"], env, args.repeats)
            results[label] = {"median_s": round(seconds, 3), "ratio_to_bare_python": round(seconds / bare, 1)}
            print(f"{label:30} {seconds:.3f} s  ({seconds / bare:.1f}x bare python)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": where(), "commit": commit, "repeats": args.repeats, "bare_python_s": round(bare, 3),
              # transformers imports torchvision (~1 s) when it is installed (the open_clip extra)
              "torchvision_installed": importlib.util.find_spec("torchvision") is not None,
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "commands": results}
    print(f"bare python {bare:.3f} s")
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
