"""Which base model a command uses, and loading it with its family's loader under this machine's
compute policy."""

import os

from yollava_cli.errors import UserError
from yollava_cli.models import families


def resolve_model_ref(explicit: str | None = None) -> str:
    """--model, else $YOLLAVA_MODEL, else config.json's "model", else the offline default."""
    from yollava_cli.config import MODEL_ENV, load_config

    return explicit or os.environ.get(MODEL_ENV) or load_config().get("model") or families.default_model()


def load_vlm(ref: str | None = None, quantize: str | None = None):
    """The base model `ref` names, ready for passes (a VLM); one-line errors when it cannot load.
    `quantize`: 4bit or 8bit weights (CUDA), else $YOLLAVA_QUANTIZE or the config's choice."""
    from yollava_cli.config import data_dir
    from yollava_cli.models.compute import current_policy
    from yollava_cli.models.cores import use_idle_cores
    from yollava_cli.models.vlm import VLM

    ref = resolve_model_ref(ref)
    family = families.for_ref(ref)
    cache = data_dir() / "models"
    use_idle_cores()
    policy = current_policy(quantize)
    if policy.quantize != "none" and not family.quantizable:
        raise UserError(f"{ref} is not quantized: drop --quantize (it is for 7B/13B models on a GPU)")
    model, processor = family.load(ref, cache, policy)
    families.check_contract(family, model, processor)
    return VLM(model, processor, ref, cache, policy=policy, family=family)
