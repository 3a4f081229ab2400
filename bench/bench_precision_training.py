"""Does the CPU precision change what training learns? The same shared subjects, the same seeds,
trained and scored by `yollava eval` once under each CPU policy (forced with YOLLAVA_PRECISION),
the two runs side by side on one thread each; reports the soft tokens' recognition (weighted,
AUC) and text multiple choice per policy and per subject, and the wall time of each run.
Run:  python bench/bench_precision_training.py [--subjects dog,dog6,cat,backpack]
      (writes bench/results/precision-training.json)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
POLICIES = ("fp32", "bf16")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", default="dog,dog6,cat,backpack")
    args = parser.parse_args()
    from yollava_cli.models.compute import choose, detect

    runs = {}
    for policy in POLICIES:
        home = tempfile.mkdtemp(prefix=f"yollava-precision-{policy}-")
        env = {**os.environ, "YOLLAVA_HOME": home, "YOLLAVA_PRECISION": policy, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "yollava_cli", "eval", str(DATA / "concepts"), "--subjects", args.subjects,
                   "--methods", "yollava", "--pool", str(DATA / "pool" / "imagenet-sample"), "--protocol", "library",
                   "--json"]
        runs[policy] = (time.perf_counter(), subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    ended = {}
    while len(ended) < len(runs):  # each run's own wall time: poll, since either may finish first
        for policy, (start, proc) in runs.items():
            if policy not in ended and proc.poll() is not None:
                ended[policy] = time.perf_counter() - start
        time.sleep(1)
    results = {}
    for policy, (start, proc) in runs.items():
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise SystemExit(f"eval under {policy} failed (exit {proc.returncode})")
        result = json.loads(out)
        tokens = result["methods"]["yollava"]
        results[policy] = {
            "wall_s": round(ended[policy], 1),
            "recognition": {k: tokens["recognition"][k] for k in ("weighted", "weighted_ci95", "auc", "positive", "negative")},
            "text_mcq": tokens.get("text_mcq", {}).get("accuracy"),
            "per_subject": {s: {k: r["yollava"]["recognition"][k] for k in ("weighted", "auc")} for s, r in result["subjects"].items()},
        }
    capability = detect()
    report = {"cpu": capability.describe(), "auto_policy": choose(capability).summary(), "subjects": args.subjects.split(","),
              "settings": "yollava eval --methods yollava --pool imagenet-sample --protocol library, default training, "
                          "one thread each, both policies at once", "results": results}
    out = REPO / "bench" / "results" / "precision-training.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
