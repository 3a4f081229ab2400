"""How sure `find` is of a photo, and why it matched: the verdict a user can act on, and the
evidence behind a score (the concept photo and the known non-concept photo nearest it, and each
signal's probability)."""

import numpy as np

from yollava_cli.learning.embeddings import cached_vectors
from yollava_cli.learning.recognition import Recognizer, logit, sigmoid
from yollava_cli.store.records import Concept
from yollava_cli.store.registry import Registry

SURE = 2.0  # logits above the cut: a score this far past it is a `match`; nearer, `likely`


def sure_cut(cut: float) -> float:
    """The probability SURE logits past `cut`: where `likely` ends and `match` begins."""
    return float(sigmoid(logit(cut) + SURE))


def verdict(probability: float, cut: float, sure: float | None = None) -> str:
    """`match` (clears the calibrated cut by SURE logits), `likely` (passes it, but narrowly: look
    before acting on it) or `no`. `sure`: sure_cut(cut), when many photos share the cut."""
    if probability < cut:
        return "no"
    return "match" if probability >= (sure_cut(cut) if sure is None else sure) else "likely"


def explain(registry: Registry, concept: Concept, recognizer: Recognizer, vector: np.ndarray, scores: dict) -> dict:
    """Why a photo scored as it did: the nearest of the concept's photos and of the known
    non-concept photos (its negatives, the user's other concepts), by the head's embeddings,
    with `scores` (head, tokens, fused: those computed) beside them."""
    own = {p.sha256: p.source_path for p in registry.concept_photos(concept.id)}
    known = {sha: f"{kind} negative {source}" for sha, kind, source in registry.negative_sources(concept.id)}
    known.update({sha: f"<{name}>'s photo {source}" for sha, name, source in registry.other_concepts_photo_sources(concept.id)})
    return {**scores, "nearest_concept_photo": nearest(registry, recognizer.embedder, own, vector),
            "nearest_negative": nearest(registry, recognizer.embedder, known, vector)}


def nearest(registry: Registry, embedder: str, named: dict[str, str], vector: np.ndarray) -> dict | None:
    """{photo, similarity} of the photo among `named` ({sha: what to call it}) most like `vector`,
    by the embeddings cached when the head was trained; None when none is cached."""
    vectors = cached_vectors(registry, embedder, named)
    if not vectors:
        return None
    shas = list(vectors)
    similarities = np.stack([vectors[s] for s in shas]) @ np.asarray(vector, np.float32)
    best = int(similarities.argmax())
    return {"photo": named[shas[best]], "similarity": round(float(similarities[best]), 4)}
