"""What `yollava models` lists: the families and architectures yollava runs, example model ids,
their rough memory under this machine's compute policy, and whether this machine can hold them."""

import os

from yollava_cli.models import families
from yollava_cli.models.architectures import ARCHITECTURES, missing_modules

OVERHEAD = 1.2  # activations, the key-value cache and the feature cache's memory part, over the weights
HEADROOM = 0.8  # of the device's memory a model may take: the OS, the vision tower's peaks
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit": 0.55, "8bit": 1.05}


def model_catalog(policy) -> dict:
    """Every runnable family and architecture with its estimate here (`policy`: compute.Policy), for
    its smallest example."""
    available = device_memory_gb(policy)
    rows = [row(f.name, f.summary, [f.name], f.params_b, [], policy, available)
            for f in families.families() if f is not families.TRANSFORMERS]
    rows += [row(a.name, f"transformers model type {', '.join(a.model_types)}", list(a.examples), a.params_b,
                 missing_modules(a), policy, available) for a in ARCHITECTURES]
    return {"compute": policy.summary(), "memory_gb": round(available, 1), "models": rows}


def row(name: str, summary: str, examples: list[str], params_b: float, missing: list[str], policy, available: float) -> dict:
    need = round(params_b * BYTES_PER_PARAM[weight_format(policy)] * OVERHEAD, 1)
    if missing:
        verdict = f"needs {' and '.join(missing)}"
    elif need > HEADROOM * available:
        verdict = f"too big: ~{need:g} GB of {available:.0f} GB" + (" (try --quantize 4bit)" if policy.device == "cuda" and policy.quantize == "none" else "")
    else:
        verdict = "yes"
    return {"name": name, "summary": summary, "examples": examples, "params_b": params_b,
            "memory_gb": need, "runs_here": verdict == "yes", "verdict": verdict}


def weight_format(policy) -> str:
    """What each weight costs at its peak here: on CPU fp32, the dtype weights load in (a bf16
    policy casts the language model's matrices after loading); on a GPU the policy's precision,
    or its quantization."""
    if policy.device == "cpu":
        return "fp32"
    return policy.quantize if policy.quantize != "none" else policy.precision


def device_memory_gb(policy) -> float:
    """The GPU's memory under CUDA; otherwise the machine's RAM (Apple's GPU shares it)."""
    if policy.device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**30
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
