"""Where and in what precision the model computes, chosen from what the hardware does well.

bf16 halves the bytes a pass reads, but only hardware with native bf16 arithmetic turns that into
speed: on a CPU without it (AVX2-only AMD Zen 2/3, Intel consumer chips, Apple M1) torch emulates
bf16 matrix products, and training ran more than 10x slower than in fp32. So the CPU computes in
bf16 only where its flags say the instructions exist (AVX-512-BF16 or AMX on x86, BF16 on Arm) and
oneDNN, which runs the matrix products, will use them: it must report bf16 support, and no
ONEDNN_MAX_CPU_ISA may cap it below them (capped at AVX2 a bf16 GEMM ran 24x slower than fp32,
at AVX512_CORE 1.7x slower: emulated either way);
CUDA uses bf16 where the GPU supports it, else fp16; Apple's MPS runs fp16 weights with fp32
fallback ops left to torch. `YOLLAVA_DEVICE` / `YOLLAVA_PRECISION` (or the config keys `device`
and `precision`) override the choice; `yollava doctor` prints it with its reason.
"""

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from yollava_cli.config import DEVICES, PRECISIONS, QUANTIZE
from yollava_cli.errors import UserError

DEVICE_ENV, PRECISION_ENV, QUANTIZE_ENV = "YOLLAVA_DEVICE", "YOLLAVA_PRECISION", "YOLLAVA_QUANTIZE"
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ISA_CAP_ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
BF16_ISAS = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")  # oneDNN ISA names at or above AVX512_CORE_BF16
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "asimd")


@dataclass(frozen=True)
class Capability:
    """What this machine offers: its CPU (model, the flags that matter), CUDA and MPS."""

    cpu_model: str = "unknown"
    cpu_flags: tuple[str, ...] = ()
    machine: str = ""
    onednn_bf16: bool = False  # oneDNN's own report: true also where it only emulates bf16 (AVX-512 without BF16)
    onednn_isa_cap: str = ""  # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA): the newest instructions oneDNN may use
    cuda: bool = False
    cuda_bf16: bool = False
    cuda_name: str = ""
    mps: bool = False

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware: x86 AVX-512-BF16 or AMX, Arm's BF16 extension."""
        if self.machine.lower() in ("arm64", "aarch64"):
            return "bf16" in self.cpu_flags
        return any(flag in self.cpu_flags for flag in X86_BF16_FLAGS)

    @property
    def why_no_onednn_bf16(self) -> str | None:
        """None where oneDNN runs bf16 matrix products on the native instructions; else why not."""
        if not self.onednn_bf16:
            return "oneDNN reports no bf16 support"
        x86 = self.machine.lower() not in ("arm64", "aarch64")
        if x86 and self.onednn_isa_cap and not any(isa in self.onednn_isa_cap.upper() for isa in BF16_ISAS):
            return f"oneDNN is capped at {self.onednn_isa_cap} (ONEDNN_MAX_CPU_ISA), below its bf16 instructions"
        return None

    def describe(self) -> dict:
        return {**asdict(self), "cpu_flags": [f for f in SHOWN_FLAGS if f in self.cpu_flags],
                "native_bf16": self.native_bf16}


@dataclass(frozen=True)
class Policy:
    """The device and precision the model runs in, and why. `cpu_bf16`: on CPU, the language
    model's matrices are stored in bf16 and every pass runs under bf16 autocast."""

    device: str
    precision: str
    reason: str
    capability: dict = field(default_factory=dict, compare=False)
    quantize: str = "none"  # 4bit | 8bit: the base model's Linear weights through bitsandbytes (CUDA only)

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def cpu_bf16(self) -> bool:
        return self.device == "cpu" and self.precision == "bf16"

    @property
    def load_dtype(self):
        """The dtype weights are loaded in: on CPU always fp32 (bf16 there is a cast of some matrices)."""
        import torch

        return torch.float32 if self.device == "cpu" else self.dtype

    def summary(self) -> dict:
        return {"device": self.device, "precision": self.precision, "quantize": self.quantize, "reason": self.reason}


def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(model name, flags) from /proc/cpuinfo on Linux, sysctl on macOS."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    if not text and platform.system() == "Darwin":
        model = sysctl("machdep.cpu.brand_string") or "unknown"
        if sysctl("hw.optional.arm.FEAT_BF16") == "1":
            flags.add("bf16")
    return model, tuple(sorted(flags))


def sysctl(key: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def detect() -> Capability:
    import torch

    model, flags = cpu_info()
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Capability(
        cpu_model=model, cpu_flags=flags, machine=platform.machine(),
        onednn_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        onednn_isa_cap=next((os.environ[name] for name in ISA_CAP_ENVS if os.environ.get(name)), ""),
        cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        cuda_name=torch.cuda.get_device_name(0) if cuda else "", mps=mps,
    )


def choose(capability: Capability, device: str = "auto", precision: str = "auto", quantize: str = "none") -> Policy:
    """The policy for this capability; an explicit device, precision or quantization wins over the choice."""
    policy = choose_precision(capability, device, precision)
    if quantize not in QUANTIZE:
        raise UserError(f"unknown quantization {quantize!r}: use one of {', '.join(QUANTIZE)} (--quantize, {QUANTIZE_ENV} or the config key 'quantize')")
    if quantize != "none" and policy.device != "cuda":
        raise UserError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); this machine runs on {policy.device}: drop --quantize")
    return Policy(policy.device, policy.precision, policy.reason, policy.capability, quantize)


def choose_precision(capability: Capability, device: str, precision: str) -> Policy:
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}: use one of {', '.join(DEVICES)} ({DEVICE_ENV} or the config key 'device')")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)} ({PRECISION_ENV} or the config key 'precision')")
    if device == "cuda" and not capability.cuda:
        raise UserError(f"device cuda was asked for ({DEVICE_ENV} or config) but torch sees no CUDA GPU; use auto or cpu")
    if device == "mps" and not capability.mps:
        raise UserError(f"device mps was asked for ({DEVICE_ENV} or config) but torch sees no Apple GPU; use auto or cpu")
    if device == "auto":
        device = "cuda" if capability.cuda else "mps" if capability.mps else "cpu"
    described = capability.describe()
    if precision != "auto":
        if device == "cpu" and precision == "fp16":
            raise UserError("precision fp16 is not supported on the CPU (torch's CPU fp16 matrix products are slow); use fp32 or bf16")
        return Policy(device, precision, "asked for", described)
    if device == "cuda":
        name = capability.cuda_name or "the GPU"
        if capability.cuda_bf16:
            return Policy(device, "bf16", f"{name} supports bf16", described)
        return Policy(device, "fp16", f"{name} has no bf16", described)
    if device == "mps":
        return Policy(device, "fp16", "Apple GPU: fp16, torch falls back to the CPU for ops MPS lacks", described)
    if capability.native_bf16:
        if (why_not := capability.why_no_onednn_bf16) is None:
            return Policy(device, "bf16", f"the CPU has native bf16 ({native_flags(capability)}) and oneDNN runs it", described)
        return Policy(device, "fp32", f"the CPU has native bf16 ({native_flags(capability)}) but {why_not}: "
                                      "emulated bf16 is slower than fp32", described)
    return Policy(device, "fp32", "the CPU has no native bf16 (AVX-512-BF16, AMX or Arm BF16): emulated bf16 is slower than fp32",
                  described)


def native_flags(capability: Capability) -> str:
    return ", ".join(f for f in (*X86_BF16_FLAGS, "bf16") if f in capability.cpu_flags)


def requested(quantize: str | None = None) -> tuple[str, str, str]:
    """(device, precision, quantize) asked for: the command line (`quantize`), else the
    environment, else the config file, else auto (no quantization)."""
    from yollava_cli.config import load_config

    config = load_config()
    return (os.environ.get(DEVICE_ENV) or config.get("device") or "auto",
            os.environ.get(PRECISION_ENV) or config.get("precision") or "auto",
            quantize or os.environ.get(QUANTIZE_ENV) or config.get("quantize") or "none")


def report() -> dict:
    """The device and precision models run in here, the reason, and the capability it read (doctor)."""
    try:
        policy = current_policy()
    except UserError as e:
        return {"error": str(e)}
    return {**policy.summary(), "capability": policy.capability}


def current_policy(quantize: str | None = None) -> Policy:
    """The policy for this machine and what was asked for; `quantize` is a command's --quantize."""
    return choose(detect(), *requested(quantize))
