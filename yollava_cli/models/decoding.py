"""Writing an answer: greedy or sampled decoding over a prefilled prompt, streamed as it goes, with
three optional ways to steer it (`Steering`) and two guards (a stop event, a loop detector).

The steering modes:
- `yes`: a recognizer's verdict on a yes/no question ("is <bo> in this photo?"). The answer opens
  with the verdict's yes or no word and the model writes everything after it: a small model reads a
  photo less well than the recognizer, and left to itself it may not answer yes or no at all.
- `opening`: text the answer starts with (an owner's note that answers the question, see
  `use.ask.quoted_note`); the model writes what follows, to the end of that paragraph (past a line
  break a small model drifts off the note).
- `contrast`: the same prompt, text only, without some context (the owner's notes): each token's
  logits move away from it, logits + CONTRAST_WEIGHT * (logits - logits_without), context-aware
  decoding (Shi et al. 2023); the concepts' names do not move. What the notes make likelier has to
  win over what the model says anyway. Costs a second pass per token.
"""

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from yollava_cli.models.prompts import Prompt, part

CONTRAST_WEIGHT = 0.5  # context-aware decoding's alpha (Shi et al. 2023, their default)
LOOP_NGRAM = 8  # an answer whose last 8 tokens already occurred in it is looping: stop it
YES_WORDS = ("Yes", "yes", " Yes", " yes", "YES")
NO_WORDS = ("No", "no", " No", " no", "NO")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, reproducible
    seed: int = 0


@dataclass(frozen=True)
class Steering:
    """How an answer is steered (module docstring); each field is off when None."""

    yes: bool | None = None
    opening: str | None = None
    contrast: Prompt | None = None


def generate(vlm, prompt: Prompt, sampling: Sampling = Sampling(), steering: Steering = Steering(),
             on_text: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> str:
    """The answer to `prompt`; `on_text` receives its text as it is generated, `stop` ends it early."""
    encoded = vlm.prompts.encode(prompt)
    opening_ids = vlm.prompts.text_ids(steering.opening) if steering.opening else []
    ids = torch.cat([encoded.input_ids, torch.tensor(opening_ids, dtype=torch.long)])[None].to(vlm.device)
    layout = vlm.layout(ids, torch.ones_like(ids), encoded.images)
    streamer = CallbackStreamer(vlm.tokenizer, on_text, opening_ids) if on_text else None
    scale = sampling.temperature if sampling.temperature > 0 else 1.0
    names = list(vlm.head.identifier_ids.values())
    torch.manual_seed(sampling.seed)
    options = {"do_sample": True, "temperature": sampling.temperature} if sampling.temperature > 0 else {"do_sample": False}
    with torch.no_grad(), vlm.conversation(encoded.concepts, bool(encoded.images)):
        # the prompt (all but its last token, no head) runs through oneDNN's GEMM; then one token
        # at a time, where ATen's own bf16 matrix-vector kernel decodes ~1.5x faster on CPU
        cache = vlm.prefill(ids[:, :-1], layout=part(layout, cols=slice(0, -1)), images=encoded.images)
        processors = [WholeNames(names, vlm), SettleVerdict(steering.yes, ids.shape[1], vlm)]
        if steering.contrast is not None:  # a text-only prompt, prefilled the same way
            other = torch.cat([vlm.prompts.encode(steering.contrast).input_ids,
                               torch.tensor(opening_ids, dtype=torch.long)])[None].to(vlm.device)
            processors.insert(0, Contrast(vlm.model, vlm.prefill(other[:, :-1]), other[:, -1:], names, scale))
        vlm.rope_deltas(layout, ids)  # set after the contrast prompt's prefill: the answer's positions
        with without_onednn():
            out = vlm.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache,
                max_new_tokens=sampling.max_new_tokens, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Stop(stop, ids.shape[1], bool(opening_ids), vlm.tokenizer)]),
                logits_processor=LogitsProcessorList(processors),
                pad_token_id=vlm.tokenizer.pad_token_id or vlm.tokenizer.eos_token_id, **options,
            )
    vlm.generated_tokens += out.shape[1] - ids.shape[1]
    return decode_answer(vlm.tokenizer, out[0, len(encoded.input_ids):].tolist()).strip()


class Stop(StoppingCriteria):
    """Ends the answer when asked (`event`), when it loops, or, after a given opening, at the end of
    its paragraph."""

    def __init__(self, event: threading.Event | None, prompt_length: int, opened: bool, tokenizer):
        self.event, self.prompt_length, self.opened, self.tokenizer = event, prompt_length, opened, tokenizer

    def __call__(self, input_ids, scores, **kwargs):
        done = bool(self.event and self.event.is_set()) or repeats_itself(input_ids[0, self.prompt_length:].tolist(), LOOP_NGRAM)
        done = done or (self.opened and "\n" in self.tokenizer.decode(input_ids[0, -1:]))
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


class SettleVerdict(LogitsProcessor):
    """The answer's first token is one of the verdict's words (the model's own choice among them)."""

    def __init__(self, yes: bool | None, prompt_length: int, vlm):
        self.yes, self.prompt_length = yes, prompt_length
        self.words = (vlm.word_ids(YES_WORDS) if yes else vlm.word_ids(NO_WORDS)) if yes is not None else []

    def __call__(self, input_ids, scores):
        if self.yes is None or input_ids.shape[1] != self.prompt_length:  # only the answer's first token
            return scores
        settled = torch.full_like(scores, float("-inf"))
        settled[:, self.words] = scores[:, self.words]
        return settled


class WholeNames(LogitsProcessor):
    """A concept's name is a whole word: what follows it starts a new one (or is punctuation), never
    a word piece glued on ("<dog>gy")."""

    def __init__(self, names: list[int], vlm):
        self.names, self.vlm = names, vlm  # vlm.word_pieces is read only once a name is generated

    def __call__(self, input_ids, scores):
        if int(input_ids[0, -1]) not in self.names:
            return scores
        return scores.index_fill(-1, self.vlm.word_pieces.to(scores.device), float("-inf"))


class Contrast(LogitsProcessor):
    """Context-aware decoding: moves each token's scores away from those of the prompt without the
    context, whose cache this keeps stepping beside the answer's."""

    def __init__(self, model, cache, unseen: torch.Tensor, names: list[int], scale: float):
        self.model, self.cache, self.unseen = model, cache, unseen  # the contrast prompt's cache, and its last token
        self.names, self.scale = names, scale

    def __call__(self, input_ids, scores):
        # positions given: a model that keeps the answer's position offset as state (M-RoPE) would
        # add it to this text-only prompt's too
        position = torch.full((1, 1), self.cache.get_seq_length(), device=input_ids.device)
        step = self.model(input_ids=self.unseen if self.unseen is not None else input_ids[:, -1:],
                          cache=self.cache, use_cache=True, position_ids=position)
        self.cache, self.unseen = step.cache, None
        # scores arrive divided by the temperature (generate's warpers run first)
        shift = torch.nan_to_num(scores - step.logits[:, -1].float() / self.scale, nan=0.0, posinf=0.0, neginf=0.0)
        shift[:, self.names] = 0  # every note names its concept: the name's rise says nothing
        return scores + CONTRAST_WEIGHT * shift


class CallbackStreamer:
    """Hands newly decoded text to a callback as tokens arrive (the prompt is skipped)."""

    def __init__(self, tokenizer, callback: Callable[[str], None], opening: list[int] | None = None):
        self.tokenizer, self.callback = tokenizer, callback
        self.ids: list[int] = list(opening or [])  # an answer's given opening streams first
        self.sent = 0
        self.prompt_seen = False
        if self.ids:
            self._emit(final=False)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = decode_answer(self.tokenizer, self.ids)
        if text.endswith("\ufffd") and not final:  # half of a multi-byte character: wait for the rest
            return
        if len(text) > self.sent:
            self.callback(text[self.sent:])
            self.sent = len(text)


def repeats_itself(tokens: list[int], n: int) -> bool:
    """Whether the last n tokens already occurred earlier in `tokens`. A small model answering
    greedily that repeats a phrase once repeats it until max tokens ("He's a <dog>. He's a <dog>...")."""
    if len(tokens) <= n:
        return False
    tail = tokens[-n:]
    return any(tokens[i : i + n] == tail for i in range(len(tokens) - n))


def decode_answer(tokenizer, ids: list[int]) -> str:
    """Decoded text, with a space before a concept token that follows a word or a punctuation mark: `<bo>` is
    an added token with no leading space of its own, so plain decode glues it on (`a<bo>`)."""
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    text, run = "", []
    for token in ids:
        if token in added:
            text += tokenizer.decode(run, skip_special_tokens=True)
            text += (" " if text and (text[-1].isalnum() or text[-1] in ".,;:!?") else "") + added[token]
            run = []
        else:
            run.append(token)
    return text + tokenizer.decode(run, skip_special_tokens=True)


@contextmanager
def without_onednn():
    """Switch oneDNN (mkldnn, a CPU library) off for a block, restoring it after. Not torch's own
    `mkldnn.flags`: that also sets TF32 and warns on every CPU-only torch."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
