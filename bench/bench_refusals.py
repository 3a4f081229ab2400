"""Refusals that need no model, timed beside `list`: `export` onto an existing file, `import` of a
bundle whose name is taken, `ask` and `find` about an unknown concept, `ask --no-train` about an
untrained one. Each should cost what `list` costs (no torch, no model), so the report gives each
one's median and its ratio to `list`'s, all measured in the same run, interleaved, as fresh
processes. refusals-before-main-470d05e.json is the same run on the code before the fix.

Run:  python bench/bench_refusals.py [--repeats 7] [--out FILE]  (writes bench/results/refusals.json; ~1 min)
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from measure import where

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def bundle_named(path: Path, name: str) -> None:
    """A well-formed bundle of concept `name`: zero token rows (a refusal never reads them)."""
    import torch
    from safetensors.torch import save

    tensors = save({"input_rows": torch.zeros(17, 8), "output_row": torch.zeros(8)})
    manifest = {"format": "yollava-concept-bundle/1", "name": name, "k": 16, "base_model": "tiny",
                "base_fingerprint": "Tiny:8:ab", "checksums": {"concept.safetensors": hashlib.sha256(tensors).hexdigest()}}
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("manifest.json", json.dumps(manifest))
        bundle.writestr("concept.safetensors", tensors)


def once(argv: list[str], env: dict, expect: int) -> float:
    start = time.perf_counter()
    code = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    seconds = time.perf_counter() - start
    if code != expect:
        raise SystemExit(f"{argv}: exit {code}, expected {expect}")
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "refusals.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = {**os.environ, "YOLLAVA_HOME": str(scratch / "home"), "PYTHONPATH": str(REPO)}
        cli = [sys.executable, "-m", "yollava_cli"]
        subprocess.run([*cli, "add", "bo", str(DATA / "concepts" / "dog" / "train"), "--no-train"], env=env, check=True, capture_output=True)
        (scratch / "taken").write_text("mine")
        bundle_named(scratch / "bo.yollava", "bo")
        commands = {"list": (["list"], 0),
                    "export onto an existing file": (["export", "bo", str(scratch / "taken")], 1),
                    "import of a taken name": (["import", str(scratch / "bo.yollava")], 1),
                    "ask about an unknown concept": (["ask", "nosuch", "hello"], 1),
                    "find an unknown concept": (["find", "nosuch", str(scratch / "taken")], 1),
                    "ask --no-train, untrained": (["ask", "bo", "hello", "--no-train"], 1)}
        times = {label: [] for label in commands}
        for _ in range(args.repeats):  # interleaved: a busy moment falls on every command alike
            for label, (argv, expect) in commands.items():
                times[label].append(once([*cli, *argv], env, expect))
    listed = statistics.median(times["list"])
    results = {}
    for label, runs in times.items():
        seconds = statistics.median(runs)
        results[label] = {"median_s": round(seconds, 3), "ratio_to_list": round(seconds / listed, 2)}
        print(f"{label:30} {seconds:.3f} s  ({seconds / listed:.2f}x list)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": where(), "commit": commit, "repeats": args.repeats,
              "load_average": os.getloadavg(), "commands": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
