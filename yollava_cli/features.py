"""Image features by photo hash, in memory and on disk.

The vision tower and projector are frozen, so a photo's projected features never change for one
model fingerprint: training's epochs, validation, `find` and `eval` compute each photo once.
Callers may pass their own cache to a model (a benchmark passes `FeatureCache(None)` and clears
it to measure cold passes).
"""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class FeatureCache:
    """Features keyed by photo sha256 (or a derived view key); `folder` None keeps them in memory only."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.memory: dict[str, torch.Tensor] = {}

    def get(self, key: str | None) -> torch.Tensor | None:
        if key is None:
            return None
        if key not in self.memory and self.folder and (self.folder / f"{key}.safetensors").exists():
            self.memory[key] = load_file(str(self.folder / f"{key}.safetensors"))["features"]
        return self.memory.get(key)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def put(self, key: str | None, features: torch.Tensor) -> None:
        if key is None:
            return
        self.memory[key] = features
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{os.getpid()}.tmp"
            save_file({"features": features.contiguous()}, str(tmp))
            os.replace(tmp, self.folder / f"{key}.safetensors")

    def clear(self) -> None:
        """Forget what is in memory (the disk copies stay)."""
        self.memory.clear()
