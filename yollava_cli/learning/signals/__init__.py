"""Recognition signals: the ways to score "is the concept in this photo?" that the fused
recognizer adds to the concept head's logit. Each is one module that registers a `Signal`: a
module of this package, or an installed package's through the `yollava.signals` entry-point group.
Nothing else names a signal: training fits a weight for every registered signal (stored by name
in the concept's checkpoint, learning.recognition), `find --by fused` and `ask` fuse those a
concept's fusion names, `find --by NAME` ranks by one alone, and its cut is calibrated under
its name.
"""

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

ENTRY_POINTS = "yollava.signals"
RESERVED = ("head", "fused", "bias")  # the head is the fusion's base, "fused" the fusion, "bias" its constant

SIGNALS: dict[str, "Signal"] = {}


@dataclass(frozen=True)
class Photo:
    """A photo a signal scores: `key` (its sha256, or a training view's key) names it in caches,
    `load()` decodes it (None once it no longer reads), `path` is its file where it has one."""

    key: str
    load: Callable
    path: Path | None = None


class Signal:
    """One way to score a photo for a concept. `score` gives P(the concept is in it) per photo (None
    for one that no longer reads); `vote` turns those into the fusion's input, bounded so that one
    confident answer on an odd photo cannot outweigh everything else in the fit (0: no opinion)."""

    name = ""

    def score(self, vlm, concept: str, photos: list[Photo]) -> list[float | None]:
        raise NotImplementedError

    def vote(self, probabilities) -> np.ndarray:
        return 2 * np.asarray(probabilities, dtype=np.float64) - 1


def register(signal: Signal) -> Signal:
    """Make `signal` known by its name; a second signal of the same name is refused."""
    if not signal.name or signal.name in RESERVED:
        raise ValueError(f"a recognition signal cannot be named {signal.name!r}")
    if signal.name in SIGNALS and type(SIGNALS[signal.name]) is not type(signal):
        raise ValueError(f"two recognition signals are named {signal.name!r}")
    SIGNALS[signal.name] = signal
    return signal


@cache
def _discover() -> None:
    """Import this package's signal modules, then installed plugins' (each registers itself)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        entry.load()


def registered() -> dict[str, Signal]:
    """Every signal, in the order registered (the shipped ones first)."""
    _discover()
    return dict(SIGNALS)


def scores(names: list[str], vlm, concept: str, photos: list[Photo], known: dict[str, list] | None = None) -> dict[str, list[float | None]]:
    """Each named signal's probabilities for `photos`: those in `known` as given, the others scored."""
    signals, known = registered(), known or {}
    return {name: known[name] if name in known else signals[name].score(vlm, concept, photos)
            for name in names}
