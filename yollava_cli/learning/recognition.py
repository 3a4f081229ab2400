"""Recognition that uses everything the tool knows: a concept head over image embeddings beside
the soft tokens' P(yes), fused and calibrated.

The head (the idea of MyVLM's concept heads, trained our way) scores a photo by how close its
embedding comes to the concept's own photos and to the nearest known non-concept photo (mined
negatives and the user's other concepts): two similarities and a bias, fitted by logistic
regression on leave-one-photo-out similarities, so its 0.5 means what it says on photos it has not
seen. That second similarity is what tells `<dog>` from another corgi the user also owns, where
plain cosine to the concept's photos fails. It trains in well under a second.

The fused recognizer adds each registered signal's vote (learning.signals: the tokens' is
2 P(yes) - 1), times a weight, and a bias to the head's logit, fitted by logistic regression on
the validation data training already holds out (never on test photos). That is one or two photos
of the concept, so the head's logit stays as it is and the weights and bias are pulled toward 0
the harder the fewer photos there are: a signal earns a say only as far as the held-out photos
show it adds something. The head and the fusion (its weights by signal name) ride in the
concept's checkpoint file (safetensors + JSON), so bundles carry them.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import cached_vectors, embed_photos
from yollava_cli.learning.signals import registered
from yollava_cli.models.cores import one_thread
from yollava_cli.models.tensor_file import CheckpointMeta, file_meta, read_tensors, write_tensors
from yollava_cli.store.concepts import current_checkpoint_file
from yollava_cli.store.records import Concept

HEAD_TENSORS = ("head.positives", "head.negatives", "head.weights")
# The fits see a handful of positives: keep weights modest. Similarities differ by hundredths
# where logits differ by units, so the head's penalty is the smaller. The fusion's penalty keeps
# it near the head alone: a held-out photo or two cannot hand the decision to the weaker signal.
HEAD_L2, FUSION_L2 = 1e-5, 1.0
# Fusion layouts: 3 names the weights ({"head": 1.0, signal: weight..., "bias": b}); 2 listed
# [head, tokens' vote, bias]; 1 weighed the tokens' logit, not their bounded vote (not reused).
FUSION_VERSION = 3
VERSION_2 = ("head", "tokens", "bias")
HEAD_ALONE = {"head": 1.0, "tokens": 0.0, "bias": 0.0}


@dataclass
class Recognizer:
    """A concept's head (prototypes + weights) and the fusion of its logit with the signals'."""

    embedder: str
    positives: np.ndarray  # (P, d) unit vectors: the concept's photos and their mirror images
    negatives: np.ndarray  # (N, d): mined negatives and the user's other concepts' photos
    weights: np.ndarray  # (3,): similarity to the concept, to the nearest non-concept, bias
    fusion: dict[str, float] = field(default_factory=lambda: dict(HEAD_ALONE))  # weight by signal, "head", "bias"

    def features(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        if vectors.shape[1] != self.positives.shape[1]:  # a head import could not check (its embedder was missing)
            raise UserError(f"this concept head holds {self.positives.shape[1]}-wide embeddings, but {self.embedder} "
                            f"gives {vectors.shape[1]}-wide ones: retrain the concept, or use --by tokens")
        near_negative = (vectors @ self.negatives.T).max(1) if len(self.negatives) else np.zeros(len(vectors))
        return np.stack([(vectors @ self.positives.T).max(1), near_negative], 1)

    def head_logits(self, vectors: np.ndarray) -> np.ndarray:
        return self.features(vectors) @ self.weights[:2] + self.weights[2]

    def head_probabilities(self, vectors: np.ndarray) -> list[float]:
        return sigmoid(self.head_logits(vectors)).tolist()

    def signals(self) -> list[str]:
        """The signals this fusion weighs that are registered here (one it names that is not, a
        plugin missing on this machine, is left out: its vote would be 0, no opinion)."""
        known = registered()
        return [name for name in self.fusion if name not in ("head", "bias") and name in known]

    def fused_probabilities(self, vectors: np.ndarray, probabilities: dict[str, list[float]]) -> list[float]:
        """P(concept) fused from the head and each of `signals()`'s probabilities for the photos."""
        names = self.signals()
        weights = np.array([self.fusion["head"], *(self.fusion[n] for n in names), self.fusion["bias"]])
        return sigmoid(fusion_inputs(self.head_logits(vectors), {n: probabilities[n] for n in names}) @ weights).tolist()


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -60, 60)))


def fusion_inputs(head_logits: np.ndarray, probabilities: dict[str, list[float]]) -> np.ndarray:
    """The head's logit, each signal's vote (Signal.vote: bounded) in the order given, and a constant."""
    signals, head = registered(), np.asarray(head_logits, dtype=np.float64)
    votes = [signals[name].vote(p) for name, p in probabilities.items()]
    return np.stack([head, *votes, np.ones(len(head))], 1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, offset: np.ndarray | None = None, steps: int = 200,
                 nonpositive: tuple[int, ...] = ()) -> np.ndarray:
    """Class-balanced logistic regression by L-BFGS; the last column of x is the bias. Without an
    offset the weights (not the bias) shrink toward 0; with one (a logit every row starts from),
    the bias shrinks too: the offset alone is the prior. A weight named in `nonpositive` that the
    fit makes positive is held at 0 (the loss is convex: the best bounded fit lies on that bound)."""
    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    start = torch.tensor(offset if offset is not None else np.zeros(len(x)), dtype=torch.float64)
    balance = torch.where(ys > 0, 0.5 / max(float(ys.sum()), 1.0), 0.5 / max(float((1 - ys).sum()), 1.0))
    penalised = slice(None) if offset is not None else slice(None, -1)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (balance * torch.nn.functional.binary_cross_entropy_with_logits(start + xs @ w, ys, reduction="none")).sum()
        loss = loss + l2 * (w[penalised] ** 2).sum()
        loss.backward()
        return loss

    with one_thread():  # a few hundred rows: a second thread only waits to be scheduled
        optimizer.step(closure)
    weights = w.detach().numpy()
    held = [i for i in nonpositive if weights[i] > 0]
    if held:  # without its feature, the weight's only pull is the penalty's, to 0
        x = np.array(x, dtype=np.float64)
        x[:, held] = 0.0
        weights = fit_logistic(x, y, l2, offset, steps)
        weights[held] = 0.0
    return weights


def train_head(embedder: str, positives: np.ndarray, groups: list[str], negatives: np.ndarray) -> Recognizer:
    """Fit the head's weights on leave-one-out similarities: each positive against the concept's
    other photos (never its own mirror image: `groups` names each row's photo), each negative
    against the positives and the other negatives. Nearness to a known non-concept photo may only
    lower the score: hard negatives are mined near the concept's photos, so unbounded, the fit
    learnt the opposite (being near a negative raised the score, and 65 of 72 false matches in a
    library search were the head's own negatives; bench/results/library-find-before.md)."""
    positives, negatives = np.asarray(positives, np.float32), np.asarray(negatives, np.float32)
    pos_sims, neg_to_pos = positives @ positives.T, negatives @ positives.T
    same = np.array([[a == b for b in groups] for a in groups])
    own = np.where(same, -1.0, pos_sims).max(1) if len(set(groups)) > 1 else pos_sims.max(1)
    neg_sims = negatives @ negatives.T
    np.fill_diagonal(neg_sims, -1.0)
    rows = [(own, (positives @ negatives.T).max(1) if len(negatives) else np.zeros(len(positives)), 1.0),
            (neg_to_pos.max(1), neg_sims.max(1) if len(negatives) > 1 else np.zeros(len(negatives)), 0.0)]
    x = np.concatenate([np.stack([a, b, np.ones(len(a))], 1) for a, b, _ in rows])
    y = np.concatenate([np.full(len(a), label) for a, _, label in rows])
    return Recognizer(embedder, positives, negatives, fit_logistic(x, y, HEAD_L2, nonpositive=(1,)))


def above_known_negatives(recognizer: Recognizer, cuts: dict) -> dict:
    """The calibrated cuts, the head's raised where needed so that none of the negatives the head
    holds passes it (each scored as a photo it never saw: against the other negatives), and the
    fused cut moved by as many logits (the fusion adds the tokens' vote to the head's logit). A
    handful of held-out photos put the calibrated cut anywhere in a wide gap; the known negatives
    say where in it the look-alikes begin."""
    negatives = recognizer.negatives
    if len(negatives) < 2 or "head" not in cuts:
        return cuts
    others = negatives @ negatives.T
    np.fill_diagonal(others, -1.0)
    features = np.stack([(negatives @ recognizer.positives.T).max(1), others.max(1)], 1)
    highest = float(sigmoid(features @ recognizer.weights[:2] + recognizer.weights[2]).max())
    head = max(cuts["head"], min(highest + 1e-4, 1 - 1e-4))
    raised = {**cuts, "head": round(head, 6)}
    if "fused" in cuts:
        shift = logit(head) - logit(cuts["head"])
        raised["fused"] = round(float(sigmoid(logit(cuts["fused"]) + shift)), 6)
    return raised


def logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


@dataclass
class HeadFit:
    """A head fitted without the held-out photos, their embeddings and labels (to calibrate the
    cuts and fit the fusion on), and the head to store: refitted with the held-out photo, if any."""

    recognizer: Recognizer
    held_out: np.ndarray
    labels: list[int]
    final: Recognizer


def fit_head(registry, embedder, views, positives: list[str], val_positives: list[str], val_negatives: list[str],
             negatives: list[str]) -> HeadFit:
    """The concept head over `embedder`'s vectors of the photos (`views(key)` reads one: a stored
    photo, its mirror image or a crop): the positives and their mirror images against `negatives`.
    Validation keys with a "-" are crops, kept out of the final head."""
    negatives = list(dict.fromkeys(negatives))
    every_photo = positives + [key for key in val_positives if "-" not in key]
    stored = embed_photos(registry, embedder, {sha: lambda sha=sha: views(sha) for sha in every_photo + negatives})[0]
    negative_vectors = np.stack([stored[s] for s in negatives if s in stored])
    flips = dict(zip(every_photo, embedder.embed([views(f"{sha}-flip") for sha in every_photo])))

    def head(photos: list[str]) -> Recognizer:
        vectors = [stored[s] for s in photos] + [flips[s] for s in photos]
        return train_head(embedder.id, np.stack(vectors), photos * 2, negative_vectors)

    recognizer = head(positives)
    held_out = embedder.embed([views(key) for key in val_positives + val_negatives])
    labels = [1] * len(val_positives) + [0] * len(val_negatives)
    return HeadFit(recognizer, np.asarray(held_out), labels, head(every_photo) if every_photo != positives else recognizer)


def fit_fusion(recognizer: Recognizer, head_logits: np.ndarray, probabilities: dict[str, list[float]], labels: list[int]) -> None:
    """Fit the fusion of the head with each signal in `probabilities` on held-out validation data,
    shrunk toward the head alone; without both classes there, the head alone (every weight 0)."""
    weights = np.zeros(len(probabilities) + 1)
    rarer = min(sum(labels), len(labels) - sum(labels))  # the evidence counts as this many photos a side
    if rarer:
        inputs = fusion_inputs(head_logits, probabilities)
        weights = fit_logistic(inputs[:, 1:], np.array(labels, float), FUSION_L2 / rarer, inputs[:, 0])
    recognizer.fusion = {"head": 1.0, **{n: float(w) for n, w in zip(probabilities, weights)}, "bias": float(weights[-1])}


# -- in the checkpoint file --------------------------------------------------------------------


def attach(path: Path, recognizer: Recognizer) -> None:
    """Rewrite a concept checkpoint (atomically) with the recognizer's tensors and JSON beside the rows."""
    tensors, meta = read_tensors(path)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("head.")}
    tensors.update({"head.positives": torch.from_numpy(np.ascontiguousarray(recognizer.positives, np.float32)),
                    "head.negatives": torch.from_numpy(np.ascontiguousarray(recognizer.negatives, np.float32)),
                    "head.weights": torch.tensor(recognizer.weights, dtype=torch.float32)})
    meta["recognizer"] = {"embedder": recognizer.embedder, "fusion": recognizer.fusion, "fusion_version": FUSION_VERSION}
    write_tensors(path, tensors, meta)


def load(path: Path) -> Recognizer | None:
    """The recognizer stored in a checkpoint, or None for one trained before heads existed."""
    with safe_open(str(path), "pt") as f:
        info = CheckpointMeta.from_json(file_meta(f, path), str(path)).extra.get("recognizer")  # checked, if there
        if info is None or not set(HEAD_TENSORS) <= set(f.keys()):
            return None
        tensors = {k: f.get_tensor(k).numpy() for k in HEAD_TENSORS}
    return Recognizer(info["embedder"], tensors["head.positives"], tensors["head.negatives"],
                      tensors["head.weights"].astype(np.float64), named_fusion(info))


def named_fusion(info: dict) -> dict[str, float]:
    """The stored fusion's weights by name, whichever layout wrote them (a list is version 2's)."""
    version, fusion = info.get("fusion_version"), info["fusion"]
    if version == 2 and isinstance(fusion, list):
        return {name: float(w) for name, w in zip(VERSION_2, fusion)}
    if version == FUSION_VERSION and isinstance(fusion, dict):
        return {name: float(w) for name, w in fusion.items()}
    return dict(HEAD_ALONE)


def current(registry, concept: Concept) -> tuple[Recognizer, dict] | None:
    """The recognizer stored with the concept's current checkpoint, if it has one, knowing the
    user's other concepts as they are now, and its cuts by signal: those calibrated at training,
    raised where the head refitted for a newer concept would let a known negative through."""
    path = current_checkpoint_file(registry, concept)
    stored = load(path) if path else None
    if stored is None:
        return None
    cuts = registry.thresholds(concept.id)
    recognizer = knowing_others(registry, concept.id, stored)
    return recognizer, cuts if recognizer is stored else above_known_negatives(recognizer, cuts)


def knowing_others(registry, concept_id: int, recognizer: Recognizer) -> Recognizer:
    """The head refitted with the user's other concepts' photos among its negatives. Training puts
    the others of its day there; one added since (a look-alike: a second corgi, the neighbour's
    cat) would stay unknown to the head until the concept is retrained, and knowing the
    look-alike is what separates it (bench/results/library-find-others.md). Their vectors cached
    for the head's embedder (a concept mined or trained) are added, never a photo the concept holds
    itself, and the head's weights are fitted again as training fits them (a tenth of a second):
    a new negative alone changes nothing where training found no look-alike to weigh."""
    own = {photo.sha256 for photo in registry.concept_photos(concept_id)}
    vectors = cached_vectors(registry, recognizer.embedder,
                             [sha for sha in registry.other_concepts_photo_shas(concept_id) if sha not in own])
    known = recognizer.negatives
    new = [v for v in vectors.values() if not len(known) or float((known @ v).max()) < 1 - 1e-5]
    if not new:
        return recognizer
    photos = len(recognizer.positives) // 2  # the concept's photos, then their mirror images in the same order
    groups = [str(i % photos) for i in range(len(recognizer.positives))] if photos else []
    refit = train_head(recognizer.embedder, recognizer.positives, groups, np.concatenate([known, np.stack(new)]))
    return replace(refit, fusion=recognizer.fusion)
