"""Prompt to tokens: the model's chat template, the concept prompt, image placeholders expanded to
their feature counts, and batches padded for one pass."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from yollava_cli.models.concept_tokens import ConceptTokens


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
    features: list[torch.Tensor]  # one (n_tokens, hidden) per image, in order
    concepts: list[str] = field(default_factory=list)  # the concepts the prompt opens with


class PromptEncoder:
    """Renders and tokenizes prompts for one processor; `image_features(images, keys)` supplies the
    features each image placeholder expands to."""

    def __init__(self, processor, tokens: ConceptTokens, image_token_id: int,
                 image_features: Callable[[list, list], list[torch.Tensor]]):
        self.processor, self.tokenizer, self.tokens = processor, processor.tokenizer, tokens
        self.image_token_id, self.image_features = image_token_id, image_features

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

    def encode(self, prompt: Prompt, answer: str | None = None) -> Encoded:
        """Token ids with each image placeholder expanded to its feature count; labels cover only
        the answer (everything after the generation prompt), whatever the template's separators."""
        features = self.image_features(prompt.images, prompt.image_keys)
        question_ids = self.tokenize(self.render(prompt))
        ids = question_ids if answer is None else self.tokenize(self.render(prompt, answer))
        if ids[: len(question_ids)] != question_ids:
            raise RuntimeError("chat template renders the prompt differently with an answer")
        labels = [-100] * len(question_ids) + ids[len(question_ids):]
        counts = iter(f.shape[0] for f in features)
        expanded_ids, expanded_labels = [], []
        for token, label in zip(ids, labels):
            n = next(counts) if token == self.image_token_id else 1
            expanded_ids += [token] * n
            expanded_labels += [label] * n
        return Encoded(torch.tensor(expanded_ids), torch.tensor(expanded_labels), features, list(prompt.concepts))

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
        features = [f for e in batch for f in e.features]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "features": features,
                "concepts": sorted({c for e in batch for c in e.concepts}),
                "photo_rows": torch.tensor([bool(e.features) for e in batch])}
