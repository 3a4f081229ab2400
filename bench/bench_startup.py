"""Start-up time of the commands that load no model: `--help`, `list`, `show NAME`.

Each is run as a fresh process, several times, in a scratch data dir holding one concept (added
with --no-train from the shared photos); the median wall time is reported, and as a ratio to a
bare `python -c pass` timed in the same run, so machines of different speeds compare.
Run:  python bench/bench_startup.py  (writes bench/results/startup.json)
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
DATA = REPO.parent / "shared" / "data"


def wall(argv: list[str], env: dict, repeats: int) -> float:
    """Median seconds of `argv` from start to exit, output discarded."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "YOLLAVA_HOME": home, "PYTHONPATH": str(REPO)}
        cli = [sys.executable, "-m", "yollava_cli"]
        subprocess.run([*cli, "add", "dog", str(DATA / "concepts" / "dog" / "train"), "--no-train"],
                       env=env, check=True, capture_output=True)
        bare = wall([sys.executable, "-c", "pass"], env, args.repeats)
        commands = {"--help": ["--help"], "list": ["list"], "show dog": ["show", "dog"]}
        results = {}
        for label, argv in commands.items():
            seconds = wall([*cli, *argv], env, args.repeats)
            results[label] = {"median_s": round(seconds, 3), "ratio_to_bare_python": round(seconds / bare, 1)}
            print(f"{label:10} {seconds:.3f} s  ({seconds / bare:.1f}x bare python)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"commit": commit, "repeats": args.repeats, "bare_python_s": round(bare, 3),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "commands": results}
    print(f"bare python {bare:.3f} s")
    out = REPO / "bench" / "results" / "startup.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
