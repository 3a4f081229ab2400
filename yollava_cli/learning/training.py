"""Learning a concept as soft tokens (paper sec. 3-4): only the concept's k+1 input rows and its
identifier's output row change; the base model stays frozen.

Each epoch is a seeded, balanced draw: every photo and its mirror image `positive_repeats` times,
`negative_ratio` negatives per positive (half hard, half easy), and a sample of the attribute
conversations. Checkpoints are selected on held-out data (negatives the run never trains on, and a
held-out photo when there are at least 5, else unseen crops of the photos), scored with the yes/no
probability, not on the training photos as the official code does. After each epoch the full
state (rows, optimizer, history) is saved, so an interrupted run resumes to the same result.
"""

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from yollava_cli.errors import UserError
from yollava_cli.learning import resume as resume_state
from yollava_cli.learning.events import (
    EpochDone,
    EpochStarted,
    FittingHead,
    Step,
    Validating,
)
from yollava_cli.learning.mining import mine
from yollava_cli.learning.objective import class_weights, decision_targets, step_losses
from yollava_cli.learning.recognition import above_known_negatives, attach, fit_fusion, fit_head
from yollava_cli.learning.signals import Photo as SignalPhoto
from yollava_cli.learning.signals import registered as registered_signals
from yollava_cli.learning.signals import scores as signal_scores
from yollava_cli.learning.synthesis import (
    TrainingData,
    build_training_data,
    recognition_pair,
    score_question,
)
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.models.decoding import NO_WORDS, YES_WORDS
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import Status, report
from yollava_cli.store.concepts import get_concept, require_photos
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus, NegativeKind, RunStatus

MIN_PHOTOS_TO_HOLD_OUT = 5
GAP_MARGIN = 1e-3  # a P(yes) gap this much wider is a better epoch; less is rounding


@dataclass
class Example:
    question: str
    answer: str
    image: str | None = None  # photo sha256, with "-flip" / "-crop<i>" for derived views
    label: str = "attribute"  # positive | negative | attribute


@dataclass
class Split:
    positives: list[str]
    negatives: list[tuple[str, str]]
    val_positives: list[str]
    val_negatives: list[str]
    attributes: list[tuple[str, str]]
    facts: list[list[tuple[str, str]]]


@dataclass
class TrainResult:
    concept: str
    checkpoint: str
    best_epoch: int
    threshold: float
    thresholds: dict = field(default_factory=dict)  # tokens, head, fused: calibrated on validation data
    interrupted: bool = False
    history: list[dict] = field(default_factory=list)
    compute: dict = field(default_factory=dict)  # the device and precision it trained in, and why

    def to_json(self) -> dict:
        """What `train --json` prints: the fields, in their order, are the keys."""
        return asdict(self)


def split_data(data: TrainingData, config: TrainConfig) -> Split:
    rng = random.Random(f"split:{config.seed}")
    val_negatives, train_negatives = [], []
    for kind in NegativeKind:
        shas = [sha for sha, k in data.negatives if k == kind]
        rng.shuffle(shas)
        cut = max(2, round(len(shas) * config.validation_fraction)) if len(shas) >= 4 else 0
        val_negatives += shas[:cut]
        train_negatives += [(sha, kind) for sha in shas[cut:]]
    positives = list(data.positives)
    if len(positives) >= MIN_PHOTOS_TO_HOLD_OUT:
        rng.shuffle(positives)
        val_positives, positives = positives[:1], positives[1:]
    else:  # too few photos to spare one: judge on crops of them that training never sees
        val_positives = [f"{sha}-crop{i}" for sha in positives for i in range(2)]
    return Split(positives, train_negatives, val_positives, val_negatives, data.attributes, data.facts)


def epoch_examples(name: str, split: Split, epoch: int, config: TrainConfig) -> list[Example]:
    """The epoch's examples, drawn from (seed, epoch) alone: resuming replays the same epochs."""
    rng = random.Random(f"epoch:{config.seed}:{epoch}")
    examples = []
    for _ in range(config.positive_repeats):
        for sha in split.positives:
            for view in (sha, f"{sha}-flip"):
                examples.append(Example(*recognition_pair(name, True, rng.randrange(30)), view, "positive"))
    wanted = min(len(split.negatives), round(len(examples) * config.negative_ratio))
    by_kind = {kind: [s for s, k in split.negatives if k == kind] for kind in NegativeKind}
    hard = rng.sample(by_kind[NegativeKind.HARD], min(len(by_kind[NegativeKind.HARD]), wanted // 2 + wanted % 2))
    easy = rng.sample(by_kind[NegativeKind.EASY], min(len(by_kind[NegativeKind.EASY]), wanted - len(hard)))
    for sha in hard + easy:
        examples.append(Example(*recognition_pair(name, False, rng.randrange(30)), sha, "negative"))
    for question, answer in rng.sample(split.attributes, min(len(split.attributes), config.attributes_per_epoch)):
        examples.append(Example(question, answer))
    for pairs in split.facts:
        examples.append(Example(*rng.choice(pairs)))
    rng.shuffle(examples)
    return examples


class PhotoViews:
    """Photos from the store and their derived views (mirror, crops), loaded lazily."""

    def __init__(self, registry: Registry):
        self.files = {sha: registry.root / file for sha, file in registry.stored_photos().items()}

    def __call__(self, key: str) -> Image.Image:
        sha, _, view = key.partition("-")
        image = self.stored(sha)
        if view == "flip":
            return ImageOps.mirror(image)
        if view.startswith("crop"):
            w, h = image.size
            corner = int(view[4:]) % 2  # top-left or bottom-right 80% crop
            return image.crop((0, 0, int(w * 0.8), int(h * 0.8)) if corner == 0 else (int(w * 0.2), int(h * 0.2), w, h))
        return image

    def stored(self, sha: str) -> Image.Image:
        """The stored photo, or a one-line error naming its file and the fix: a copy damaged in a
        way its size does not show (require_photos checks sizes before training starts)."""
        try:
            with Image.open(self.files[sha]) as image:
                return image.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder failure means this stored copy is damaged
            raise UserError(f"{self.files[sha]}: stored photo {sha[:12]} cannot be decoded ({type(e).__name__}: {e}); "
                            "`yollava doctor --deep` names its source to re-add, or "
                            "`yollava doctor --deep --fix` moves it to the trash") from None


class Trainer:
    def __init__(self, registry: Registry, vlm: VLM, name: str, config: TrainConfig, embedder=None):
        self.registry, self.vlm, self.config, self.embedder = registry, vlm, config, embedder
        self.concept = get_concept(registry, name)
        self.name = self.concept.name
        self.views = PhotoViews(registry)
        self.folder = registry.root / "checkpoints" / self.name

    def encode(self, example: Example):
        images = [lambda: self.views(example.image)] if example.image else []  # decoded only on a cache miss
        keys = [example.image] if example.image else []
        prompt = Prompt(example.question, images, keys, concepts=[self.name])
        return self.vlm.prompts.encode(prompt, example.answer)

    def probabilities(self, keys: list[str]) -> list[float]:
        question = score_question(self.name)
        return self.vlm.yes_probabilities([Prompt(question, [lambda k=k: self.views(k)], [k], [self.name]) for k in keys])

    def score(self, positives: list[str], negatives: list[str]) -> dict:
        probs = self.probabilities(positives + negatives)
        pos, neg = probs[: len(positives)], probs[len(positives) :]
        return recognition_metrics(pos, neg)

    def run(self, resume: bool = False) -> TrainResult:
        facts = self.registry.facts(self.concept.id) if self.config.facts_in_tokens else []
        data = build_training_data(self.registry, self.vlm, self.concept, [f.text for f in facts])
        if not data.negatives:
            raise UserError(f"<{self.name}> has no negatives yet: run `yollava mine {self.name}` first (it needs a pool)")
        split = split_data(data, self.config)
        state = resume_state.load(self.folder, self.produced_by(data), self.name) if resume else None
        if resume and state is None:
            raise UserError(f"nothing to resume for <{self.name}>: train it without --resume")
        start_epoch, history, best = 0, [], None
        self.vlm.tokens.add(self.name, self.config.k, seed=self.config.seed, init_word=data.subject_word)
        params = self.vlm.tokens.parameters(self.name)
        optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        if state:
            start_epoch, history, best = resume_state.restore(state, params, optimizer)
        run_id = self.start_run(resume)
        probe = split.positives[:3] + [sha for sha, _ in split.negatives[:9]]  # train accuracy, cheaply
        try:
            for epoch in range(start_epoch, self.config.epochs):
                if best and epoch - best["epoch"] >= self.config.patience:  # epochs run since the best one
                    break
                started = time.perf_counter()
                losses = self.train_epoch(epoch, epoch_examples(self.name, split, epoch, self.config), optimizer)
                validation = self.score(split.val_positives, split.val_negatives)
                train = self.score(probe[:3], probe[3:])
                history.append({"epoch": epoch + 1, **losses, "train_accuracy": train["weighted"], "validation": validation,
                                "seconds": round(time.perf_counter() - started, 2)})
                if best is None or improves(validation, best["validation"]):
                    file = self.folder / f"run{run_id}.safetensors"
                    best = {"epoch": epoch + 1, "validation": validation, "threshold": calibrate(validation),
                            "file": str(file.relative_to(self.registry.root))}  # a resumed run may keep an earlier run's file
                    self.save_rows(file, data, best)
                resume_state.save(self.folder, params, optimizer, {**self.produced_by(data), "history": history, "best": best})
                report(EpochDone(**history[-1]))
            if best is not None and self.embedder is not None:
                report(FittingHead())
                best["thresholds"] = self.fit_recognizer(split, best)
        except KeyboardInterrupt:
            return self.finish(run_id, data, history, best, interrupted=True)
        except Exception as e:
            self.fail(run_id, history, best, e)
            raise
        return self.finish(run_id, data, history, best, interrupted=False)

    def train_epoch(self, epoch: int, examples: list[Example], optimizer) -> dict:
        """One pass over the epoch's examples; the mean loss, and the decision's part of it."""
        steps = (len(examples) + self.config.batch_size - 1) // self.config.batch_size
        report(EpochStarted(epoch, steps))
        weights = class_weights([e.label for e in examples])
        losses, decisions = [], []
        for step in range(steps):
            chunk = examples[step * self.config.batch_size : (step + 1) * self.config.batch_size]
            batch = self.vlm.prompts.collate([self.encode(e) for e in chunk])
            if self.config.decision_weight:
                targets, row_weights = decision_targets([e.label for e in chunk], weights)
                text, decision = step_losses(self.vlm.forward(batch), batch["labels"], targets, row_weights,
                                             self.vlm.word_ids(YES_WORDS), self.vlm.word_ids(NO_WORDS))
                loss = text + self.config.decision_weight * decision
                decisions.append(decision.item())
            else:  # every answer token alike, the decision's among them
                loss = self.vlm.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            report(Step(epoch, step + 1, steps, losses[-1]))
        report(Validating(epoch, steps))
        out = {"loss": sum(losses) / len(losses)}
        return {**out, "decision_loss": sum(decisions) / len(decisions)} if decisions else out

    def fit_recognizer(self, split: Split, best: dict) -> dict:
        """The concept head over image embeddings (see `fit_head`: the training negatives and the
        user's other concepts' photos its negatives) and its fusion with every registered signal
        (learning.signals), fitted on the validation data the checkpoint was chosen on; stored in
        the checkpoint. Returns the cuts calibrated there, by signal name, the head's and the
        fused one's too (the registry keeps them with the checkpoint)."""
        others = self.registry.other_concepts_photo_shas(self.concept.id)
        fit = fit_head(self.registry, self.embedder, self.views, split.positives, split.val_positives,
                       split.val_negatives, [sha for sha, _ in split.negatives] + others)
        recognizer, vectors = fit.recognizer, fit.held_out
        tokens = best["validation"]["probabilities"]["positive"] + best["validation"]["probabilities"]["negative"]
        held_out = [SignalPhoto(key, lambda key=key: self.views(key)) for key in split.val_positives + split.val_negatives]
        votes = signal_scores(list(registered_signals()), self.vlm, self.name, held_out, known={"tokens": tokens})
        fit_fusion(recognizer, recognizer.head_logits(vectors), votes, fit.labels)
        cut = len(split.val_positives)
        thresholds = {"tokens": best["threshold"]}
        for signal, probabilities in (*((n, p) for n, p in votes.items() if n != "tokens"),
                                      ("head", recognizer.head_probabilities(vectors)),
                                      ("fused", recognizer.fused_probabilities(vectors, votes))):
            thresholds[signal] = calibrate(recognition_metrics(probabilities[:cut], probabilities[cut:]))
        fit.final.fusion = recognizer.fusion
        attach(self.registry.root / best["file"], fit.final)
        return above_known_negatives(fit.final, thresholds)

    # -- checkpoints --------------------------------------------------------------------

    def save_rows(self, path: Path, data: TrainingData, best: dict) -> None:
        self.vlm.tokens.save(self.name, path, {"config": asdict(self.config), "data_hash": data.hash,
                                                "best": best, "kind": self.concept.kind})

    def produced_by(self, data: TrainingData) -> dict:
        """What a resume state must match: these settings, this data, this base model."""
        return {"config": asdict(self.config), "data_hash": data.hash, "fingerprint": self.vlm.fingerprint}

    # -- registry -----------------------------------------------------------------------

    def start_run(self, resume: bool) -> int:
        return self.registry.start_run("train", self.concept.id, {**asdict(self.config), "resume": resume})

    def fail(self, run_id: int, history: list, best: dict | None, error: Exception) -> None:
        """Mark the run `failed` with the error's first line, so it is not left `running` (which
        doctor would later report as a killed process)."""
        line = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        self.registry.finish_run(run_id, RunStatus.FAILED, {"error": line, "history": history, "best": best})

    def finish(self, run_id: int, data: TrainingData, history: list, best: dict | None, interrupted: bool) -> TrainResult:
        status = RunStatus.INTERRUPTED if interrupted else RunStatus.DONE
        checkpoint = self.registry.root / best["file"] if best else None
        with self.registry.transaction():
            self.registry.finish_run(run_id, status, {"history": history, "best": best})
            if best is not None:
                metrics = {"best_epoch": best["epoch"], "validation": best["validation"], "epochs_run": len(history),
                           "thresholds": best.get("thresholds", {"tokens": best["threshold"]}),
                           "train_accuracy": history[best["epoch"] - 1]["train_accuracy"] if len(history) >= best["epoch"] else None}
                self.registry.record_checkpoint(self.concept.id, checkpoint, self.vlm.ref, self.vlm.fingerprint, self.config.k,
                                                metrics, asdict(self.config), data.hash)
        if not interrupted:
            resume_state.discard(self.folder)
        if best is not None:
            self.vlm.tokens.load(checkpoint)  # leave the best rows loaded, not the last ones
        return TrainResult(self.name, str(checkpoint or ""), best["epoch"] if best else 0,
                           best["threshold"] if best else 0.5, (best or {}).get("thresholds", {}), interrupted, history,
                           self.vlm.policy.summary())


def recognition_metrics(pos: list[float], neg: list[float], threshold: float = 0.5) -> dict:
    """Positive, negative and weighted accuracy (their mean, as the paper reports), mean P(yes)."""
    p = sum(x >= threshold for x in pos) / len(pos) if pos else 0.0
    n = sum(x < threshold for x in neg) / len(neg) if neg else 0.0
    return {"positive": p, "negative": n, "weighted": (p + n) / 2,
            "mean_yes_positive": sum(pos) / len(pos) if pos else 0.0,
            "mean_yes_negative": sum(neg) / len(neg) if neg else 0.0,
            "probabilities": {"positive": [round(x, 4) for x in pos], "negative": [round(x, 4) for x in neg]}}


def improves(metrics: dict, best: dict) -> bool:
    """Weighted accuracy first, then the gap between positives' and negatives' mean P(yes), which
    must widen by more than GAP_MARGIN: a gain within float rounding keeps the earlier epoch, so a
    resumed run (another float path) picks the same epoch as an uninterrupted one."""
    if metrics["weighted"] != best["weighted"]:
        return metrics["weighted"] > best["weighted"]
    gap = metrics["mean_yes_positive"] - metrics["mean_yes_negative"]
    return gap > best["mean_yes_positive"] - best["mean_yes_negative"] + GAP_MARGIN


def calibrate(metrics: dict) -> float:
    """The yes-probability cut that best separates held-out positives from negatives: a midpoint
    between neighbouring scores (never glued to one photo's score), nearest 0.5 among equals."""
    pos, neg = metrics["probabilities"]["positive"], metrics["probabilities"]["negative"]
    cuts = sorted({0.0, 1.0, *pos, *neg})
    candidates = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] or [0.5]
    return max(candidates, key=lambda t: (recognition_metrics(pos, neg, t)["weighted"], -abs(t - 0.5)))


def train_concept(registry: Registry, vlm: VLM, name: str, config: TrainConfig | None = None,
                  resume: bool = False, embedder=None) -> TrainResult:
    """Train the concept's tokens, then (given an image embedder) its head and fused recognizer."""
    trainer = Trainer(registry, vlm, name, config or TrainConfig(), embedder)
    with registry.lock(f"train-{trainer.name}", f"training <{trainer.name}>"):
        require_photos(registry, trainer.concept, negatives=True)
        return trainer.run(resume)


def prepare_concept(registry: Registry, name: str, load_vlm: Callable[[], VLM], load_embedder: Callable[[], object],
                    config: TrainConfig | None = None, resume: bool = False) -> TrainResult:
    """Mine (when the concept has no negatives yet) and train: what `add` and `ask` run for a new concept."""
    require_photos(registry, get_concept(registry, name))  # before any model loads
    embedder = load_embedder()
    mine_if_needed(registry, name, embedder)
    return train_concept(registry, load_vlm(), name, config, resume, embedder)


def mine_if_needed(registry: Registry, name: str, embedder) -> None:
    """Mine the concept's negatives when it has none yet (training needs them)."""
    concept = get_concept(registry, name)
    if concept.status != ConceptStatus.ADDED and registry.negative_counts(concept.id):
        return
    report(Status(f"Mining negatives for <{concept.name}>..."))
    mined = mine(registry, name, embedder)
    kinds = [n["kind"] for n in mined.negatives]
    report(Status(f"Mined {kinds.count('hard')} hard and {kinds.count('easy')} easy negatives ({mined.source})."))
