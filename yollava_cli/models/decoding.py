"""Writing an answer: greedy or sampled decoding over a prefilled prompt, streamed as it goes, with
three optional ways to steer it (`Steering`) and its guards: a stop event, no repeated n-gram (a
small model answering greedily that repeats a phrase once repeats it until max tokens), and an
answer cut short (max tokens) that ends at its last full sentence.

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
- `kept_from`: words naming what the owner's notes keep the thing from ("vacuum" in "is scared of
  the vacuum cleaner"): such a word may be written only in a sentence that already holds a word of
  caution (CAUTION). A small model turns the note into its opposite ("a dog loves chasing the vacuum
  cleaner. This could be a great idea for a toy").
"""

import re
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from yollava_cli.models.prompts import Prompt, part

CONTRAST_WEIGHT = 0.5  # context-aware decoding's alpha (Shi et al. 2023, their default)
LOOP_NGRAM = 8  # an answer whose last 8 tokens already occurred in it is looping: stop it
# a sentence ends at . ! ? (and any closing quote or bracket) before a space, or at a line break
SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n")
# words by which a sentence cautions ("is scared of", "keep him away from", "avoid")
CAUTION = re.compile(r"\b(scared|afraid|fears?|fearful|frighten\w*|terrif\w*|allerg\w*|hates?|dislikes?|avoid\w*|not|no|"
                     r"never|without|away|instead|careful|keep|stress\w*|anxi\w*|nervous|upset\w*)\b|n't\b", re.IGNORECASE)
YES_WORDS = ("Yes", "yes", " Yes", " yes", "YES")
NO_WORDS = ("No", "no", " No", " no", "NO")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, reproducible
    seed: int = 0


@dataclass(frozen=True)
class Guards:
    """What keeps an answer readable; bench/bench_answers.py measured these against the old ones
    (`Guards(0, 1.0, False)`: only the 8-token loop stop) on the shared subjects' questions."""

    no_repeat_ngram: int = 4  # no n tokens, nor n words, of the answer twice (0: off)
    repetition_penalty: float = 1.0  # CTRL's, on the answer's own tokens (1: off)
    whole_sentences: bool = True  # an answer cut short ends at its last full sentence
    no_stutter: int = 3  # no phrase of up to n words said twice in a row ("as as"; 0: off)
    name_penalty: float = 1.0  # nats off a concept's name per time the answer already said it (0: off)


@dataclass(frozen=True)
class Steering:
    """How an answer is steered (module docstring); each field is off when None."""

    yes: bool | None = None
    opening: str | None = None
    contrast: Prompt | None = None
    kept_from: tuple[str, ...] = ()


def generate(vlm, prompt: Prompt, sampling: Sampling = Sampling(), steering: Steering = Steering(),
             on_text: Callable[[str], None] | None = None, stop: threading.Event | None = None,
             guards: Guards = Guards()) -> str:
    """The answer to `prompt`; `on_text` receives its text as it is generated, `stop` ends it early."""
    encoded = vlm.prompts.encode(prompt)
    opening_ids = vlm.prompts.text_ids(steering.opening) if steering.opening else []
    ids = torch.cat([encoded.input_ids, torch.tensor(opening_ids, dtype=torch.long)])[None].to(vlm.device)
    layout = vlm.layout(ids, torch.ones_like(ids), encoded.images)
    streamer = CallbackStreamer(vlm.tokenizer, on_text, opening_ids, guards.whole_sentences) if on_text else None
    scale = sampling.temperature if sampling.temperature > 0 else 1.0
    names = list(vlm.head.identifier_ids.values())
    with torch.no_grad(), vlm.conversation(encoded.concepts, bool(encoded.images)):
        # the prompt (all but its last token, no head) runs through oneDNN's GEMM; then one token
        # at a time, where ATen's own bf16 matrix-vector kernel decodes ~1.5x faster on CPU
        cache = vlm.prefill(ids[:, :-1], layout=part(layout, cols=slice(0, -1)), images=encoded.images)
        start = ids.shape[1] - len(opening_ids)  # where the answer starts: an opening is its own
        processors = [WholeNames(names, vlm), SettleVerdict(steering.yes, ids.shape[1], vlm),
                      NoRepeats(start, guards.no_repeat_ngram, guards.repetition_penalty, names,
                                vlm.word_keys if guards.no_repeat_ngram or guards.no_stutter else None,
                                guards.no_stutter, guards.name_penalty)]
        if steering.kept_from:
            processors.append(Cautious(start, steering.kept_from, vlm.tokenizer))
        if steering.contrast is not None:  # a text-only prompt, prefilled the same way
            other = torch.cat([vlm.prompts.encode(steering.contrast).input_ids,
                               torch.tensor(opening_ids, dtype=torch.long)])[None].to(vlm.device)
            processors.insert(0, Contrast(vlm.model, vlm.prefill(other[:, :-1]), other[:, -1:], names, scale))
        if sampling.temperature > 0:  # sampled by the last processor; generate then takes its one token
            processors += [*warpers(vlm.model.generation_config, sampling.temperature), Draw(sampling.seed, vlm.head.identifier_ids)]
        vlm.rope_deltas(layout, ids)  # set after the contrast prompt's prefill: the answer's positions
        with without_onednn():
            out = vlm.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache,
                max_new_tokens=sampling.max_new_tokens, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Stop(stop, ids.shape[1], bool(opening_ids), vlm.tokenizer)]),
                logits_processor=LogitsProcessorList(processors),
                pad_token_id=vlm.tokenizer.pad_token_id or vlm.tokenizer.eos_token_id, do_sample=False,
            )
    vlm.generated_tokens += out.shape[1] - ids.shape[1]
    answer = out[0, len(encoded.input_ids):].tolist()
    text = decode_answer(vlm.tokenizer, answer)
    ended = not answer or (stop is not None and stop.is_set()) or answer[-1] in eos_ids(vlm) or (
        bool(opening_ids) and "\n" in vlm.tokenizer.decode(answer[-1:]))
    if guards.whole_sentences and not ended:  # cut short (max tokens, a loop): to its last sentence
        text = last_full_sentence(text)
    if streamer:
        streamer.finish(text)
    return text.strip()


def eos_ids(vlm) -> set[int]:
    """The tokens that end an answer (the generation config's, which may name several)."""
    configured = vlm.model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return {i for i in configured + [vlm.tokenizer.eos_token_id] if i is not None}


def last_full_sentence(text: str) -> str:
    """The text up to its last full sentence; text with no sentence end is kept and marked cut ("…")."""
    ends = [m.end() for m in SENTENCE_END.finditer(text + " ")]  # the text's own end counts as a space
    return text[: ends[-1]].rstrip() if ends else text.rstrip() + "…"


class Stop(StoppingCriteria):
    """Ends the answer when asked (`event`), when it loops, or, after a given opening, at the end of
    its paragraph."""

    def __init__(self, event: threading.Event | None, prompt_length: int, opened: bool, tokenizer):
        self.event, self.prompt_length, self.opened, self.tokenizer = event, prompt_length, opened, tokenizer

    def __call__(self, input_ids, scores, **kwargs):
        done = bool(self.event and self.event.is_set()) or repeats_itself(input_ids[0, self.prompt_length:].tolist(), LOOP_NGRAM)
        done = done or (self.opened and "\n" in self.tokenizer.decode(input_ids[0, -1:]))
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


def warpers(config, temperature: float) -> list[LogitsProcessor]:
    """What generate's sampling applies before its draw, from the model's generation config (with
    generate's own defaults: top-k 50, top-p 1)."""
    top_k = config.top_k if config.top_k is not None else 50
    top_p = config.top_p if config.top_p is not None else 1.0
    return ([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
            + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []) + ([MinPLogitsWarper(config.min_p)] if config.min_p else []))


class Draw(LogitsProcessor):
    """Samples the next token with the answer's own generator (seeded by it), and leaves only that
    token: no process-wide RNG is read or reseeded, so answers sampled side by side never share
    one. One uniform number a token, over the candidates in an order that does not depend on which
    other concepts are loaded (the vocabulary's own tokens by id, then concept names by name): a
    seed gives the same answer in a fresh `ask` as in a server holding many concepts."""

    def __init__(self, seed: int, identifiers: dict[str, int]):
        self.generator = torch.Generator().manual_seed(seed)
        self.names = {i: name for name, i in identifiers.items()}

    def __call__(self, input_ids, scores):
        finite = torch.isfinite(scores[0]).nonzero()[:, 0].tolist()
        order = sorted(finite, key=lambda i: (1, 0, self.names[i]) if i in self.names else (0, i, ""))
        chances = torch.softmax(scores[0, order].double(), -1).cumsum(0)
        u = torch.rand(1, generator=self.generator, dtype=torch.float64)
        pick = order[min(int(torch.searchsorted(chances, u)), len(order) - 1)]
        drawn = torch.full_like(scores, float("-inf"))
        drawn[:, pick] = 0
        return drawn


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


class NoRepeats(LogitsProcessor):
    """No n tokens of the answer twice: a token that would complete an n-gram the answer already
    holds is ruled out (no-repeat n-gram blocking, as `generate`'s own but over the answer alone: a
    fact from the prompt may be repeated). With n = 4 a name and the function words around it may
    come back ("<bo> is a ... <bo> is a"), only not with the same next word. With `penalty` > 1, each
    token the answer already holds is less likely (CTRL's repetition penalty: positive scores
    divided, negative multiplied), a concept's name exempt: it is the answer's subject. With `words`,
    n-grams of words are blocked too, whatever their case or hyphens ("The answer is not ... the
    answer is not", "with a built-in ... with a built in" are different tokens, the same words), and
    no phrase of up to `stutter` words follows itself in a sentence ("<bo>-friendly <bo>-friendly",
    "as as": shorter than an n-gram block can be without stopping a name's function words). Each
    time the answer has said a concept's name, the name loses `name_penalty` nats: its trained
    output row lifts it everywhere, and pocket crowded answers with it ("a <dog>-friendly <dog>
    food that is <dog> meat"); the first mention is free."""

    def __init__(self, start: int, n: int, penalty: float, names: list[int], words: "WordKeys | None" = None,
                 stutter: int = 0, name_penalty: float = 0.0):
        self.start, self.n, self.penalty, self.names, self.words, self.stutter = start, n, penalty, names, words, stutter
        self.name_penalty = name_penalty

    def __call__(self, input_ids, scores):
        answer = input_ids[0, self.start :].tolist()
        if self.name_penalty and (said := [name for name in self.names if name in answer]):
            counts = torch.tensor([answer.count(name) for name in said], dtype=scores.dtype, device=scores.device)
            index = torch.tensor(said, dtype=torch.long, device=scores.device)
            scores = scores.index_copy(-1, index, scores[:, index] - self.name_penalty * counts)
        if self.penalty != 1.0 and answer:
            seen = torch.tensor(sorted(set(answer) - set(self.names)), dtype=torch.long, device=scores.device)
            if len(seen):
                held = scores[:, seen]
                scores = scores.index_copy(-1, seen, torch.where(held > 0, held / self.penalty, held * self.penalty))
        banned = repeated_continuations(answer, self.n)
        if self.words is not None:
            keys = [key for key in map(self.words.key, answer) if key]
            for key in repeated_continuations(keys, self.n):
                banned |= self.words.ids.get(key, set())
            if self.stutter:
                banned |= self.words.stutter_continuations(answer, self.stutter)
        if banned:
            scores = scores.index_fill(-1, torch.tensor(sorted(banned), device=scores.device), float("-inf"))
        return scores


class Cautious(LogitsProcessor):
    """A word naming what a note keeps the thing from is written only in a sentence that already
    cautions (Steering.kept_from): elsewhere it is ruled out, in each case and with or without a
    space, singular or plural, where the tokenizer spells it as one token (a word in pieces is let
    through: ruling out its first piece, "Clean" of "Cleaner", would rule out other words)."""

    def __init__(self, start: int, words: tuple[str, ...], tokenizer):
        self.start, self.tokenizer = start, tokenizer
        forms = {case(form) for word in words for stem in {word, word.removesuffix("s")} for form in (stem, stem + "s")
                 for case in (str.lower, str.capitalize)}
        whole = [ids[0] for form in forms for space in ("", " ")
                 if len(ids := tokenizer.encode(f"{space}{form}", add_special_tokens=False)) == 1]
        self.banned = sorted(set(whole))

    def __call__(self, input_ids, scores):
        if not self.banned:
            return scores
        text = self.tokenizer.decode(input_ids[0, self.start :].tolist())
        sentence = SENTENCE_END.split(text)[-1]
        if CAUTION.search(sentence):
            return scores
        return scores.index_fill(-1, torch.tensor(self.banned, device=scores.device), float("-inf"))


class WordKeys:
    """Each token's text as a repeat reads it: lowercased letters, digits and a name's brackets
    ("" for punctuation and spaces, which are left out of word n-grams), and the tokens of each."""

    def __init__(self, tokenizer):
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.keys = [re.sub(r"[^0-9a-z<>_]", "", text.lower()) for text in texts]
        self.ids: dict[str, set[int]] = {}
        for i, key in enumerate(self.keys):
            self.ids.setdefault(key, set()).add(i)
        # a word starts at a space (byte-level BPE's "Ġ", SentencePiece's "▁") or a name; a sentence
        # ends at . ! or ?
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.starts = {i for i, (text, piece) in enumerate(zip(texts, pieces))
                       if text[:1].isspace() or str(piece)[:1] in ("Ġ", "▁", "<")}
        self.ends = {i for i, text in enumerate(texts) if re.search(r"[.!?]", text)}

    def key(self, token: int) -> str:
        return self.keys[token] if token < len(self.keys) else f"<{token}>"  # a token added since: its own word

    def starts_word(self, token: int) -> bool:
        return token in self.starts or token >= len(self.keys)

    def stutter_continuations(self, answer: list[int], n: int) -> set[int]:
        """The tokens that would end the answer's last sentence in a phrase of up to n words said
        twice in a row: a word that starts the repeat's last word, or a piece that completes it. A
        repeat split into several pieces is stopped at its last one. Numbers may repeat ("2 0 0 0")."""
        sentence = answer[max((i + 1 for i, t in enumerate(answer) if t in self.ends), default=0) :]
        words, boundary = [], True  # boundary: the next piece with letters starts a word
        for token in sentence:
            boundary = boundary or self.starts_word(token)
            if self.key(token):
                if boundary:
                    words.append(self.key(token))
                else:
                    words[-1] += self.key(token)
                boundary = False
        cases = [(words, "", None if boundary else True)]  # the next token starts a word (either kind after a space)
        if words and not boundary:
            cases.append((words[:-1], words[-1], False))  # or goes on with the last one
        banned = set()
        for before, partial, starting in cases:
            for word in repeated_next_words(before, n):
                if word.isdigit() or not word.startswith(partial) or word == partial:
                    continue
                rest = self.ids.get(word[len(partial) :], set())
                banned |= {t for t in rest if starting is None or self.starts_word(t) == starting}
        return banned


def repeated_next_words(words: list[str], n: int) -> set[str]:
    """The words that, appended, would end `words` in a phrase of up to n words said twice in a row."""
    return {words[-k] for k in range(1, n + 1)
            if len(words) >= 2 * k - 1 and words[len(words) - k + 1 :] == words[len(words) - 2 * k + 1 : len(words) - k]}


def repeated_continuations(tokens: list, n: int) -> set:
    """The tokens that, appended, would make the last n tokens an n-gram `tokens` already holds."""
    if n <= 0 or len(tokens) < n:
        return set()
    tail = tokens[len(tokens) - n + 1 :]
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i : i + n - 1] == tail}


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
    """Hands newly decoded text to a callback as tokens arrive (the prompt is skipped). With
    `whole_sentences`, text after the last sentence end is held back until the next one, or until
    `finish` says how the answer ends (an answer cut short drops its unfinished sentence)."""

    def __init__(self, tokenizer, callback: Callable[[str], None], opening: list[int] | None = None,
                 whole_sentences: bool = False):
        self.tokenizer, self.callback, self.whole_sentences = tokenizer, callback, whole_sentences
        self.ids: list[int] = list(opening or [])  # an answer's given opening streams first
        self.sent = 0
        self.prompt_seen = False
        if self.ids:
            self._emit(decode_answer(self.tokenizer, self.ids))

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        self._emit(decode_answer(self.tokenizer, self.ids))

    def end(self) -> None:
        """generate's own end: the rest is sent by `finish` (decoding.generate), or here when nothing will."""
        if not self.whole_sentences:
            self.finish(decode_answer(self.tokenizer, self.ids))

    def finish(self, text: str) -> None:
        """Sends what is left of the answer as it finally reads."""
        if len(text) > self.sent:
            self.callback(text[self.sent :])
            self.sent = len(text)

    def _emit(self, text: str) -> None:
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        if self.whole_sentences:
            ends = [m.end() for m in SENTENCE_END.finditer(text)]
            text = text[: ends[-1]] if ends else ""
        self.finish(text)


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


ONEDNN_LOCK = threading.Lock()
onednn_blocks, onednn_before = 0, True  # without_onednn blocks open now, and the switch before them


@contextmanager
def without_onednn():
    """Switch oneDNN (mkldnn, a CPU library) off for a block, restoring it after. Not torch's own
    `mkldnn.flags`: that also sets TF32 and warns on every CPU-only torch. The switch is the
    process's: blocks that overlap in two threads count as one, or the one that ends last would
    restore "off" and leave every later bf16 product on the slow path."""
    global onednn_blocks, onednn_before
    with ONEDNN_LOCK:
        if not onednn_blocks:
            onednn_before = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
        onednn_blocks += 1
    try:
        yield
    finally:
        with ONEDNN_LOCK:
            onednn_blocks -= 1
            if not onednn_blocks:
                torch.backends.mkldnn.enabled = onednn_before
