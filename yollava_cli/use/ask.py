"""One answer about your concepts: the prompt (concept prompts, the owner's notes, the recognizer's
verdict on the photo), how the notes steer a text-only answer, and the answer streamed with its
timings."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from yollava_cli.learning.synthesis import asks_if_present
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM

# how much more likely a note must be as this question's answer than as an answer to "tell me
# something" to be quoted: e^5, ~150x (set on the 20 shared subjects: docs/results.md)
QUOTE_NATS = 5.0


def with_identifiers(question: str, concepts: list[str]) -> str:
    """`ask bo "what should I buy him?"` is about <bo> even when the question does not say so."""
    missing = [f"<{n}>" for n in concepts if f"<{n}>" not in question]
    return f"About {' and '.join(missing)}: {question}" if missing else question


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
