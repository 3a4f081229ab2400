"""The one way yollava writes tensors: a safetensors file whose JSON metadata sits under the key
"yollava", written atomically in one step (the bytes built in memory, then one atomic replace).
`CheckpointMeta` is a concept checkpoint's metadata: which rows these are and which base model
they belong to; everything else about the run (settings, data hash, metrics, the concept head's
settings, where an import came from) rides beside those four keys, as it always has on disk.
Read back, the metadata is checked against `CheckpointFields` (a damaged or foreign file is a
one-line error naming it and the key), the concept head's settings too when it has them."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import save

from yollava_cli.errors import UserError
from yollava_cli.schema import OpenSchema, Text, parse_json, rule, validate
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.schemas import ConceptName, Fingerprint

META_KEY = "yollava"


def fusion_weights(value: Any) -> Any:
    """The fusion's weights: finite numbers by name, "head" and "bias" among them, or the list of
    exactly 3 that files written before signals had names hold."""
    def number(w: Any) -> bool:
        return isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)

    if isinstance(value, list) and len(value) == 3 and all(map(number, value)):
        return value
    if isinstance(value, dict) and {"head", "bias"} <= set(value) and all(k and number(w) for k, w in value.items()):
        return value
    raise UserError("must be the weights by name, with \"head\" and \"bias\" (numbers), or a list of numbers, exactly 3")


class RecognizerMeta(OpenSchema):
    """The concept head's settings beside its tensors (learning.recognition): the embedder it
    scores with and the fusion's weights by name ("head", each signal's, "bias"); files written
    before signals had names list exactly three (head logit, token vote, bias)."""

    embedder: Text
    fusion: Annotated[Any, rule(fusion_weights)]
    fusion_version: int | None = None


class CheckpointFields(OpenSchema):
    """A concept checkpoint's metadata as read back: the four keys every checkpoint has, the head's
    settings when it has a head; other keys (config, metrics, best, ...) ride along unchecked."""

    name: ConceptName
    k: Annotated[int, Field(ge=1)]
    base_model: Text
    base_fingerprint: Fingerprint
    recognizer: RecognizerMeta | None = None


@dataclass
class CheckpointMeta:
    name: str
    k: int
    base_model: str
    base_fingerprint: str
    extra: dict = field(default_factory=dict)  # config, data_hash, metrics, recognizer, imported_from...

    def to_json(self) -> dict:
        return {**self.extra, "name": self.name, "k": self.k, "base_model": self.base_model,
                "base_fingerprint": self.base_fingerprint}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "CheckpointMeta":
        """Metadata read from the checkpoint `where`, checked: a one-line error names it and the key."""
        checked = validate(data, CheckpointFields, where)
        fixed = ("name", "k", "base_model", "base_fingerprint")
        return cls(*(getattr(checked, key) for key in fixed), {k: v for k, v in data.items() if k not in fixed})


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `tensors` with `meta` as one atomic file: a reader never sees half of it."""
    data = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def read_tensors(path: Path, names: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The file's tensors (those in `names`, or all) and its metadata ({} when it has none)."""
    with safe_open(str(path), "pt") as f:
        meta = file_meta(f, path)
        return {k: f.get_tensor(k) for k in (names if names is not None else f.keys())}, meta


def file_meta(f, path: Path) -> dict[str, Any]:
    """The metadata of an open safetensors file: a JSON object, else a one-line error naming it."""
    return parse_json((f.metadata() or {}).get(META_KEY, "{}").encode(), dict[str, Any], f"{path}: metadata")
