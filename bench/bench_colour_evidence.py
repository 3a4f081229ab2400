"""Colour as instance evidence for library search (issue #38). The false matches left
(bench/results/library-find.md) are other subjects' photos of the same kind: a sloth plushie for
the bear plushie, a corgi puppy for the corgi. Does the object's colour, which a pooled classifier
vector barely keeps, tell them apart?

The setting is bench_library_find.py's (each shared subject learned alone, searched for across the
pool + every subject's test photos). Each photo's object colour is a hue/saturation/value histogram
over the cells of Lite0's 7x7 map that the concept's object descriptors (bench_instance_evidence.py)
match best; two histograms compare by their Bhattacharyya coefficient. Candidates, each decided by
the concept's own data only:
- `+colour`: a third head feature, the object colour's best match among the concept's photos
  (leave-one-photo-out for the positives' rows);
- `colour veto -M`: a photo the head passes must also reach the lowest leave-one-out colour match of
  the concept's own photos, less M.
It also prints, per subject, the pooled vector's nearest-concept-photo similarity of the subject's
own test photos beside that of its closest photos of other subjects: what the head can separate.

    python bench/bench_colour_evidence.py   # writes bench/results/library-find-colour.json|md
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
from bench_instance_evidence import candidate_table, descriptors, fit_and_search, object_descriptors, pooled_rows, tally
from bench_library_find import DATA, RESULTS, learn_alone, library, setup
from measure import where

CELLS = 12  # of the map's 49 cells, those the object descriptors match best: the object's
MARGINS = (0.0, 0.1, 0.2)


def cell_histograms(image) -> np.ndarray:
    """(49, 113) colour counts of the 7x7 cells of Lite0's centre crop: 12 hues x 3 saturations x 3
    values for coloured pixels, 5 values for grey ones (saturation < 0.2)."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    hsv = np.asarray(image.crop((left, top, left + 224, top + 224)).resize((112, 112)).convert("HSV")) / 255.0
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured = (np.minimum(hue * 12, 11).astype(int) * 9 + np.minimum((sat - 0.2) / 0.8 * 3, 2).astype(int) * 3
                + np.minimum(val * 3, 2).astype(int))
    bins = np.where(sat < 0.2, 108 + np.minimum(val * 5, 4).astype(int), coloured)
    cells = bins.reshape(7, 16, 7, 16).transpose(0, 2, 1, 3).reshape(49, 256)
    return np.stack([np.bincount(c, minlength=113) for c in cells]).astype(np.float32)


def object_colour(cells: np.ndarray, local: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """The colour of the cells the object descriptors match best, as a unit vector (sqrt of shares)."""
    counts = cells[np.argsort(-(local @ objects.T).max(1))[:CELLS]].sum(0)
    return np.sqrt(counts / max(counts.sum(), 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/yollava-library-bench"))
    args = parser.parse_args()
    from yollava_cli.store.photos import photo_sha256, read_photo

    manifest = json.loads((DATA / "concepts" / "manifest.json").read_text())
    registry, embedder = setup(args.home)
    photos = library(manifest)
    shas = [photo_sha256(p) for p, _ in photos]
    subjects = np.array([s or "" for _, s in photos])
    train = {photo_sha256(DATA / "concepts" / rel): DATA / "concepts" / rel for e in manifest.values() for rel in e["train"]}
    items = [(sha, p, False) for sha, (p, _) in zip(shas, photos)]
    items += [(key, p, flip) for sha, p in train.items() for key, flip in ((sha, False), (f"{sha}-flip", True))]
    z = descriptors("lite0", items, args.home / "descriptors-lite0.npz")
    pooled = dict(zip(z["keys"], z["pooled"]))
    local = {k: v.astype(np.float32) for k, v in zip(z["keys"], z["s7"])}
    cells = {sha: cell_histograms(read_photo(p, 512).image) for sha, p in [*zip(shas, (p for p, _ in photos)), *train.items()]}
    matrix = np.stack([pooled[s] for s in shas]).astype(np.float32)
    runs: dict[str, dict] = {}
    separable = {}
    for subject in sorted(manifest):
        recognizer, threshold, roles, _ = learn_alone(registry, embedder, subject)
        concept = [photo_sha256(DATA / "concepts" / rel) for rel in manifest[subject]["train"]]
        probabilities = np.array(recognizer.head_probabilities(matrix))
        negatives = [sha for sha, role in roles.items() if role == "train negative"]
        objects = object_descriptors(local, concept)
        own_colour = {c: object_colour(cells[c], local[c], object_descriptors(local, [o for o in concept if o != c])) for c in concept}
        refs = np.stack(list(own_colour.values()))

        def colour(keys: list[str]) -> np.ndarray:
            return np.array([(refs @ object_colour(cells[k], local[k], objects)).max() for k in keys])

        loo = np.array([max(float(own_colour[c] @ own_colour[o]) for o in concept if o != c) for c in concept])
        library_colour = colour(shas)
        pos, neg, lib = pooled_rows(pooled, [k for c in concept for k in (c, f"{c}-flip")], negatives, shas)
        runs.setdefault("head", {})[subject] = (probabilities, threshold)
        runs.setdefault("+colour", {})[subject] = fit_and_search([*pos, np.repeat(loo, 2)], [*neg, colour(negatives)],
                                                                 [*lib, library_colour])
        for margin in MARGINS:
            runs.setdefault(f"colour veto -{margin}", {})[subject] = (
                np.where(library_colour >= loo.min() - margin, probabilities, 0.0), threshold)
        nearest = lib[0]
        others = np.flatnonzero(subjects != subject)
        closest = others[np.argsort(-nearest[others])[:2]]
        separable[subject] = {"own_test": [round(float(s), 3) for s in nearest[subjects == subject]],
                              "closest_others": [[str(photos[i][0].relative_to(DATA)), round(float(nearest[i]), 3)] for i in closest]}
    table = [tally(name, per_subject, photos, subjects) for name, per_subject in runs.items()]
    result = {"where": where(), "load": os.getloadavg()[0], "cells": CELLS, "library": len(photos), "candidates": table,
              "nearest_concept_photo": separable}
    (RESULTS / "library-find-colour.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "library-find-colour.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["# Library search: the object's colour as instance evidence (issue #38)", "",
             f"{result['library']} photos, each of the 20 subjects learned alone (bench_library_find.py's setting). "
             f"{result['where']['cpu']}, {result['where']['cores']} cores, load {result['load']:.1f}.", "",
             *candidate_table(result["candidates"])]
    lines += ["", "The pooled vector's similarity to the nearest concept photo (the head's first feature): the "
              "subject's own test photos, and the two closest photos of anything else.", "",
              "| subject | own test photos | closest others |", "|---|---|---|"]
    for subject, s in result["nearest_concept_photo"].items():
        lines.append(f"| {subject} | {', '.join(map(str, s['own_test']))} | "
                     f"{'; '.join(f'{p} {v}' for p, v in s['closest_others'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
