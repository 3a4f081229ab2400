"""Is the concept in these photos? `find` over many photos (the concept head, the soft tokens, or
both fused) and `recognize` for the one photo a question is about."""

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import Embedder, embed_photos, load_embedder
from yollava_cli.learning.recognition import current
from yollava_cli.learning.synthesis import score_question
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.store.concepts import get_concept
from yollava_cli.store.photos import BadPhoto, decode, expand_photo_paths, photo_bytes
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import Signal

SIGNALS = tuple(Signal)
VERIFY = 32  # photos the language model checks per search, best head scores first
NEAR = 0.25  # head scores this close to its threshold are verified too


def check_find_options(by: str, verify: int) -> None:
    """find's options, checked before any model loads."""
    if by not in SIGNALS:
        raise UserError(f"unknown signal --by {by!r}: use {', '.join(SIGNALS)}")
    if verify < 0:
        raise UserError(f"--verify {verify}: give how many photos the language model checks (0 or more)")


def find(registry: Registry, vlm: VLM | None, name: str, inputs: list[Path], threshold: float | None = None,
         on_progress: Callable[[int, int], None] | None = None, by: str = "fused", verify: int = VERIFY,
         embedders: Callable[[str], Embedder] = load_embedder) -> dict:
    """P(the concept is in each photo) for every photo (recursive for folders), best first.

    `by`: `tokens` asks the language model about every photo; `head` scores cached image
    embeddings with the concept head (thousands per second); `fused` (default) scores all with the
    head, then has the language model verify the `verify` best and every photo near the head's
    threshold, and fuses both there. Photos it did not verify keep the head's score. `vlm` may be
    None for `head`. `embedders` gives the embedder the head was trained with, by its id (on Ray
    workers with --ray)."""
    check_find_options(by, verify)
    concept = get_concept(registry, name)
    paths = expand_photo_paths(inputs)
    photos, skipped = read_for_find(paths, vlm, need_pixels=by == "tokens")
    recognizer = current_recognizer(registry, concept) if by != "tokens" else None
    # the cuts `recognize` uses too: the recognizer's, stored with the checkpoint (tokens alone: the concept's)
    thresholds = recognizer.thresholds if recognizer is not None else {"tokens": concept["threshold"]}
    scores: dict[int, tuple[float, str]] = {}
    if recognizer is not None:
        vectors = embed_photos(registry, embedders(recognizer.embedder),
                               {p["sha256"]: p["decode"] for p in photos}, on_progress)[0]
        kept = [p for p in photos if p["sha256"] in vectors]
        head = recognizer.head_probabilities(np.stack([vectors[p["sha256"]] for p in kept])) if kept else []
        scores = {id(p): (prob, "head") for p, prob in zip(kept, head)}
        if by == "fused":
            cut = thresholds.get("head", 0.5)
            ranked = sorted(kept, key=lambda p: -scores[id(p)][0])
            checked = ranked[:verify] + [p for p in ranked[verify:] if abs(scores[id(p)][0] - cut) < NEAR]
            tokens = yes_probabilities(vlm, concept["name"], checked, on_progress)
            fused = recognizer.fused_probabilities(np.stack([vectors[p["sha256"]] for p in checked]), tokens) if checked else []
            scores.update({id(p): (prob, "fused") for p, prob in zip(checked, fused)})
    else:
        scores = {id(p): (prob, "tokens") for p, prob in zip(photos, yes_probabilities(vlm, concept["name"], photos, on_progress))}
    cuts = {signal: (threshold if threshold is not None else thresholds.get(signal) or 0.5) for signal in SIGNALS}
    results = [{"path": str(p["path"]), "probability": round(scores[id(p)][0], 4), "signal": scores[id(p)][1],
                "match": scores[id(p)][0] >= cuts[scores[id(p)][1]]} for p in photos if id(p) in scores]
    results.sort(key=lambda r: (-r["match"], -r["probability"]))
    return {"concept": concept["name"], "by": by, "thresholds": {s: cuts[s] for s in SIGNALS},
            "threshold": cuts[by], "results": results, "skipped": skipped}


def read_for_find(paths: list[Path], vlm: VLM, need_pixels: bool) -> tuple[list[dict], list[dict]]:
    """Each readable photo's hash and a decoder (called only when a cache misses)."""
    photos, skipped = [], []

    def lazy(path: Path, data: bytes):  # a photo that fails to decode later is skipped, not fatal
        def load():
            try:
                return decode(data, 512)
            except BadPhoto as e:
                skipped.append({"path": str(path), "reason": str(e)})
                return None
        return load

    for path in paths:
        try:  # a photo whose features are cached is hashed, not decoded
            data = photo_bytes(path)
            sha256 = hashlib.sha256(data).hexdigest()
            loader = lazy(path, data)
            if need_pixels and not (vlm and sha256 in vlm.features):
                loader = partial(lambda image: image, decode(data, 512))
        except BadPhoto as e:
            skipped.append({"path": str(path), "reason": str(e)})
            continue
        photos.append({"path": path, "sha256": sha256, "decode": loader})
    return photos, skipped


def yes_probabilities(vlm: VLM, name: str, photos: list[dict], on_progress=None) -> list[float]:
    """The soft tokens' P(yes) for "is <name> in this photo?" about each photo found."""
    question = score_question(name)
    return vlm.yes_probabilities([Prompt(question, [p["decode"]], [p["sha256"]], [name]) for p in photos], on_progress)


def recognize(registry: Registry, vlm: VLM, concepts: list[str], images: list[Image.Image], keys: list[str]) -> list[dict]:
    """For one photo: whether each loaded concept is in it, by its fused recognizer, with the
    grounding line `ask` puts before the question (as RAP puts its retriever's finds), so "is <bo>
    here?" and "what is <bo> doing?" start from the right premise. Concepts without a head are
    left to the tokens alone."""
    if len(images) != 1:
        return []
    verdicts = []
    for name in concepts:
        recognizer = current(registry, get_concept(registry, name))
        if recognizer is None:
            continue
        vector = embed_photos(registry, load_embedder(recognizer.embedder), {keys[0]: lambda: images[0]})[0][keys[0]]
        tokens = vlm.yes_probabilities([Prompt(score_question(name), images, keys, [name])])
        probability = recognizer.fused_probabilities(vector[None], tokens)[0]
        present = probability >= recognizer.thresholds.get("fused", 0.5)
        verdicts.append({"concept": name, "present": present, "probability": round(probability, 4),
                         "line": f"<{name}> is {'' if present else 'not '}in this photo."})
    return verdicts


def current_recognizer(registry: Registry, concept: dict):
    """The concept head and fusion stored with the current checkpoint, or a one-line error."""
    recognizer = current(registry, concept)
    if recognizer is None:
        raise UserError(f"<{concept['name']}> has no concept head (trained before heads existed, or without an "
                        f"image embedder): retrain it with `yollava train {concept['name']}`, or use --by tokens")
    return recognizer
