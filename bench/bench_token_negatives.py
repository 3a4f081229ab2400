"""Where trained tokens say "yes" wrongly (issue #34): tokens alone find every subject's own test
photos but say yes to many of the other subjects' photos. Is that the photos' style (the shared
subjects are phone photos of one object, the negatives ImageNet photos), or a "no" that does not
reach photos training never saw? Each subject is trained as bench_training_collapse.py trains it
(isolated, negatives mined from the 200-photo pool, early stopping off), then asked "Is <name> in
this photo?" (eval's `yollava` method, cut at 0.5) about its own test photos, the other subjects'
test photos, and 100 ImageNet photos of the sample that are not in the pool.

    python bench/bench_token_negatives.py --subjects backpack,poop_emoji,pink_sunglasses --pool /tmp/pool200
        # /tmp/pool200: every 5th photo of the ImageNet sample (as the training benches use);
        # writes bench/results/token-negatives.json|md
"""

import argparse
import json
import os
import time
from pathlib import Path

from measure import where

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default="backpack,poop_emoji,pink_sunglasses")
    parser.add_argument("--pool", type=Path, required=True, help="folder of negatives to mine")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--home", type=Path, default=Path("/tmp/yollava-token-negatives"))
    args = parser.parse_args()
    os.environ["YOLLAVA_HOME"] = str(args.home)
    from yollava_cli.evaluation.dataset import load_dataset
    from yollava_cli.evaluation.methods.yollava import Yollava
    from yollava_cli.evaluation.runner import Evaluation
    from yollava_cli.evaluation.runs import isolated_registry
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.learning.train_config import TrainConfig
    from yollava_cli.learning.training import prepare_concept
    from yollava_cli.models.loading import load_vlm

    dataset = load_dataset(DATA / "concepts")
    vlm, embedder = load_vlm("pocket"), load_embedder("efficientnet-lite0")
    in_pool = {p.name for p in args.pool.iterdir()}
    unseen = [p for p in sorted((DATA / "pool" / "imagenet-sample").glob("*.jpg"))[2::10] if p.name not in in_pool][:100]
    subjects = {}
    for name in args.subjects.split(","):
        subject = dataset.subjects[name]
        registry = isolated_registry(args.home / "bench" / name, dataset, subject, [args.pool], embedder)
        started = time.perf_counter()
        result = prepare_concept(registry, name, lambda: vlm, lambda: embedder, TrainConfig(epochs=args.epochs, patience=args.epochs))
        run = Evaluation(dataset, vlm, registry, embedder, [], TrainConfig())
        others = [p for s in dataset.subjects.values() if s.name != name for p in s.test]
        rates = {}
        for group, photos in (("own_test", subject.test), ("other_subjects", others), ("unseen_imagenet", unseen)):
            scores = Yollava().scores(run, name, photos)
            rates[group] = {"photos": len(photos), "yes": round(sum(s >= 0.5 for s in scores) / len(photos), 3)}
        subjects[name] = {"best_epoch": result.best_epoch, "train_s": round(time.perf_counter() - started), "said_yes": rates}
        print(name, json.dumps(subjects[name]), flush=True)
    out = {"where": where(), "load": os.getloadavg()[0], "epochs": args.epochs, "subjects": subjects}
    (RESULTS / "token-negatives.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "token-negatives.md").write_text(markdown(out))


def markdown(out: dict) -> str:
    lines = ["# Where trained tokens say yes (issue #34)", "",
             f"Each subject trained alone for {out['epochs']} epochs (early stopping off), then asked about photos: the share "
             f"answered yes (P(yes) >= 0.5), with the number of photos. {out['where']['cpu']}, {out['where']['cores']} cores, "
             f"load {out['load']:.1f}.", "",
             "| subject | best epoch | own test photos | other subjects' test photos | ImageNet photos not in the pool |",
             "|---|---|---|---|---|"]
    for name, s in out["subjects"].items():
        r = s["said_yes"]
        lines.append(f"| {name} | {s['best_epoch']} | " + " | ".join(f"{r[g]['yes']} ({r[g]['photos']})" for g in
                                                                   ("own_test", "other_subjects", "unseen_imagenet")) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
