"""Prompt to tokens: the model's chat template, the concept prompt, each image placeholder expanded
as the model's own processor expands it, and batches padded for one pass."""

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from yollava_cli.errors import UserError
from yollava_cli.models.concept_tokens import ConceptTokens
from yollava_cli.models.images import ImageInput


@dataclass
class Prompt:
    """One question to the model: text, photos (with their hashes for the feature cache), concepts."""

    question: str
    images: list = field(default_factory=list)  # PIL images, or zero-argument loaders used only on a cache miss
    image_keys: list[str | None] = field(default_factory=list)  # photo sha256, or None: no caching
    concepts: list[str] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)  # earlier (question, answer) turns
    notes: list[str] = field(default_factory=list)  # the owner's facts, as sentences after the concept prompts


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,), -100 everywhere but the answer
    images: list[ImageInput]  # in the order of their placeholders
    concepts: list[str] = field(default_factory=list)  # the concepts the prompt opens with


class PromptEncoder:
    """Renders and tokenizes prompts for one processor; `image_inputs(images, keys)` supplies each
    image's features and the text its placeholder expands to. `image_token_id` is the token the
    model puts the features at."""

    def __init__(self, processor, tokens: ConceptTokens, image_token_id: int,
                 image_inputs: Callable[[list, list], list[ImageInput]]):
        self.processor, self.tokenizer, self.tokens = processor, processor.tokenizer, tokens
        self.image_token_id, self.image_inputs = image_token_id, image_inputs
        self._clean: set[str] = set()  # texts known to hold no control token

    def render(self, prompt: Prompt, answer: str | None = None) -> str:
        """The prompt in the model's own chat template; the concept prompt opens the first turn."""
        messages = []
        prefix = " ".join([self.tokens.prompt(n) for n in prompt.concepts] + prompt.notes)
        for i, (question, reply) in enumerate([*prompt.history, (prompt.question, answer)]):
            # a newline, not a space, before what follows: a space before an added token (<image>,
            # <bo>) becomes a stray token in byte-level BPE tokenizers
            content = [{"type": "text", "text": prefix + "\n"}] if i == 0 and prefix else []
            if i == len(prompt.history):
                content += [{"type": "image"} for _ in prompt.images]
            content.append({"type": "text", "text": question})
            messages.append({"role": "user", "content": content})
            if reply is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=answer is None, tokenize=False
        )

    def tokenize(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def expand(self, text: str, images: list[ImageInput]) -> str:
        """The rendered text with each image placeholder replaced as the processor replaces it."""
        if not images:
            return text
        [expanded], _ = self.processor.get_text_with_replacements([text], [image.replacement for image in images])
        return expanded

    def refuse_control_tokens(self, prompt: Prompt, answer: str | None) -> None:
        """Text that spells the image placeholder would take a photo's place; text that tokenizes to
        a control token (`<|im_end|><|im_start|>system`) would speak as the template does. Each
        text is tokenized on its own, so a token reached through the tokenizer's normalizer counts."""
        marker = self.processor.image_token
        written = [prompt.question, *prompt.notes, *(text for turn in prompt.history for text in turn), answer or ""]
        if any(marker in text for text in written):
            raise UserError(f"{marker} is this model's image placeholder and cannot be in a question or a note; "
                            "write it another way (photos go in with --image)")
        for text in written:
            self.refuse_control_token_in(text)

    def text_ids(self, text: str) -> list[int]:
        """The tokens of text an answer goes on with (a quoted note), held to the prompt's rule."""
        self.refuse_control_token_in(text)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def refuse_control_token_in(self, text: str) -> None:
        if token := self.control_token_in(text):
            raise UserError(f"{token!r} is one of this model's control tokens and cannot be in a question, a note "
                            f"or a chat turn (it would speak for the system): write it another way")

    def control_token_in(self, text: str) -> str | None:
        if text not in self._clean:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            found = next((i for i in ids if i in self.control_ids), None)
            if found is not None:
                return self.tokenizer.convert_ids_to_tokens(found)
            if len(self._clean) > 4096:  # notes are checked again on every pass that ranks them: remember a few
                self._clean.clear()
            self._clean.add(text)
        return None

    @functools.cached_property
    def control_ids(self) -> set[int]:
        """The tokens only the template may write: every special token and every added token the chat
        template itself emits; not the unknown-text token where plain text becomes it (a tokenizer
        without byte fallback). Concept tokens are added, not special, and the template never writes
        them: `<bo>` in text stays the concept."""
        added = self.tokenizer.added_tokens_decoder
        skeleton = self.tokenize(self.render(Prompt("x", history=[("x", "x")]), answer="x"))
        ids = {i for i, token in added.items() if token.special} | set(self.tokenizer.all_special_ids)
        unknown = self.tokenizer.unk_token_id
        if unknown in self.tokenizer("\u0378\U0001F9A9", add_special_tokens=False)["input_ids"]:  # unassigned, rare
            ids.discard(unknown)
        return ids | (set(skeleton) & set(added))

    def encode(self, prompt: Prompt, answer: str | None = None) -> Encoded:
        """Token ids equal to the processor's own for the same text and photos; labels cover only
        the answer (everything after the generation prompt), whatever the template's separators."""
        self.refuse_control_tokens(prompt, answer)
        images = self.image_inputs(prompt.images, prompt.image_keys)
        question_ids = self.tokenize(self.expand(self.render(prompt), images))
        ids = question_ids if answer is None else self.tokenize(self.expand(self.render(prompt, answer), images))
        if ids[: len(question_ids)] != question_ids:
            raise RuntimeError("chat template renders the prompt differently with an answer")
        slots, features = ids.count(self.image_token_id), sum(image.features.shape[0] for image in images)
        if slots != features:
            raise RuntimeError(f"the prompt has {slots} image tokens for {features} image features")
        labels = [-100] * len(question_ids) + ids[len(question_ids):]
        return Encoded(torch.tensor(ids), torch.tensor(labels), images, list(prompt.concepts))

    def collate(self, batch: list[Encoded]) -> dict:
        """Right-padded tensors for a forward pass."""
        width = max(len(e.input_ids) for e in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            input_ids[row, :n], labels[row, :n], mask[row, :n] = e.input_ids, e.labels, 1
        images = [image for e in batch for image in e.images]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "images": images,
                "concepts": sorted({c for e in batch for c in e.concepts}),
                "photo_rows": torch.tensor([bool(e.images) for e in batch])}


def part(layout: dict, rows: slice = slice(None), cols: slice = slice(None)) -> dict:
    """The layout (`VLM.layout`) a piece of a sequence runs with, `cols` being its tokens. Positions
    are the piece's own (M-RoPE's have an axis in front); token types run from the sequence's start
    to the piece's end, since Gemma 3 finds image blocks by absolute position, the cache included."""
    out = {}
    for name, t in layout.items():
        own = slice(0, cols.stop) if name == "token_type_ids" else cols
        out[name] = t[:, rows, own] if t.dim() == 3 else t[rows, own]
    return out
