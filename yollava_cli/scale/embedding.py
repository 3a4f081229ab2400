"""An embedder whose batches run on Ray workers: `pool add`, `find` and mining hand it batches of
photos as they hand a local embedder, and get the same vectors back."""

from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from yollava_cli.learning.embeddings import Embedder, PhotoFile
from yollava_cli.learning.executor import Env
from yollava_cli.reporting import Status, report
from yollava_cli.store.photos import BadPhoto, decode, photo_bytes


class RayEmbedder(Embedder):
    """The workers' embedder, as seen from the driver (its id, size and duplicate cut are theirs)."""

    def __init__(self, executor):
        info = executor.workers().info[0]
        self.executor, self.id, self.dim = executor, info["embedder"], info["dim"]
        self.duplicate_above, self.note = info["duplicate_above"], info["note"]
        if self.note:  # said where the embedder is loaded, as Env.embedder says it
            report(Status(self.note))

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        [vectors] = self.embed_batches([[lambda image=image: image for image in images]])
        return np.stack(vectors)

    def embed_batches(self, batches: Iterable[list[Callable[[], Image.Image | None]]]) -> Iterator[list[np.ndarray | None]]:
        calls = (([payload(load) for load in loaders],) for loaders in batches)
        yield from self.executor.ordered(embed_batch, calls)


def payload(load: Callable[[], Image.Image | None]):
    """What travels to a worker: a photo file's bytes (it decodes them as the driver would), else
    the decoded pixels; None for a file that cannot be read."""
    if isinstance(load, PhotoFile):
        try:
            return ("file", photo_bytes(load.path), load.max_side)
        except BadPhoto:
            return None
    image = load()
    return None if image is None else ("pixels", np.asarray(image))


def embed_batch(env: Env, photos: list) -> list[np.ndarray | None]:
    """A unit: one batch, ("file", bytes, max_side) decoded as the driver's photo intake would, or
    ("pixels", uint8 array); None (unreadable) gives None."""
    images = [open_payload(p) for p in photos]
    kept = [image for image in images if image is not None]
    vectors = iter(env.embedder.embed(kept) if kept else ())
    return [next(vectors) if image is not None else None for image in images]


def open_payload(payload) -> Image.Image | None:
    if payload is None:
        return None
    kind, data, *rest = payload
    if kind == "pixels":
        return Image.fromarray(data)
    try:
        return decode(data, rest[0])
    except BadPhoto:
        return None
