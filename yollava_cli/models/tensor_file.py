"""The one way yollava writes tensors: a safetensors file whose JSON metadata sits under the key
"yollava", written atomically in one step (the bytes built in memory, then one atomic replace).
`CheckpointMeta` is a concept checkpoint's metadata: which rows these are and which base model
they belong to; everything else about the run (settings, data hash, metrics, the concept head's
settings, where an import came from) rides beside those four keys, as it always has on disk."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from yollava_cli.store.fileio import atomic_write_bytes

META_KEY = "yollava"


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
    def from_json(cls, data: dict) -> "CheckpointMeta":
        fixed = ("name", "k", "base_model", "base_fingerprint")
        return cls(*(data[key] for key in fixed), {k: v for k, v in data.items() if k not in fixed})


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `tensors` with `meta` as one atomic file: a reader never sees half of it."""
    data = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def read_tensors(path: Path, names: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The file's tensors (those in `names`, or all) and its metadata ({} when it has none)."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
        return {k: f.get_tensor(k) for k in (names if names is not None else f.keys())}, meta
