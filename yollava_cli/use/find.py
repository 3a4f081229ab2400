"""Is the concept in these photos? `find` over many photos (the concept head, one recognition
signal such as the soft tokens, or the head and the signals fused) and `recognize` for the one
photo a question is about."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import Embedder, embed_photos, load_embedder
from yollava_cli.learning.recognition import current
from yollava_cli.learning.signals import Photo, registered
from yollava_cli.learning.signals import scores as signal_scores
from yollava_cli.models.vlm import VLM
from yollava_cli.store.concepts import get_concept
from yollava_cli.store.records import Concept
from yollava_cli.use.find_explain import explain as explain_photo
from yollava_cli.use.find_explain import sure_cut, verdict
from yollava_cli.store.photos import (
    BadPhoto,
    expand_photo_paths,
    photo_sha256,
    read_photo,
)
from yollava_cli.store.registry import Registry

VERIFY = 32  # photos the language model checks per search, best head scores first
NEAR = 0.25  # head scores this close to its threshold are verified too
FIND_SIDE = 512  # photos are decoded downscaled to this side for scoring


def signal_names() -> tuple[str, ...]:
    """What --by takes: the fusion, the head, and each registered signal alone."""
    return ("fused", "head", *registered())


def check_find_options(by: str, verify: int) -> None:
    """find's options, checked before any model loads."""
    if by not in signal_names():
        raise UserError(f"unknown signal --by {by!r}: use {', '.join(signal_names())}")
    if verify < 0:
        raise UserError(f"--verify {verify}: give how many photos the language model checks (0 or more)")


def find(registry: Registry, vlm: VLM | None, name: str, inputs: list[Path], threshold: float | None = None,
         by: str = "fused", verify: int = VERIFY,
         embedders: Callable[[str], Embedder] = load_embedder, explain: bool = False) -> dict:
    """P(the concept is in each photo) for every photo (recursive for folders), best first.

    `by`: `tokens` asks the language model about every photo; `head` scores cached image
    embeddings with the concept head (thousands per second); `fused` (default) scores all with the
    head, then has the language model verify the `verify` best and every photo near the head's
    threshold, and fuses both there. Photos it did not verify keep the head's score. `vlm` may be
    None for `head`. `embedders` gives the embedder the head was trained with, by its id (on Ray
    workers with --ray). Each result's `verdict` says how sure it is (see find_explain.verdict);
    `explain` adds `why`: each signal's score and the nearest concept photo and known negative."""
    check_find_options(by, verify)
    concept = get_concept(registry, name)
    paths = expand_photo_paths(inputs)
    photos, skipped = read_for_find(paths)
    recognizer, thresholds = (current_recognizer(registry, concept) if by in ("head", "fused")
                              else (None, registry.thresholds(concept.id)))  # the cuts `recognize` uses too
    scores: dict[int, tuple[float, str]] = {}
    evidence: dict[int, dict] = {}  # each photo's score by every signal computed, for --explain
    if recognizer is not None:
        vectors = embed_photos(registry, embedders(recognizer.embedder),
                               {p["sha256"]: p["decode"] for p in photos})[0]
        kept = [p for p in photos if p["sha256"] in vectors]
        head = recognizer.head_probabilities(np.stack([vectors[p["sha256"]] for p in kept])) if kept else []
        scores = {id(p): (prob, "head") for p, prob in zip(kept, head)}
        if explain:
            evidence = {id(p): {"head": round(prob, 4), "vector": vectors[p["sha256"]]} for p, prob in zip(kept, head)}
        if by == "fused":
            cut = thresholds.get("head", 0.5)
            ranked = sorted(kept, key=lambda p: -scores[id(p)][0])
            checked = ranked[:verify] + [p for p in ranked[verify:] if abs(scores[id(p)][0] - cut) < NEAR]
            fuse(recognizer, vlm, concept.name, checked, vectors, scores, evidence if explain else None)
    else:
        scored = signal_scores([by], vlm, concept.name, signal_photos(photos))[by]
        scores = {id(p): (prob, by) for p, prob in zip(photos, scored) if prob is not None}
        evidence = {key: {by: round(prob, 4)} for key, (prob, _) in scores.items()} if explain else {}
    names = signal_names()
    cuts = {signal: (threshold if threshold is not None else thresholds.get(signal) or 0.5) for signal in names}
    results = rank_results(registry, concept, recognizer, [p for p in photos if id(p) in scores], scores, evidence, cuts, explain)
    return {"concept": concept.name, "by": by, "thresholds": {s: cuts[s] for s in names},
            "threshold": cuts[by], "results": results, "skipped": skipped}


def fuse(recognizer, vlm: VLM, name: str, checked: list[dict], vectors: dict, scores: dict, evidence: dict | None) -> None:
    """Score the `checked` photos by every signal the concept's fusion weighs and fuse them with
    the head (into `scores`, and each signal's score into `evidence` when explaining); a photo
    some signal could not read keeps the head's score."""
    signals = recognizer.signals()
    votes = signal_scores(signals, vlm, name, signal_photos(checked))
    kept = [i for i in range(len(checked)) if all(votes[s][i] is not None for s in signals)]
    fused = recognizer.fused_probabilities(np.stack([vectors[checked[i]["sha256"]] for i in kept]),
                                           {s: [votes[s][i] for i in kept] for s in signals}) if kept else []
    for i, prob in zip(kept, fused):
        scores[id(checked[i])] = (prob, "fused")
        if evidence is not None:
            evidence[id(checked[i])].update({**{s: round(votes[s][i], 4) for s in signals}, "fused": round(prob, 4)})


def signal_photos(photos: list[dict]) -> list[Photo]:
    return [Photo(p["sha256"], p["decode"], p["path"]) for p in photos]


def rank_results(registry: Registry, concept: Concept, recognizer, photos: list[dict], scores: dict, evidence: dict, cuts: dict,
                 explain: bool) -> list[dict]:
    """One result per scored photo, matches first, then best first; with `explain`, each with `why`."""
    results, sure = [], {signal: sure_cut(cut) for signal, cut in cuts.items()}
    for p in photos:
        probability, signal = scores[id(p)]
        result = {"path": str(p["path"]), "probability": round(probability, 4), "signal": signal,
                  "match": probability >= cuts[signal], "verdict": verdict(probability, cuts[signal], sure[signal])}
        if explain:
            found = {k: v for k, v in evidence[id(p)].items() if k != "vector"} | {"cut": cuts[signal]}
            result["why"] = (explain_photo(registry, concept, recognizer, evidence[id(p)]["vector"], found)
                             if recognizer is not None else found)
        results.append(result)
    return sorted(results, key=lambda r: (-r["match"], -r["probability"]))


def read_for_find(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """Each readable photo's hash, and a loader that reads and decodes it again only when a cache
    misses. Nothing of a photo is held in between (holding every file's bytes made `find`'s memory
    grow with the number of photos); a file that changed since it was hashed is skipped."""
    photos, skipped = [], []

    def reread(path: Path, sha256: str):  # a photo that fails to read or decode later is skipped, not fatal
        def load():
            try:
                photo = read_photo(path, FIND_SIDE)
                if photo.sha256 != sha256:
                    raise BadPhoto("the file changed during the search; run find again")
                return photo.image
            except BadPhoto as e:
                skipped.append({"path": str(path), "reason": str(e)})
                return None
        return load

    for path in paths:
        try:
            sha256 = photo_sha256(path)
        except BadPhoto as e:
            skipped.append({"path": str(path), "reason": str(e)})
            continue
        photos.append({"path": path, "sha256": sha256, "decode": reread(path, sha256)})
    return photos, skipped


def recognize(registry: Registry, vlm: VLM, concepts: list[str], images: list[Image.Image], keys: list[str]) -> list[dict]:
    """For one photo: whether each loaded concept is in it, by its fused recognizer, with the
    grounding line `ask` puts before the question (as RAP puts its retriever's finds), so "is <bo>
    here?" and "what is <bo> doing?" start from the right premise. Concepts without a head are
    left to the tokens alone."""
    if len(images) != 1:
        return []
    verdicts = []
    for name in concepts:
        concept = get_concept(registry, name)
        found = current(registry, concept)
        if found is None:
            continue
        recognizer, cuts = found
        vector = embed_photos(registry, load_embedder(recognizer.embedder), {keys[0]: lambda: images[0]})[0][keys[0]]
        votes = signal_scores(recognizer.signals(), vlm, name, [Photo(keys[0], lambda: images[0])])
        probability = recognizer.fused_probabilities(vector[None], votes)[0]
        present = probability >= cuts.get("fused", 0.5)
        verdicts.append({"concept": name, "present": present, "probability": round(probability, 4),
                         "line": f"<{name}> is {'' if present else 'not '}in this photo."})
    return verdicts


def current_recognizer(registry: Registry, concept: Concept) -> tuple:
    """The concept head and fusion stored with the current checkpoint and their cuts, or a one-line error."""
    found = current(registry, concept)
    if found is None:
        raise UserError(f"<{concept.name}> has no concept head (trained before heads existed, or without an "
                        f"image embedder): retrain it with `yollava train {concept.name}`, or use --by tokens")
    return found
