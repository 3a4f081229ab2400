"""Concept token rows beside a frozen model: the only weights yollava trains.

Concept tokens live in two small wrappers around the frozen input embedding and output head
(`ConceptEmbedding`, `ConceptHead`): each concept owns a (k+1, hidden) table of input rows and one
output row for its identifier. So several concepts can be loaded at once, unloading is dropping a
table, AdamW's weight decay can never touch a base row, and models that tie input and output
embeddings (SmolLM2) need no untying: the identifier simply gets its own output row, as the paper
trains it. `ConceptTokens` is the narrow interface the rest of the tool uses.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from yollava_cli.errors import UserError
from yollava_cli.models.tensor_file import CheckpointMeta, read_tensors, write_tensors


def token_names(name: str, k: int) -> list[str]:
    """The identifier `<bo>` then k latent tokens `<bo_0>`...; unique per concept name."""
    return [f"<{name}>"] + [f"<{name}_{i}>" for i in range(k)]


def concept_prompt(name: str, k: int) -> str:
    """`<bo> is <bo_0><bo_1>...<bo_15>.`, the personal prompt the paper prepends."""
    identifier, *latents = token_names(name, k)
    return f"{identifier} is {''.join(latents)}."


class ConceptEmbedding(torch.nn.Module):
    """The frozen input embedding, with concept token rows looked up from their own tables. The rows
    live where the embedding's weights live; an embedding that scales its output (Gemma 3: by
    sqrt(hidden)) scales theirs alike, so a new concept starts at the scale of the word it copies."""

    def __init__(self, base: torch.nn.Embedding):
        super().__init__()
        self.base = base
        self.tables = torch.nn.ParameterDict()
        self.slot: torch.Tensor | None = None  # token id -> row in the concatenated tables, or -1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.base.num_embeddings - 1))
        if self.slot is None or not len(self.tables):
            return out
        slot = self.slot[ids]
        if not bool((slot >= 0).any()):
            return out
        table = torch.cat(list(self.tables.values())).to(out.dtype)
        scale = getattr(self.base, "embed_scale", None)
        if scale is not None:
            table = table * scale.to(out.dtype)
        return torch.where((slot >= 0).unsqueeze(-1), table[slot.clamp(min=0)], out)


class ConceptHead(torch.nn.Module):
    """The frozen output head, fitted to the tokenizer's size: identifiers get their own trainable
    row; latent tokens, the image placeholder and padding rows can never be generated."""

    def __init__(self, base: torch.nn.Module, width: int, blocked: list[int]):
        super().__init__()
        self.base = base
        self.width = width
        self.rows = torch.nn.ParameterDict()
        self.blocked = set(blocked)
        self.identifier_ids: dict[str, int] = {}
        # Concepts this pass may generate: those in the conversation. A loaded concept that is not
        # in it must never be said (its trained row otherwise competes with ordinary words).
        self.active: set[str] = set()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)[..., : self.width]  # rows past the tokenizer are padding, not tokens
        if logits.shape[-1] < self.width:
            logits = F.pad(logits, (0, self.width - logits.shape[-1]), value=float("-inf"))
        block = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        block[list(self.blocked)] = True
        block[[i for n, i in self.identifier_ids.items() if n not in self.active]] = True
        logits = logits.masked_fill(block, float("-inf"))
        names = [n for n in self.rows if n in self.active]
        if names:
            ids = torch.tensor([self.identifier_ids[n] for n in names], device=logits.device)
            rows = torch.stack([self.rows[n] for n in names]).to(hidden.dtype)
            logits = logits.index_copy(-1, ids, (hidden @ rows.T).to(logits.dtype))
        return logits


class ConceptTokens:
    """The loaded concepts' rows: add (new or saved), remove, read, save, load. `name in tokens`
    says whether a concept is loaded; `tokens.latents(name)` how many latent tokens it has."""

    def __init__(self, tokenizer, embedding: ConceptEmbedding, head: ConceptHead, device, fingerprint: str, ref: str):
        self.tokenizer, self.embedding, self.head, self.device = tokenizer, embedding, head, device
        self.fingerprint, self.ref = fingerprint, ref
        self._latents: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._latents

    def __iter__(self):
        return iter(list(self._latents))

    def latents(self, name: str) -> int:
        return self._latents[name]

    def prompt(self, name: str) -> str:
        return concept_prompt(name, self._latents[name])

    def add(self, name: str, k: int, input_rows: torch.Tensor | None = None,
            output_row: torch.Tensor | None = None, seed: int = 0, init_word: str | None = None) -> list[int]:
        """Load (or replace) a concept's k+1 token rows. New rows start near the word 'thing'; with
        `init_word` the identifier starts at that word (textual inversion's initializer token), so
        "Is <bo> in this photo?" already means "is a dog in it" before the first step."""
        names = token_names(name, k)
        vocab = self.tokenizer.get_vocab()  # builds a dict of the whole vocabulary: ~25 ms for a 49k-token one
        missing = [t for t in names if t not in vocab]
        if missing:
            self.tokenizer.add_tokens(missing)
            self.head.width = len(self.tokenizer)
        ids = self.tokenizer.convert_tokens_to_ids(names)
        if input_rows is None:
            input_rows = self.starting_rows(k, seed, init_word)
        if output_row is None:
            output_row = input_rows[0].clone()
        width = self.embedding.base.weight.shape[1]
        if tuple(input_rows.shape) != (k + 1, width) or tuple(output_row.shape) != (width,):
            raise UserError(
                f"concept <{name}> has rows of shape {tuple(input_rows.shape)}, this model needs "
                f"({k + 1}, {width}): it was made for another base model"
            )
        self.embedding.tables[name] = torch.nn.Parameter(input_rows.to(self.device, torch.float32))
        self.head.rows[name] = torch.nn.Parameter(output_row.to(self.device, torch.float32))
        self.head.identifier_ids[name] = ids[0]
        self.head.blocked.update(ids[1:])
        self._latents[name] = k
        self._reindex()
        return ids

    def starting_rows(self, k: int, seed: int = 0, init_word: str | None = None) -> torch.Tensor:
        """The k+1 input rows a new concept starts from (`add`): the word 'thing', a little apart
        (seeded noise); with `init_word` the identifier starts at that word."""
        generator = torch.Generator().manual_seed(seed)
        start = self.word_embedding("thing")
        rows = start + torch.randn(k + 1, start.shape[0], generator=generator) * start.std() * 0.1
        if init_word:
            rows[0] = self.word_embedding(init_word)
        return rows

    def word_embedding(self, text: str) -> torch.Tensor:
        """The mean input embedding of a word's tokens (as it reads mid-sentence, after a space)."""
        base = self.embedding.base.weight
        ids = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False) or list(range(base.shape[0]))
        return base[ids].mean(0).float().cpu()

    def remove(self, name: str) -> None:
        del self.embedding.tables[name], self.head.rows[name], self.head.identifier_ids[name], self._latents[name]
        self._reindex()

    def _reindex(self) -> None:
        slot = torch.full((len(self.tokenizer),), -1, dtype=torch.long, device=self.device)
        offset = 0
        for name in self.embedding.tables:
            ids = self.tokenizer.convert_tokens_to_ids(token_names(name, self._latents[name]))
            slot[ids] = torch.arange(offset, offset + len(ids), device=self.device)
            offset += len(ids)
        self.embedding.slot = slot

    def parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The only tensors training may change: the concept's input rows and identifier output row."""
        return [self.embedding.tables[name], self.head.rows[name]]

    def rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A detached copy of the concept's input rows and output row, for `add` to restore."""
        return self.embedding.tables[name].detach().cpu().clone(), self.head.rows[name].detach().cpu().clone()

    def save(self, name: str, path: Path, metadata: dict) -> None:
        """Write the concept's rows as safetensors (atomically), with the base fingerprint."""
        input_rows, output_row = self.rows(name)
        meta = CheckpointMeta(name, self._latents[name], self.ref, self.fingerprint, metadata)
        write_tensors(path, {"input_rows": input_rows, "output_row": output_row}, meta.to_json())

    def load(self, path: Path, name: str | None = None) -> dict:
        """Load rows written by `save`; refuses a concept trained on another base model."""
        tensors, meta = read_concept_file(path)
        if meta["base_fingerprint"] != self.fingerprint:
            raise UserError(
                f"{path}: concept <{meta['name']}> was trained on base model {meta['base_model']!r} "
                f"({meta['base_fingerprint']}), not on {self.ref!r} ({self.fingerprint}); "
                f"use --model {meta['base_model']} or retrain it on this model"
            )
        self.add(name or meta["name"], meta["k"], tensors["input_rows"], tensors["output_row"])
        return meta


def read_concept_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a concept checkpoint, or a one-line error."""
    try:
        tensors, meta = read_tensors(path, ("input_rows", "output_row"))
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as e:
        raise UserError(f"{path}: not a yollava concept checkpoint ({e})") from None
    meta = CheckpointMeta.from_json(meta, str(path))
    rows, head = tensors["input_rows"], tensors["output_row"]
    if rows.ndim != 2 or rows.shape[0] != meta.k + 1 or tuple(head.shape) != (rows.shape[1],):
        raise UserError(f"{path}: token rows have shapes {tuple(rows.shape)} / {tuple(head.shape)}, "
                        f"not ({meta.k + 1}, H) / (H,) for k={meta.k}: the file is damaged")
    return tensors, meta.to_json()
