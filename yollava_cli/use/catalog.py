"""What `yollava models` lists: one row per example model of each family and architecture yollava
runs, its rough memory under this machine's compute policy, whether this machine can hold it (with
the share of memory a model may take shown), and how far yollava has verified the family."""

import os

from yollava_cli.models import families
from yollava_cli.models.architectures import ARCHITECTURES, missing_modules

OVERHEAD = 1.2  # activations, the key-value cache and the feature cache's memory part, over the weights
HEADROOM = 0.8  # of the device's memory a model may take: the OS, the vision tower's peaks
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "4bit": 0.55, "8bit": 1.05}
REAL_WEIGHTS = "real weights: every verb, the evaluation"
TINY_ONLY = "tiny random models only (real weights untested)"
PLUGIN = "not by yollava (a plugin)"


def model_catalog(policy, note: str | None = None) -> dict:
    """Every example of every runnable family and architecture with its estimate here (`policy`:
    compute.Policy); `note` says why the policy is not the one asked for."""
    available = device_memory_gb(policy)
    usable = HEADROOM * available
    rows = [row(f.name, f.name, f.params_b, [], policy, usable, REAL_WEIGHTS if f.offline_default else PLUGIN)
            for f in families.families() if f is not families.TRANSFORMERS]
    rows += [row(a.name, example, params_b, missing_modules(a), policy, usable, TINY_ONLY)
             for a in ARCHITECTURES for example, params_b in a.examples]
    return {"compute": policy.summary(), "memory_gb": round(available, 1), "headroom": HEADROOM,
            "usable_gb": round(usable, 1), "note": note, "models": rows}


def row(name: str, example: str, params_b: float, missing: list[str], policy, usable: float, verified: str) -> dict:
    need = round(params_b * BYTES_PER_PARAM[weight_format(policy)] * OVERHEAD, 1)
    if missing:
        verdict = f"needs {' and '.join(missing)}"
    elif need > usable:
        verdict = f"too big: ~{need:g} GB > {usable:.1f} GB" + (" (try --quantize 4bit)" if policy.device == "cuda" and policy.quantize == "none" else "")
    else:
        verdict = "yes"
    return {"name": name, "example": example, "params_b": params_b, "memory_gb": need,
            "runs_here": verdict == "yes", "verdict": verdict, "verified": verified}


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
