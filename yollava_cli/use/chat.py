"""Talking to the model about your concepts: one-off questions, multi-turn chats, and recognition
over many photos. Concepts come from the names given and from every `<name>` in the question."""

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from yollava_cli.models.vlm import SCORE_BATCH, VLM
from yollava_cli.store.concepts import RESERVED_NAMES, get_concept, parse_name
from yollava_cli.errors import UserError
from yollava_cli.store.facts import prompt_notes
from yollava_cli.store.photos import BadPhoto, decode, expand_photo_paths, photo_bytes, read_photo
from yollava_cli.models.prompts import Prompt
from yollava_cli.store.registry import Registry
from yollava_cli.learning.synthesis import asks_if_present, score_question

MENTION = re.compile(r"<([a-z0-9][a-z0-9_-]{0,31})>")
# how much more likely a note must be as this question's answer than as an answer to "tell me
# something" to be quoted: e^5, ~150x. On the 20 shared subjects, 46 of 60 questions a note answers
# quoted it (2 another note) and 19 of 220 appearance and small-talk questions quoted one (e^4: 49, 29)
QUOTE_NATS = 5.0


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
        if name not in vlm.tokens:
            vlm.tokens.load(registry.root / checkpoint["file"], name)
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


def quoted_note(vlm: VLM, prompt: Prompt, notes: list[str]) -> str | None:
    """The note that answers the question, or None. A 135M model handed three facts often answers
    with the wrong one or rewrites them ("The original sentence is..."), so the model ranks them
    instead: by how much more likely each note is as the answer to this question than to "Tell me
    something about <bo>." (pointwise mutual information). The best note is quoted when it gains
    more than QUOTE_NATS; a question no note answers ("what should I buy him?") gains from none
    and is answered with every note in the prompt."""
    if not notes:
        return None
    question = Prompt(prompt.question, concepts=prompt.concepts)
    about = " and ".join(f"<{n}>" for n in prompt.concepts) or "it"
    neutral = Prompt(f"Tell me something about {about}.", concepts=prompt.concepts)
    gains = [given - prior for given, prior in zip(vlm.answer_logprobs(question, notes), vlm.answer_logprobs(neutral, notes))]
    best = max(range(len(notes)), key=gains.__getitem__)
    return notes[best] if gains[best] > QUOTE_NATS else None


def note_guidance(vlm: VLM, prompt: Prompt) -> dict:
    """How a text-only answer uses the owner's notes (VLM.generate's keywords): the note that
    answers the question opens it, and the model ends that paragraph in its own words; a question
    no note answers ("what should I buy him?") leans toward what the notes make likelier than the
    same prompt without them (leaning after a quote only recited the other notes). A photo turn is
    about the photo: nothing then."""
    if not prompt.notes or prompt.images:
        return {}
    quoted = quoted_note(vlm, prompt, prompt.notes)
    if quoted:
        return {"opening": quoted}
    return {"contrast": Prompt(prompt.question, concepts=prompt.concepts, history=prompt.history)}


@dataclass
class GenerationOptions:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0


def ask(vlm: VLM, concepts: list[str], question: str, images: list[Image.Image], keys: list[str],
        options: GenerationOptions, on_text: Callable[[str], None] | None = None,
        history: list[tuple[str, str]] | None = None, stop: threading.Event | None = None,
        notes: list[str] | None = None, verdicts: list[dict] | None = None) -> dict:
    """Answer one question, streaming text to `on_text`; returns the answer with timings. `notes`:
    the concepts' facts, carried in their opening line (and guiding a text-only answer: note_guidance);
    `verdicts`: the recognizer's word on the photo (`recognize`), one grounding line
    each before the question."""
    start = time.perf_counter()
    first: list[float] = []

    def stream(text: str) -> None:
        if not first:
            first.append(time.perf_counter() - start)
        if on_text:
            on_text(text)

    lines = list(notes or []) + [v["line"] for v in verdicts or []]
    prompt = Prompt(with_identifiers(question, concepts), images, keys, concepts, list(history or []), lines)
    # asked whether a concept is here, the yes or no follows the fused recognizer (see VLM.generate)
    settled = [v["present"] for v in verdicts or [] if asks_if_present(question, v["concept"])]
    guidance = note_guidance(vlm, prompt)
    answer = vlm.generate(prompt, options.max_tokens, options.temperature, options.seed, stream, stop,
                          yes=settled[0] if len(settled) == 1 else None, **guidance)
    tokens = len(vlm.tokenizer.encode(answer, add_special_tokens=False))
    return {"answer": answer, "concepts": concepts, "model": vlm.ref, "verdicts": verdicts or [], "quoted_note": guidance.get("opening"),
            "timings": {"first_token_s": round(first[0], 4) if first else None,
                        "total_s": round(time.perf_counter() - start, 4), "tokens": tokens,
                        "compute": vlm.policy.summary()}}


@dataclass
class ChatSession:
    """A multi-turn conversation: history, the current photo, the loaded concepts."""

    vlm: VLM
    concepts: list[str]
    options: GenerationOptions
    images: list[Image.Image] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
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
                if name not in self.vlm.tokens:
                    self.vlm.tokens.load(self.registry.root / checkpoint["file"], name)
            except UserError as e:
                problems.append(str(e))
                continue
            self.concepts.append(name)
            self.notes += prompt_notes(self.registry, [name])
        return problems

    def set_image(self, path: Path) -> None:
        self.images, self.keys = open_images([path])
        self.history = []  # earlier turns talked about another photo (or none)

    def reset(self) -> None:
        self.images, self.keys, self.history = [], [], []

    def say(self, text: str, on_text: Callable[[str], None], stop: threading.Event | None = None) -> str:
        verdicts = recognize(self.registry, self.vlm, self.concepts, self.images, self.keys) if self.registry else []
        result = ask(self.vlm, self.concepts, text, self.images, self.keys, self.options, on_text, self.history, stop,
                     self.notes, verdicts)
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


SIGNALS = ("fused", "head", "tokens")
VERIFY = 32  # photos the language model checks per search, best head scores first


def find(registry: Registry, vlm: VLM | None, name: str, inputs: list[Path], threshold: float | None = None,
         on_progress: Callable[[int, int], None] | None = None, by: str = "fused", verify: int = VERIFY) -> dict:
    """P(the concept is in each photo) for every photo (recursive for folders), best first.

    `by`: `tokens` asks the language model about every photo; `head` scores cached image
    embeddings with the concept head (thousands per second); `fused` (default) scores all with the
    head, then has the language model verify the `verify` best and every photo near the head's
    threshold, and fuses both there. Photos it did not verify keep the head's score. `vlm` may be
    None for `head`."""
    if by not in SIGNALS:
        raise UserError(f"unknown signal --by {by!r}: use {', '.join(SIGNALS)}")
    if verify < 0:
        raise UserError(f"--verify {verify}: give how many photos the language model checks (0 or more)")
    concept = get_concept(registry, name)
    paths = expand_photo_paths(inputs)
    photos, skipped = read_for_find(paths, vlm, need_pixels=by == "tokens")
    recognizer = current_recognizer(registry, concept) if by != "tokens" else None
    thresholds = json.loads(concept["metrics"] or "{}").get("thresholds", {"tokens": concept["threshold"]})
    scores: dict[int, tuple[float, str]] = {}
    if recognizer is not None:
        from yollava_cli.learning.embeddings import embed_photos, load_embedder

        vectors = embed_photos(registry, load_embedder(recognizer.embedder),
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


NEAR = 0.25  # head scores this close to its threshold are verified too


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
    """The soft tokens' P(yes) for "is <name> in this photo?", in scoring batches."""
    question, out = score_question(name), []
    for start in range(0, len(photos), SCORE_BATCH):
        batch = photos[start : start + SCORE_BATCH]
        out += vlm.yes_probabilities([Prompt(question, [p["decode"]], [p["sha256"]], [name]) for p in batch])
        if on_progress:
            on_progress(min(start + SCORE_BATCH, len(photos)), len(photos))
    return out


def recognize(registry: Registry, vlm: VLM, concepts: list[str], images: list[Image.Image], keys: list[str]) -> list[dict]:
    """For one photo: whether each loaded concept is in it, by its fused recognizer, with the
    grounding line `ask` puts before the question (as RAP puts its retriever's finds), so "is <bo>
    here?" and "what is <bo> doing?" start from the right premise. Concepts without a head are
    left to the tokens alone."""
    if len(images) != 1:
        return []
    from yollava_cli.learning.embeddings import embed_photos, load_embedder
    from yollava_cli.learning.recognition import current

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
    from yollava_cli.learning.recognition import current

    recognizer = current(registry, concept)
    if recognizer is None:
        raise UserError(f"<{concept['name']}> has no concept head (trained before heads existed, or without an "
                        f"image embedder): retrain it with `yollava train {concept['name']}`, or use --by tokens")
    return recognizer


def explain(vlm: VLM, name: str, options: GenerationOptions,
            on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Ask the model what each latent token stands for (paper appendix K)."""
    k = vlm.tokens.latents(name)
    explanations = []
    for i in range(k):
        prompt = Prompt(f"In a few words, what does <{name}_{i}> describe about <{name}>?", concepts=[name])
        explanations.append({"token": f"<{name}_{i}>", "explanation": vlm.generate(prompt, options.max_tokens, options.temperature, options.seed)})
        if on_progress:
            on_progress(i + 1, k)
    return explanations
