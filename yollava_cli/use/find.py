"""Is the concept in these photos? `find` over many photos (the concept head, the soft tokens, or
both fused) and `recognize` for the one photo a question is about."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import Embedder, embed_photos, load_embedder
from yollava_cli.learning.events import ScoringPhotos
from yollava_cli.learning.recognition import current
from yollava_cli.learning.synthesis import score_question
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import SCORE_BATCH, VLM
from yollava_cli.reporting import report
from yollava_cli.store.concepts import get_concept
from yollava_cli.use.find_explain import explain as explain_photo
from yollava_cli.use.find_explain import sure_cut, verdict
from yollava_cli.store.photos import (
    BadPhoto,
    expand_photo_paths,
    photo_sha256,
    read_photo,
)
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import Signal

SIGNALS = tuple(Signal)
VERIFY = 32  # photos the language model checks per search, best head scores first
NEAR = 0.25  # head scores this close to its threshold are verified too
FIND_SIDE = 512  # photos are decoded downscaled to this side for scoring


def check_find_options(by: str, verify: int) -> None:
    """find's options, checked before any model loads."""
    if by not in SIGNALS:
        raise UserError(f"unknown signal --by {by!r}: use {', '.join(SIGNALS)}")
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
    recognizer = current_recognizer(registry, concept) if by != "tokens" else None
    thresholds = registry.thresholds(concept["id"])  # the cuts `recognize` uses too
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
            tokens = yes_probabilities(vlm, concept["name"], checked)
            checked = [p for p in checked if id(p) in tokens]
            fused = recognizer.fused_probabilities(np.stack([vectors[p["sha256"]] for p in checked]),
                                                   [tokens[id(p)] for p in checked]) if checked else []
            scores.update({id(p): (prob, "fused") for p, prob in zip(checked, fused)})
            for p, prob in zip(checked, fused) if explain else ():
                evidence[id(p)].update({"tokens": round(tokens[id(p)], 4), "fused": round(prob, 4)})
    else:
        scores = {key: (prob, "tokens") for key, prob in yes_probabilities(vlm, concept["name"], photos).items()}
        evidence = {key: {"tokens": round(prob, 4)} for key, (prob, _) in scores.items()} if explain else {}
    cuts = {signal: (threshold if threshold is not None else thresholds.get(signal) or 0.5) for signal in SIGNALS}
    results = rank_results(registry, concept, recognizer, [p for p in photos if id(p) in scores], scores, evidence, cuts, explain)
    return {"concept": concept["name"], "by": by, "thresholds": {s: cuts[s] for s in SIGNALS},
            "threshold": cuts[by], "results": results, "skipped": skipped}


def rank_results(registry: Registry, concept: dict, recognizer, photos: list[dict], scores: dict, evidence: dict, cuts: dict,
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


def yes_probabilities(vlm: VLM, name: str, photos: list[dict]) -> dict[int, float]:
    """The soft tokens' P(yes) for "is <name> in this photo?", by id(photo). Photos are decoded one
    scoring batch at a time (those with cached features not at all) and dropped after it; one that
    no longer reads is left out (its loader reported it skipped)."""
    question, scores = score_question(name), {}
    for start in range(0, len(photos), SCORE_BATCH):
        batch = [(p, p["decode"] if p["sha256"] in vlm.features else p["decode"]()) for p in photos[start : start + SCORE_BATCH]]
        batch = [(p, image) for p, image in batch if image is not None]
        probabilities = vlm.yes_probabilities([Prompt(question, [image], [p["sha256"]], [name]) for p, image in batch])
        scores.update({id(p): probability for (p, _), probability in zip(batch, probabilities)})
        report(ScoringPhotos(min(start + SCORE_BATCH, len(photos)), len(photos)))
    return scores


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
        recognizer = current(registry, concept)
        if recognizer is None:
            continue
        vector = embed_photos(registry, load_embedder(recognizer.embedder), {keys[0]: lambda: images[0]})[0][keys[0]]
        tokens = vlm.yes_probabilities([Prompt(score_question(name), images, keys, [name])])
        probability = recognizer.fused_probabilities(vector[None], tokens)[0]
        present = probability >= registry.thresholds(concept["id"]).get("fused", 0.5)
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
