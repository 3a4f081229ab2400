"""An embedder whose batches run on Ray workers: `pool add`, `find` and mining hand it batches of
photos as they hand a local embedder, and get the same vectors back."""

from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from yollava_cli.learning.embeddings import Embedder, PhotoFile
from yollava_cli.scale.driver import Workers
from yollava_cli.store.photos import BadPhoto, photo_bytes


class RayEmbedder(Embedder):
    """The workers' embedder, as seen from the driver (its id, size and duplicate cut are theirs)."""

    def __init__(self, workers: Workers):
        info = workers.info[0]
        self.workers, self.id, self.dim = workers, info["embedder"], info["dim"]
        self.duplicate_above, self.note = info["duplicate_above"], info["note"]

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        [vectors] = self.embed_batches([[lambda image=image: image for image in images]])
        return np.stack(vectors)

    def embed_batches(self, batches: Iterable[list[Callable[[], Image.Image | None]]]) -> Iterator[list[np.ndarray | None]]:
        for result in self.workers.ordered("embed", ([[payload(load) for load in loaders]] for loaders in batches)):
            yield result["vectors"]


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
