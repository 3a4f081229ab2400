"""A toy recognition signal, the whole of it: how bright the photo is. Importing this module
registers it (tests/test_signals.py imports it, and removes it again after)."""

import numpy as np

from yollava_cli.learning.signals import Signal, register


class Brightness(Signal):
    name = "brightness"

    def score(self, vlm, concept, photos):
        images = [p.load() for p in photos]
        return [None if image is None else float(np.asarray(image.convert("L"), np.float32).mean() / 255) for image in images]


register(Brightness())
