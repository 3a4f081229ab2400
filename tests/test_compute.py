"""The compute policy: device and precision chosen from fake capability reports, the overrides, and
the two CPU paths giving the same verdicts on a tiny model."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import invoke
from tiny import tiny_llava

from yollava_cli.errors import UserError
from yollava_cli.models.compute import Capability, Policy, choose, cpu_info, detect
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM

ZEN3 = Capability(cpu_model="AMD EPYC 7B13", cpu_flags=("avx", "avx2", "fma"), machine="x86_64")
SAPPHIRE = Capability(cpu_model="Intel Xeon Platinum 8481C", machine="x86_64",
                      cpu_flags=("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"), onednn_bf16=True)
SKYLAKE = Capability(cpu_model="Intel Xeon Gold 6148", cpu_flags=("avx2", "avx512f"), machine="x86_64", onednn_bf16=True)
M1 = Capability(cpu_model="Apple M1", cpu_flags=(), machine="arm64", mps=True)
GRAVITON3 = Capability(cpu_model="Neoverse-V1", cpu_flags=("asimd", "bf16"), machine="aarch64", onednn_bf16=True)
ZEN4 = Capability(cpu_model="AMD EPYC 9B14", machine="x86_64", cpu_flags=("avx2", "avx512f", "avx512_bf16"), onednn_bf16=True)


def capped(capability: Capability, isa: str) -> Capability:
    """The capability as torch reports it under ONEDNN_MAX_CPU_ISA=isa (below AVX512_CORE, no bf16 at all)."""
    return replace(capability, onednn_isa_cap=isa, onednn_bf16=capability.onednn_bf16 and isa.upper() not in ("AVX2", "AVX"))


@pytest.mark.parametrize("capability, device, precision", [
    (ZEN3, "cpu", "fp32"),         # AVX2 only: bf16 would be emulated
    (SKYLAKE, "cpu", "fp32"),      # AVX-512 without BF16: oneDNN says yes, but emulates
    (SAPPHIRE, "cpu", "bf16"),     # AMX and AVX-512-BF16
    (GRAVITON3, "cpu", "bf16"),    # Arm BF16
    (replace(GRAVITON3, onednn_bf16=False), "cpu", "fp32"),  # a torch whose oneDNN lacks Arm's bf16 kernels
    (ZEN4, "cpu", "bf16"),         # AVX-512-BF16, oneDNN uncapped
    (capped(ZEN4, "AVX2"), "cpu", "fp32"),              # the flags say bf16, oneDNN may not use it: 24x slower
    (capped(ZEN4, "AVX512_CORE"), "cpu", "fp32"),       # oneDNN says yes, but emulates: 1.7x slower
    (capped(ZEN4, "avx512_core_vnni"), "cpu", "fp32"),  # any case, as oneDNN reads it
    (capped(ZEN4, "AVX512_CORE_BF16"), "cpu", "bf16"),
    (capped(SAPPHIRE, "AVX512_CORE_AMX"), "cpu", "bf16"),
    (capped(SAPPHIRE, "ALL"), "cpu", "bf16"),
    (capped(GRAVITON3, "SVE_256"), "cpu", "bf16"),      # Arm's ISA names are not x86's caps
    (M1, "mps", "fp16"),
    (Capability(machine="x86_64", cuda=True, cuda_bf16=True, cuda_name="H100"), "cuda", "bf16"),
    (Capability(machine="x86_64", cuda=True, cuda_bf16=False, cuda_name="T4"), "cuda", "fp16"),
])
def test_the_policy_follows_what_the_hardware_does_natively(capability, device, precision):
    policy = choose(capability)
    assert (policy.device, policy.precision) == (device, precision), policy.reason
    assert policy.reason


def test_a_capped_onednn_turns_bf16_off_on_this_machine_and_the_reason_says_why(tmp_path):
    """This CPU (AVX-512-BF16) under ONEDNN_MAX_CPU_ISA=AVX2, read for real in a fresh process:
    torch's oneDNN then has no bf16 GEMM, so the policy is fp32 and its reason names the cap."""
    code = "import json; from yollava_cli.models.compute import current_policy as p; print(json.dumps(p().summary()))"
    env = {"PATH": "/usr/bin:/bin", "YOLLAVA_HOME": str(tmp_path), "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    policy = json.loads(result.stdout)
    assert policy["precision"] == "fp32", policy
    if detect().native_bf16:
        assert "oneDNN" in policy["reason"] and "bf16" in policy["reason"], policy


def test_overrides_win_and_impossible_ones_are_refused():
    assert choose(ZEN3, precision="bf16").precision == "bf16"
    assert choose(SAPPHIRE, precision="fp32").precision == "fp32"
    assert choose(M1, device="cpu").device == "cpu"
    assert choose(M1, device="cpu").precision == "fp32"  # M1 has no BF16 extension
    for kwargs, message in (({"device": "cuda"}, "no CUDA"), ({"device": "mps"}, "no Apple GPU"),
                            ({"precision": "fp8"}, "unknown precision"), ({"device": "tpu"}, "unknown device"),
                            ({"precision": "fp16"}, "not supported on the CPU")):
        with pytest.raises(UserError, match=message):
            choose(ZEN3, **kwargs)


def test_the_environment_override_reaches_the_loaded_model(monkeypatch, tmp_path):
    monkeypatch.setenv("YOLLAVA_HOME", str(tmp_path))
    monkeypatch.setenv("YOLLAVA_PRECISION", "bf16")
    vlm = VLM(*tiny_llava(), "tiny")
    assert vlm.policy.precision == "bf16" and vlm.cpu_bf16
    assert vlm.model.get_decoder().layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    monkeypatch.setenv("YOLLAVA_PRECISION", "fp32")
    vlm = VLM(*tiny_llava(), "tiny")
    assert not vlm.cpu_bf16
    assert vlm.model.get_decoder().layers[0].mlp.up_proj.weight.dtype == torch.float32  # the base stays as loaded


def test_this_machine_is_read():
    model, flags = cpu_info()
    capability = detect()
    assert capability.cpu_model == model and capability.cpu_flags == flags
    assert choose(capability).device in ("cpu", "cuda", "mps")


def test_both_cpu_paths_agree_on_verdicts_and_logits():
    """fp32 and bf16 (matrices in bf16, autocast) on the same tiny model: the same yes/no verdicts
    and next-token logits within bf16's rounding."""
    prompts = [Prompt(q) for q in ("Is the sky blue?", "Is fire cold?", "Do cats bark?", "Is water wet?",
                                   "Can fish fly?", "Is snow white?")]
    fp32 = VLM(*tiny_llava(seed=3), "tiny", policy=Policy("cpu", "fp32", "test"))
    bf16 = VLM(*tiny_llava(seed=3), "tiny", policy=Policy("cpu", "bf16", "test"))
    a, b = fp32.next_token_logits(prompts), bf16.next_token_logits(prompts)
    finite = torch.isfinite(a)
    assert torch.equal(finite, torch.isfinite(b))  # the same tokens blocked
    a, b = a[finite], b[finite]
    scale = a.abs().max()
    assert (a - b).abs().max() <= 0.02 * scale, float((a - b).abs().max() / scale)
    assert (a - b).abs().max() > 0  # two paths really ran: bf16 rounds
    # a random tiny model is barely sure of anything (P(yes) 0.501-0.509): the verdicts compared are
    # its ranking of the prompts, which a path that computed something else would scramble
    ya, yb = fp32.yes_probabilities(prompts), bf16.yes_probabilities(prompts)
    spread = max(ya) - min(ya)
    assert max(abs(x - y) for x, y in zip(ya, yb)) < 0.1 * spread, (ya, yb)
    apart = [(i, j) for i in range(len(ya)) for j in range(len(ya)) if ya[i] - ya[j] > 0.1 * spread]
    assert len(apart) >= 10 and all(yb[i] > yb[j] for i, j in apart)


def test_quantized_loading_is_for_cuda_and_names_what_to_install(monkeypatch):
    import importlib.util

    from yollava_cli.models.families import quantized_loading

    gpu = Capability(machine="x86_64", cuda=True, cuda_bf16=True, cuda_name="RTX 4070")
    assert choose(gpu, quantize="4bit").quantize == "4bit"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        choose(ZEN3, quantize="8bit")
    with pytest.raises(UserError, match="unknown quantization"):
        choose(gpu, quantize="2bit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        quantized_loading(choose(gpu, quantize="4bit"))
    assert quantized_loading(choose(gpu)) == {}


def test_quantize_on_this_cpu_is_one_line(home):
    result = invoke("ask", "hello?", "--quantize", "4bit", home=home)
    assert result.returncode == 1 and "needs a CUDA GPU" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_doctor_says_which_policy_and_why(home, monkeypatch):
    monkeypatch.setenv("YOLLAVA_PRECISION", "fp32")
    report = invoke("doctor", "--json", home=home)
    compute = json.loads(report.stdout)["compute"]
    assert (compute["device"], compute["precision"], compute["reason"]) == ("cpu", "fp32", "asked for")
    assert compute["capability"]["cpu_model"] == cpu_info()[0]
    monkeypatch.delenv("YOLLAVA_PRECISION")
    shown = invoke("doctor", home=home)
    chosen = choose(detect())
    assert f"compute: cpu {chosen.precision} ({chosen.reason}); CPU {cpu_info()[0]}" in shown.stderr
