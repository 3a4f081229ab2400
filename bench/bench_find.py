"""`find` with the concept head on `pocket`, on this CPU: warm search over the ImageNet sample and
the shared subjects' test photos (embeddings cached by `pool add`), by head, by fused (the language
model verifying the head's best photos) and by tokens (the language model on every photo, the
baseline, run in the same process), the agreement of fused-with-verify against fusing every
photo, and the cold embedding rate on photos never seen. Then the same warm search, by head and
by fused, over `--photos` (default 10,000): the 1,046 photos plus altered copies of the ImageNet
sample (mirrored, cropped, rotated, recoloured; each a new photo to the tool), whose cold embedding
rate is measured on the way.

    python bench/bench_find.py [--subject dog] [--repeats 3] [--photos 10000]   # writes bench/results/find.json
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from measure import where
from PIL import Image, ImageEnhance, ImageOps
from setup_concept import DATA, prepared_concept

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


VARIANTS = (
    lambda im: ImageOps.mirror(im),
    lambda im: im.crop((0, 0, int(im.width * 0.85), int(im.height * 0.85))),
    lambda im: im.crop((int(im.width * 0.15), int(im.height * 0.15), im.width, im.height)),
    lambda im: im.rotate(6, expand=False),
    lambda im: im.rotate(-6, expand=False),
    lambda im: ImageEnhance.Color(im).enhance(0.5),
    lambda im: ImageEnhance.Brightness(im).enhance(1.25),
    lambda im: ImageOps.mirror(im).crop((0, int(im.height * 0.1), im.width, im.height)),
    lambda im: im.resize((im.width // 2, im.height // 2)),
)


def altered_copies(sources: list[Path], count: int, folder: Path) -> list[Path]:
    """`count` new photos made from the sources, each variant of each source in turn."""
    out = []
    for i in range(count):
        source, variant = sources[i % len(sources)], VARIANTS[(i // len(sources)) % len(VARIANTS)]
        target = folder / f"{i:05d}.jpg"
        with Image.open(source) as image:
            variant(image.convert("RGB")).save(target, quality=90)
        out.append(target)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subject", default="dog")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=int, default=10_000)
    args = parser.parse_args()
    from yollava_cli.learning.embeddings import embed_photos, load_embedder
    from yollava_cli.learning.training import TrainConfig, train_concept
    from yollava_cli.store.photos import expand_photo_paths, read_photo
    from yollava_cli.use.find import VERIFY, find

    registry, vlm = prepared_concept(args.subject)
    embedder = load_embedder("efficientnet-lite0")
    start = time.perf_counter()
    train_concept(registry, vlm, args.subject, TrainConfig(epochs=3), embedder=embedder)
    train_s = time.perf_counter() - start
    folders = [DATA / "pool" / "imagenet-sample"] + sorted((DATA / "concepts").glob("*/test"))
    photos = expand_photo_paths(folders)
    embed_photos(registry, embedder, {read_photo(p).sha256: (lambda p=p: read_photo(p).image) for p in photos})  # warm
    report = {"machine": where(), "subject": args.subject, "photos": len(photos), "repeats": args.repeats, "train_epochs": 3,
              "train_s_with_head": round(train_s, 1)}
    runs = {}
    for by, verify in (("head", 0), ("fused", VERIFY), ("tokens", 0)):
        seconds, runs[by] = timed(lambda: find(registry, vlm, args.subject, folders, by=by, verify=verify),
                                  1 if by == "tokens" else args.repeats)
        report[f"warm_{by}_s"] = round(seconds, 2)
        report[f"warm_{by}_photos_per_s"] = round(len(photos) / seconds, 1)
    everything = find(registry, vlm, args.subject, folders, by="fused", verify=len(photos))
    verified = {r["path"]: r["match"] for r in runs["fused"]["results"]}
    reference = {r["path"]: r["match"] for r in everything["results"]}
    report["fused_verified_photos"] = sum(r["signal"] == "fused" for r in runs["fused"]["results"])
    report["agreement_with_fusing_every_photo"] = round(sum(verified[p] == m for p, m in reference.items()) / len(reference), 4)
    report["matches"] = {by: [Path(r["path"]).parent.parent.name + "/" + Path(r["path"]).name
                              for r in result["results"] if r["match"]] for by, result in {**runs, "fused_all": everything}.items()}
    report["head_speedup_over_tokens"] = round(report["warm_tokens_s"] / report["warm_head_s"], 1)
    with tempfile.TemporaryDirectory() as scratch:  # photos never embedded: mirrored, resized copies
        fresh = []
        for i, path in enumerate(photos[:200]):
            target = Path(scratch) / f"{i}.jpg"
            ImageOps.mirror(read_photo(path).image).resize((300, 240)).save(target, quality=90)
            fresh.append(target)
        start = time.perf_counter()
        embed_photos(registry, embedder, {read_photo(p).sha256: (lambda p=p: read_photo(p).image) for p in fresh})
        report["cold_embed_photos_per_s"] = round(len(fresh) / (time.perf_counter() - start), 1)
    with tempfile.TemporaryDirectory() as scratch:
        sources = sorted((DATA / "pool" / "imagenet-sample").glob("*.jpg"))
        extra = altered_copies(sources, args.photos - len(photos), Path(scratch))
        start = time.perf_counter()
        embed_photos(registry, embedder, {read_photo(p).sha256: (lambda p=p: read_photo(p).image) for p in extra})
        report["cold_embed_photos_per_s_at_scale"] = round(len(extra) / (time.perf_counter() - start), 1)
        many = folders + [Path(scratch)]
        report["photos_at_scale"] = len(photos) + len(extra)
        for by, verify in (("head", 0), ("fused", VERIFY)):
            seconds, found = timed(lambda: find(registry, vlm, args.subject, many, by=by, verify=verify), args.repeats)
            report[f"warm_{by}_s_at_scale"] = round(seconds, 2)
            report[f"matches_at_scale_{by}"] = sum(r["match"] for r in found["results"])
    report["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    (REPO / "bench" / "results" / "find.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "matches"}, indent=2))


if __name__ == "__main__":
    main()
