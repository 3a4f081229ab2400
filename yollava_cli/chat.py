"""Talking to the model about your concepts: one-off questions, multi-turn chats, and recognition
over many photos. Concepts come from the names given and from every `<name>` in the question."""

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

from yollava_cli.backend import VLM, Prompt
from yollava_cli.concepts import RESERVED_NAMES, get_concept, parse_name
from yollava_cli.errors import UserError
from yollava_cli.images import BadPhoto, decode, expand_photo_paths, photo_bytes, read_photo
from yollava_cli.store import Registry
from yollava_cli.synthesis import score_question

MENTION = re.compile(r"<([a-z0-9][a-z0-9_-]{0,31})>")
FIND_BATCH = 16


def mentioned_concepts(question: str, names: list[str]) -> list[str]:
    """The given names, then every `<name>` in the question, in order, without repeats."""
    found = [parse_name(n) for n in names]
    found += [m for m in MENTION.findall(question) if m not in RESERVED_NAMES and not re.search(r"_\d+$", m)]
    return list(dict.fromkeys(found))


def with_identifiers(question: str, concepts: list[str]) -> str:
    """`ask bo "what should I buy him?"` is about <bo> even when the question does not say so."""
    missing = [f"<{n}>" for n in concepts if f"<{n}>" not in question]
    return f"About {' and '.join(missing)}: {question}" if missing else question


def load_concepts(registry: Registry, vlm: VLM, names: list[str], train_missing: Callable[[str], None] | None) -> list[dict]:
    """Load each concept's current checkpoint into the model; untrained ones are trained first
    through `train_missing`, or refused when it is None."""
    loaded = []
    for name in names:
        concept = get_concept(registry, name)
        if concept["status"] != "trained":
            if train_missing is None:
                raise UserError(f"<{name}> is not trained yet: run `yollava train {name}` (or drop --no-train)")
            train_missing(name)
            concept = get_concept(registry, name)
        checkpoint = registry.current_checkpoint(concept["id"])
        if checkpoint is None:
            raise UserError(f"<{name}> has no checkpoint: run `yollava train {name}`")
        if name not in vlm.k:
            vlm.load_concept(registry.root / checkpoint["file"], name)
        loaded.append(concept)
    return loaded


def open_images(paths: list[Path]) -> tuple[list[Image.Image], list[str]]:
    images, keys = [], []
    for path in paths:
        try:
            photo = read_photo(path)
        except BadPhoto as e:
            raise UserError(f"{path}: {e}") from None
        images.append(photo.image)
        keys.append(photo.sha256)
    return images, keys


@dataclass
class GenerationOptions:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0


def ask(vlm: VLM, concepts: list[str], question: str, images: list[Image.Image], keys: list[str],
        options: GenerationOptions, on_text: Callable[[str], None] | None = None,
        history: list[tuple[str, str]] | None = None, stop: threading.Event | None = None) -> dict:
    """Answer one question, streaming text to `on_text`; returns the answer with timings."""
    start = time.perf_counter()
    first: list[float] = []

    def stream(text: str) -> None:
        if not first:
            first.append(time.perf_counter() - start)
        if on_text:
            on_text(text)

    prompt = Prompt(with_identifiers(question, concepts), images, keys, concepts, list(history or []))
    answer = vlm.generate(prompt, options.max_tokens, options.temperature, options.seed, stream, stop)
    tokens = len(vlm.tokenizer.encode(answer, add_special_tokens=False))
    return {"answer": answer, "concepts": concepts, "model": vlm.ref,
            "timings": {"first_token_s": round(first[0], 4) if first else None,
                        "total_s": round(time.perf_counter() - start, 4), "tokens": tokens}}


@dataclass
class ChatSession:
    """A multi-turn conversation: history, the current photo, the loaded concepts."""

    vlm: VLM
    concepts: list[str]
    options: GenerationOptions
    images: list[Image.Image] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    registry: Registry | None = None  # where concepts mentioned mid-chat are loaded from

    def load_mentioned(self, text: str) -> list[str]:
        """Load each `<name>` in `text` that is not loaded yet (its current checkpoint); returns one
        line per concept that cannot be, saying why. Chat never trains: that takes minutes."""
        problems = []
        for name in mentioned_concepts(text, []):
            if name in self.concepts:
                continue
            try:
                concept = get_concept(self.registry, name)
                checkpoint = self.registry.current_checkpoint(concept["id"])
                if concept["status"] != "trained" or checkpoint is None:
                    raise UserError(f"<{name}> is not trained yet: run `yollava train {name}`, then ask again")
                if name not in self.vlm.k:
                    self.vlm.load_concept(self.registry.root / checkpoint["file"], name)
            except UserError as e:
                problems.append(str(e))
                continue
            self.concepts.append(name)
        return problems

    def set_image(self, path: Path) -> None:
        self.images, self.keys = open_images([path])
        self.history = []  # earlier turns talked about another photo (or none)

    def reset(self) -> None:
        self.images, self.keys, self.history = [], [], []

    def say(self, text: str, on_text: Callable[[str], None], stop: threading.Event | None = None) -> str:
        result = ask(self.vlm, self.concepts, text, self.images, self.keys, self.options, on_text, self.history, stop)
        self.history.append((with_identifiers(text, self.concepts), result["answer"]))
        return result["answer"]


@contextmanager
def input_history(path: Path) -> Iterator[None]:
    """Line editing for `input()`, with Up recalling earlier lines (of this and earlier chats, kept
    in `path`), where Python has readline."""
    try:
        import readline
    except ImportError:
        yield
        return
    try:
        readline.read_history_file(path)
    except OSError:  # no history yet, or unreadable: start without
        pass
    readline.set_history_length(1000)
    try:
        yield
    finally:
        try:
            readline.write_history_file(path)
        except OSError:
            pass


def find(registry: Registry, vlm: VLM, name: str, inputs: list[Path], threshold: float | None = None,
         on_progress: Callable[[int, int], None] | None = None) -> dict:
    """P(yes) that the concept is in each photo (recursive for folders), best first."""
    concept = get_concept(registry, name)
    threshold = concept["threshold"] if threshold is None else threshold
    threshold = 0.5 if threshold is None else threshold
    paths = expand_photo_paths(inputs)
    scored, skipped = [], []
    question = score_question(concept["name"])
    for start in range(0, len(paths), FIND_BATCH):
        prompts, batch_paths = [], []
        for path in paths[start : start + FIND_BATCH]:
            try:  # a photo whose features are cached is hashed, not decoded
                data = photo_bytes(path)
                sha256 = hashlib.sha256(data).hexdigest()
                image = partial(decode, data, 512) if vlm.has_features(sha256) else decode(data, 512)
            except BadPhoto as e:
                skipped.append({"path": str(path), "reason": str(e)})
                continue
            prompts.append(Prompt(question, [image], [sha256], [concept["name"]]))
            batch_paths.append(path)
        if prompts:
            scored += zip(batch_paths, vlm.yes_probabilities(prompts))
        if on_progress:
            on_progress(min(start + FIND_BATCH, len(paths)), len(paths))
    scored.sort(key=lambda item: -item[1])
    results = [{"path": str(p), "probability": round(prob, 4), "match": prob >= threshold} for p, prob in scored]
    return {"concept": concept["name"], "threshold": threshold, "results": results, "skipped": skipped}


def explain(vlm: VLM, name: str, options: GenerationOptions,
            on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Ask the model what each latent token stands for (paper appendix K)."""
    k = vlm.k[name]
    explanations = []
    for i in range(k):
        prompt = Prompt(f"In a few words, what does <{name}_{i}> describe about <{name}>?", concepts=[name])
        explanations.append({"token": f"<{name}_{i}>", "explanation": vlm.generate(prompt, options.max_tokens, options.temperature, options.seed)})
        if on_progress:
            on_progress(i + 1, k)
    return explanations
