"""Recognition in a real library (issue #38): each shared subject learned alone (its train photos,
negatives mined from the ImageNet sample as its pool, no other concept known), then searched for
across a library of the pool plus every subject's test photos, by the concept head (the head path
of `find`, fitted and calibrated by the same code training runs). Per subject: misses, false
matches (quoted, with the head's two similarities and whether the photo was one of the concept's
negatives), precision and recall; totals. Where a false match comes from says which part failed:
a photo the head held as a negative that still passes is the head's fault, one it never saw is the
negatives' coverage.

    python bench/bench_library_find.py [--subjects dog cat ...] [--tag before]
        # writes bench/results/library-find[-TAG].json|md; embeddings are cached in --home
    python bench/bench_library_find.py --others --tag others
        # each subject still learned alone, then searched for as `find` does in a library that
        # holds every subject as a concept: the others' train photos known to its head
    python bench/bench_library_find.py --fused bear_plushie cat --epochs 2
        # the CLI's own `train` then `find` (fused, the default) for each, in a copy of --home
        # holding that subject alone; adds them to bench/results/library-find-fused.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from measure import where

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def setup(home: Path):
    os.environ["YOLLAVA_HOME"] = str(home)
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.learning.mining import add_pool
    from yollava_cli.store.registry import Registry

    registry = Registry(home)
    embedder = load_embedder("efficientnet-lite0")
    if not registry.pool("imagenet"):
        add_pool(registry, "imagenet", DATA / "pool" / "imagenet-sample", embedder)
    return registry, embedder


def library(manifest: dict) -> list[tuple[Path, str | None]]:
    """(photo, subject it shows or None): the pool, then every subject's test photos."""
    photos = [(p, None) for p in sorted((DATA / "pool" / "imagenet-sample").glob("*.jpg"))]
    return photos + [(DATA / "concepts" / rel, subject) for subject, entry in manifest.items() for rel in entry["test"]]


def learn_alone(registry, embedder, subject: str):
    """The subject added and mined alone, its head fitted and calibrated as training does (the
    tokens aside). Only its mined negatives are the head's: the other subjects are not its negatives."""
    from yollava_cli.learning.mining import mine
    from yollava_cli.learning.recognition import above_known_negatives, fit_head
    from yollava_cli.learning.synthesis import TrainingData
    from yollava_cli.learning.train_config import TrainConfig
    from yollava_cli.learning.training import PhotoViews, calibrate, recognition_metrics, split_data
    from yollava_cli.store.concepts import add_concept, get_concept

    if not registry.db.execute("SELECT 1 FROM concepts WHERE name = ?", [subject]).fetchone():
        add_concept(registry, subject, [DATA / "concepts" / subject / "train"], kind="object")
    concept = get_concept(registry, subject)
    started = time.perf_counter()
    mine(registry, subject, embedder)
    mined = time.perf_counter() - started
    data = TrainingData([p.sha256 for p in registry.concept_photos(concept.id)], registry.negatives(concept.id), [])
    split = split_data(data, TrainConfig())
    started = time.perf_counter()
    fit = fit_head(registry, embedder, PhotoViews(registry), split.positives, split.val_positives, split.val_negatives,
                   [sha for sha, _ in split.negatives])
    probabilities = fit.recognizer.head_probabilities(fit.held_out)
    cut = len(split.val_positives)
    threshold = above_known_negatives(fit.final, {"head": calibrate(recognition_metrics(probabilities[:cut], probabilities[cut:]))})["head"]
    roles = {sha: "train negative" for sha, _ in split.negatives} | {sha: "validation negative" for sha in split.val_negatives}
    return fit.final, threshold, roles, {"mine_s": round(mined, 2), "head_s": round(time.perf_counter() - started, 2)}


def search(registry, embedder, recognizer, threshold: float, photos: list[tuple[Path, str | None]], subject: str,
           roles: dict) -> dict:
    from yollava_cli.learning.embeddings import embed_photos
    from yollava_cli.learning.mining import file_loader
    from yollava_cli.store.photos import photo_sha256

    shas = [photo_sha256(p) for p, _ in photos]
    vectors = embed_photos(registry, embedder, {sha: file_loader(p) for sha, (p, _) in zip(shas, photos)})[0]
    matrix = np.stack([vectors[sha] for sha in shas])
    started = time.perf_counter()
    probabilities = np.array(recognizer.head_probabilities(matrix))
    search_s = time.perf_counter() - started
    features = recognizer.features(matrix)
    own = np.array([s == subject for _, s in photos])
    passed = probabilities >= threshold
    from yollava_cli.use.find_explain import verdict

    false = [{"photo": str(photos[i][0].relative_to(DATA)), "probability": round(float(probabilities[i]), 4),
              "verdict": verdict(float(probabilities[i]), threshold),
              "concept_similarity": round(float(features[i, 0]), 3), "negative_similarity": round(float(features[i, 1]), 3),
              "was": roles.get(shas[i], "not a negative")}
             for i in np.argsort(-probabilities) if passed[i] and not own[i]]
    missed = [{"photo": str(photos[i][0].relative_to(DATA)), "probability": round(float(probabilities[i]), 4)}
              for i in np.flatnonzero(own & ~passed)]
    sure = [verdict(float(probabilities[i]), threshold) for i in np.flatnonzero(own & passed)]
    found = int((own & passed).sum())
    return {"threshold": round(threshold, 4), "positives": int(own.sum()), "found": found, "misses": missed,
            "false_matches": false, "precision": round(found / max(int(passed.sum()), 1), 4),
            "recall": round(found / max(int(own.sum()), 1), 4), "search_s": round(search_s, 4),
            "found_likely": sure.count("likely")}


def isolated_weighted(results: dict, manifest: dict) -> float:
    """The paper's isolated protocol read off the same search: each subject's own test photos
    against every other subject's, weighted accuracy (positive and negative accuracy's mean), averaged."""
    tests = sum(len(entry["test"]) for entry in manifest.values())
    scores = []
    for subject, r in results.items():
        others = tests - r["positives"]
        false = sum(1 for f in r["false_matches"] if f["photo"].startswith("concepts/"))
        scores.append((r["recall"] + 1 - false / others) / 2)
    return round(float(np.mean(scores)), 4)


def fused(home: Path, subject: str, epochs: int, manifest: dict) -> dict:
    """`yollava train` and `yollava find` (fused) for one subject, learned alone."""
    alone = Path(f"{home}-{subject}")
    shutil.rmtree(alone, ignore_errors=True)
    shutil.copytree(home, alone)

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "yollava_cli", *args], env={**os.environ, "YOLLAVA_HOME": str(alone)},
                              capture_output=True, text=True).stdout

    for other in json.loads(cli("list", "--json"))["concepts"]:
        if other["name"] != subject:
            cli("rm", other["name"], "--yes")
    started = time.perf_counter()
    trained = json.loads(cli("train", subject, "--epochs", str(epochs), "--json"))
    train_s = time.perf_counter() - started
    tests = [str(DATA / "concepts" / s / "test") for s in manifest]
    found = json.loads(cli("find", subject, str(DATA / "pool" / "imagenet-sample"), *tests, "--json"))
    own = [r for r in found["results"] if f"/{subject}/test/" in r["path"]]
    false = [{"photo": r["path"].split("data/")[-1], "probability": r["probability"], "signal": r["signal"],
              "verdict": r["verdict"]} for r in found["results"] if r["match"] and r not in own]
    return {"epochs": epochs, "train_s": round(train_s, 1), "thresholds": trained["thresholds"],
            "found": sum(r["match"] for r in own), "positives": len(own), "false_matches": false}


def markdown(result: dict) -> str:
    lines = [f"# Library search, head ({result['tag']})", "",
             f"{result['library']} photos (the ImageNet sample pool + every subject's test photos), each subject "
             f"learned alone{'; searched for knowing the other subjects (their train photos), as `find` does in a library holding them all' if result.get('others') else ''}. "
             f"{result['where']['cpu']}, load {result['load']}.", "",
             f"Totals: recall {result['totals']['recall']}, precision {result['totals']['precision']}, "
             f"false matches {result['totals']['false_matches']} ({result['totals']['false_per_concept']} per concept). "
             f"`likely`, not `match`: {result['totals'].get('found_likely', '-')} of the photos found, "
             f"{result['totals'].get('false_likely', '-')} of the false matches. The isolated protocol (own test photos vs "
             f"the other subjects'), weighted: {result['totals'].get('isolated_weighted', '-')}.", "",
             "| subject | found | misses | false | precision | worst false matches |", "|---|---|---|---|---|---|"]
    for subject, r in result["subjects"].items():
        worst = "; ".join(f"{f['photo'].rsplit('/', 1)[-1] if 'pool' in f['photo'] else f['photo']} {f['probability']}"
                          f" ({f['was']}{', ' + f['verdict'] if 'verdict' in f else ''})" for f in r["false_matches"][:3])
        lines.append(f"| {subject} | {r['found']}/{r['positives']} | {len(r['misses'])} | {len(r['false_matches'])} | "
                     f"{r['precision']} | {worst} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="*")
    parser.add_argument("--tag", default="")
    parser.add_argument("--home", type=Path, default=Path("/tmp/yollava-library-bench"))
    parser.add_argument("--fused", nargs="*", help="subjects to train (tokens too) and find by the CLI; needs a run without it first")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--others", action="store_true",
                        help="find as `find` does in a library holding every subject: the others' photos known (tag it)")
    args = parser.parse_args()
    manifest = json.loads((DATA / "concepts" / "manifest.json").read_text())
    if args.fused:
        out = RESULTS / "library-find-fused.json"
        runs = json.loads(out.read_text())["subjects"] if out.exists() else {}  # subjects run before are kept
        for subject in args.fused:
            runs[subject] = {**fused(args.home, subject, args.epochs, manifest), "load": os.getloadavg()[0]}
            print(json.dumps({subject: runs[subject]}))
        out.write_text(json.dumps({"where": where(), "subjects": runs}, indent=1) + "\n")
        return
    subjects = args.subjects or sorted(manifest)
    registry, embedder = setup(args.home)
    from yollava_cli.learning.recognition import above_known_negatives, knowing_others

    photos = library(manifest)
    learned = {subject: learn_alone(registry, embedder, subject) for subject in subjects}
    results = {}
    for subject in subjects:
        recognizer, threshold, roles, timing = learned[subject]
        if args.others:
            recognizer = knowing_others(registry, registry.concept(subject).id, recognizer)
            threshold = above_known_negatives(recognizer, {"head": threshold})["head"]
        results[subject] = {**search(registry, embedder, recognizer, threshold, photos, subject, roles), **timing}
        r = results[subject]
        print(f"{subject}: {r['found']}/{r['positives']} found, {len(r['false_matches'])} false, "
              f"head {r['head_s']} s", file=sys.stderr)
    found, positives = sum(r["found"] for r in results.values()), sum(r["positives"] for r in results.values())
    false = sum(len(r["false_matches"]) for r in results.values())
    totals = {"found": found, "positives": positives, "false_matches": false, "recall": round(found / positives, 4),
              "precision": round(found / (found + false), 4), "false_per_concept": round(false / len(results), 2),
              "false_not_in_pool": sum(1 for r in results.values() for f in r["false_matches"] if "pool" not in f["photo"]),
              "found_likely": sum(r["found_likely"] for r in results.values()),
              "false_likely": sum(f["verdict"] == "likely" for r in results.values() for f in r["false_matches"]),
              "isolated_weighted": isolated_weighted(results, manifest),
              "head_s_mean": round(float(np.mean([r["head_s"] for r in results.values()])), 3)}
    result = {"tag": args.tag or "current", "others": args.others, "library": len(photos), "where": where(), "load": os.getloadavg()[0],
              "totals": totals, "subjects": results}
    stem = RESULTS / f"library-find{'-' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
