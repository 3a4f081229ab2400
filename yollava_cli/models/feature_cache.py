"""Image features by photo hash, in memory and on disk, both bounded.

The vision tower and projector are frozen, so a photo's projected features never change for one
model fingerprint, precision and image-processor setting (the folder's name carries all three):
training's epochs, validation, `find` and `eval` compute each photo once. A real model's features
are large (LLaVA-1.5: 576 x 4096 values, 4.7 MB a photo in bf16), so the disk copy keeps the
least recently used ones under a cap (`feature_cache_mb` in config.json), and memory holds only
the most recent. A file that fails to load is recomputed. Callers may pass their own cache to a
model (a benchmark passes `FeatureCache(None)` and clears it to measure cold passes).
"""

import os
from collections import OrderedDict
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from yollava_cli.models.images import ImageInput

DEFAULT_DISK_MB = 4096
MEMORY_BYTES = 512 * 2**20


class FeatureCache:
    """Photos as the model sees them (`ImageInput`), keyed by photo sha256 (or a derived view key);
    `folder` None keeps them in memory only."""

    def __init__(self, folder: Path | None, disk_bytes: int = DEFAULT_DISK_MB * 2**20, memory_bytes: int = MEMORY_BYTES):
        self.folder = folder
        self.disk_bytes, self.memory_bytes = disk_bytes, memory_bytes
        self.memory: OrderedDict[str, ImageInput] = OrderedDict()
        self.in_memory = 0
        self.on_disk: dict[Path, int] | None = None  # file sizes, read from the folder at the first write
        self.disk_total = 0

    def get(self, key: str | None) -> ImageInput | None:
        if key is None:
            return None
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        path = self.folder / f"{key}.safetensors" if self.folder else None
        if path is None or not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                image = ImageInput.from_tensors({k: f.get_tensor(k) for k in f.keys()}, f.metadata())
        except (SafetensorError, OSError, KeyError):  # damaged on disk: computed again, and rewritten
            image = None
        if image is None:
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # the time of last use orders eviction
        self.remember(key, image)
        return image

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def put(self, key: str | None, image: ImageInput) -> None:
        if key is None:
            return
        self.remember(key, image)
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{key}.safetensors"
            tmp = self.folder / f".{key}.{os.getpid()}.tmp"
            save_file(image.tensors(), str(tmp), metadata={"replacement": image.replacement})
            os.replace(tmp, path)
            self.account(path)

    def remember(self, key: str, image: ImageInput) -> None:
        if key in self.memory:
            self.in_memory -= self.memory[key].nbytes
        self.memory[key] = image
        self.in_memory += image.nbytes
        while self.in_memory > self.memory_bytes and len(self.memory) > 1:
            _, old = self.memory.popitem(last=False)
            self.in_memory -= old.nbytes

    def account(self, path: Path) -> None:
        """Count the new file; past the cap, delete the least recently used files down to 90% of it."""
        if self.on_disk is None:
            self.on_disk = {p: p.stat().st_size for p in self.folder.glob("*.safetensors")}
            self.disk_total = sum(self.on_disk.values())
        self.disk_total += path.stat().st_size - self.on_disk.get(path, 0)
        self.on_disk[path] = path.stat().st_size
        if self.disk_total <= self.disk_bytes:
            return
        for old in sorted(self.on_disk, key=last_used):
            if self.disk_total <= 0.9 * self.disk_bytes:
                break
            if old != path:
                self.disk_total -= self.on_disk.pop(old)
                old.unlink(missing_ok=True)

    def disk_usage(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors")) if self.folder and self.folder.exists() else 0

    def clear(self) -> None:
        """Forget what is in memory (the disk copies stay)."""
        self.memory.clear()
        self.in_memory = 0


def last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed by another process meanwhile
        return 0.0
