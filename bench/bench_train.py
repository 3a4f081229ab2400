"""Training one shared concept on `pocket` with default settings, on this CPU.

Reports total train time (one full default run, the concept head and fusion included, whose own
time is reported beside it), median time per step, peak RSS, and the speed-up
from the image-feature cache: the median step time of one epoch with the cache on vs off, measured
in the same process.  Run:  python bench/bench_train.py [--subject dog]   (writes bench/results/train.json)
"""

import argparse
import json
import resource
import statistics
import subprocess
import time
from pathlib import Path

from measure import where
from setup_concept import prepared_concept

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subject", default="dog")
    args = parser.parse_args()
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.learning.events import FittingHead, Step
    from yollava_cli.learning.training import TrainConfig, train_concept
    from yollava_cli.models.feature_cache import FeatureCache
    from yollava_cli.reporting import reporting

    class NoFeatureCache(FeatureCache):
        """Every photo through the vision tower, every time: the cache's saving, measured."""

        def get(self, key):
            return None

        def put(self, key, features):
            pass

    registry, vlm = prepared_concept(args.subject)

    steps, head_start = [], []

    def clock(event):
        if isinstance(event, Step):
            steps.append(time.perf_counter())
        elif isinstance(event, FittingHead):
            head_start.append(time.perf_counter())

    start = time.perf_counter()
    with reporting(clock):
        result = train_concept(registry, vlm, args.subject, TrainConfig(), embedder=load_embedder("efficientnet-lite0"))
    total = time.perf_counter() - start  # includes describing the photos once (attribute conversations)
    head_s = time.perf_counter() - head_start[0]  # the concept head and its fusion, after the last epoch
    step_times = [b - a for a, b in zip(steps, steps[1:])]

    def one_epoch_step_median(cache: bool) -> float:
        if not cache:
            vlm.features = NoFeatureCache(None)
        times = []
        with reporting(lambda event: times.append(time.perf_counter()) if isinstance(event, Step) else None):
            train_concept(registry, vlm, args.subject, TrainConfig(epochs=1))
        return statistics.median(b - a for a, b in zip(times, times[1:]))

    cached = one_epoch_step_median(True)
    uncached = one_epoch_step_median(False)
    report = {
        "machine": where(), "subject": args.subject, "epochs_run": len(result.history),
        "best_epoch": result.best_epoch, "validation": result.history[result.best_epoch - 1]["validation"]["weighted"],
        "total_train_s": round(total, 1), "head_and_fusion_s": round(head_s, 2), "steps": len(steps), "median_step_s": round(statistics.median(step_times), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "feature_cache": {"step_s_cached": round(cached, 3), "step_s_uncached": round(uncached, 3),
                          "speedup": round(uncached / cached, 2)},
    }
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    report["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    (REPO / "bench" / "results" / "train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
