"""Model families: one entry per kind of base model, saying how to load it and what it needs, in
the manner of `llm`'s model plugins. `transformers` (any LLaVA-style model transformers loads from a
hub id or a local folder) is the fallback; every subpackage of `yollava_cli.models` may register a
more specific family when imported (the offline default lives in one), and so may an installed
package, through the `yollava.models` entry-point group. What a family's loader must return is
written down as `BaseModel` and `Processor` and checked after every load (`check_contract`). This
module imports no torch: the CLI lists families and reads the default without loading a model."""

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from yollava_cli.errors import UserError
from yollava_cli.reporting import Status, report

ENTRY_POINTS = "yollava.models"


class BaseModel(Protocol):
    """The model a family's `load` returns: what VLM, decoding and images use of a transformers
    LLaVA-style `...ForConditionalGeneration` (pocket meets it by subclassing transformers' LLaVA).
    `config.model_type` must be one `architectures` lists: it says where image features go.
    `base_model` is the multimodal model without the head (called for hidden states, with a cache);
    `__call__(**inputs)` returns `.logits`; `get_image_features` takes the processor's outputs."""

    config: Any
    dtype: Any
    base_model: Any
    generation_config: Any

    def __call__(self, **inputs) -> Any: ...
    def eval(self) -> Any: ...
    def requires_grad_(self, requires_grad: bool = True) -> Any: ...
    def parameters(self) -> Iterator: ...
    def buffers(self) -> Iterator: ...
    def get_input_embeddings(self) -> Any: ...
    def set_input_embeddings(self, value) -> None: ...
    def get_output_embeddings(self) -> Any: ...
    def set_output_embeddings(self, value) -> None: ...
    def get_decoder(self) -> Any: ...
    def get_image_features(self, **inputs) -> Any: ...
    def generate(self, **options) -> Any: ...


class Processor(Protocol):
    """The processor beside it: a tokenizer, an image processor, the image placeholder, the chat
    template, and the placeholder's expansion for given images."""

    tokenizer: Any
    image_processor: Any
    image_token: str

    def apply_chat_template(self, messages, **options) -> Any: ...
    def get_text_with_replacements(self, texts, replacements) -> Any: ...


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of `protocol` that `obj` lacks."""
    names = [*protocol.__annotations__,
             *(n for n, v in vars(protocol).items() if callable(v) and (not n.startswith("_") or n == "__call__"))]
    return [name for name in names if not hasattr(obj, name)]


def check_contract(family: "Family", model: object, processor: object) -> None:
    """A one-line error naming the family when what it loaded is not a BaseModel and a Processor."""
    for part, obj, protocol in (("model", model, BaseModel), ("processor", processor, Processor)):
        missing = missing_members(obj, protocol)
        if missing:
            raise UserError(f"model family {family.name!r} loaded a {part} without {', '.join(missing)} "
                            f"(what models.families.{protocol.__name__} lists): fix or uninstall the plugin that provides it")


@dataclass(frozen=True)
class Family:
    """How a family of base models is loaded and run.

    `load(ref, cache_dir, policy)` returns (model, processor) (a BaseModel and a Processor), placed
    on the policy's device. `handles(ref)` says whether a model reference belongs to the family. `photo_switch(model)`
    returns the family's part that must be on exactly for the batch rows holding a photo (an object
    with a `rows` attribute), or None. `bf16_matrices_on_cpu`: under a CPU bf16 policy the language
    model's Linear weights are stored in bf16 (decoding reads half the bytes); otherwise the weights
    stay as loaded and only autocast rounds. `offline_default`: the model used when none is named."""

    name: str
    summary: str
    load: Callable
    handles: Callable[[str], bool]
    photo_switch: Callable[[object], object | None] = field(default=lambda model: None)
    bf16_matrices_on_cpu: bool = True
    quantizable: bool = True
    offline_default: bool = False
    params_b: float = 0.0  # billions of parameters, for `yollava models`' memory estimate (0: per architecture)


_registered: list[Family] = []


def register(family: Family) -> Family:
    if any(f.name == family.name for f in _registered):
        raise ValueError(f"model family {family.name!r} is registered twice")
    _registered.append(family)
    return family


@cache
def _discover() -> None:
    """Import the families shipped as subpackages of `yollava_cli.models`, then installed plugins."""
    from yollava_cli import models

    for module in pkgutil.iter_modules(models.__path__):
        if module.ispkg:
            importlib.import_module(f"{models.__name__}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            entry.load()
        except (ImportError, ValueError) as e:  # a plugin that is broken, or names a family taken already
            raise UserError(f"model plugin {entry.name!r} ({entry.value}): {first_line(e)}; fix or uninstall it") from None


def families() -> list[Family]:
    """Every family: the specific ones first, the generic transformers one last."""
    _discover()
    return [*_registered, TRANSFORMERS]


def for_ref(ref: str) -> Family:
    return next(f for f in families() if f.handles(ref))


def default_model() -> str:
    """The model used when neither --model, $YOLLAVA_MODEL nor the config names one."""
    return next((f.name for f in families() if f.offline_default), TRANSFORMERS.name)


def load_transformers_model(ref: str, cache_dir: Path, policy):
    """A supported model (`architectures`) and its processor through transformers, from a local
    folder or a hub id; its architecture and the packages its processor needs are checked first,
    before any weight loads."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(ref).expanduser()
    if not local.is_dir() and (local.exists() or ref.startswith((".", "/", "~"))):
        raise UserError(f"{ref}: not a model directory; pass a local HF-format folder, a hub id, or {default_model()}")
    source = str(local) if local.is_dir() else ref
    options = {"dtype": policy.load_dtype, **quantized_loading(policy)}
    quantized = f", {policy.quantize}" if policy.quantize != "none" else ""
    report(Status(f"Loading {source} ({policy.device}, {policy.precision}{quantized})..."))
    without_loading_bars()
    try:
        check_architecture(read_config(source, ref), ref)
        processor = check_processor(AutoProcessor.from_pretrained(source, trust_remote_code=False), ref)
        model = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=False, **options)
    except ImportError as e:  # a pre-quantized checkpoint, or a processor, that needs a package
        raise UserError(f"cannot load model {ref!r}: {first_line(e)} (install what it names, e.g. pip install accelerate bitsandbytes)") from None
    except (OSError, ValueError) as e:
        if "image processor" in str(e):
            raise no_image_processor(ref) from None
        where = "from the Hugging Face hub" if not local.is_dir() else "from that folder"
        raise UserError(
            f"cannot load model {ref!r} {where} ({first_line(e)}); check the id and your network "
            f"(offline: HF_HUB_OFFLINE=1 uses only cached models), or use --model {default_model()}"
        ) from None
    return (model if "device_map" in options else model.to(policy.device)), processor


def without_loading_bars() -> None:
    """transformers draws a bar per load ("Loading weights") under the status line yollava already
    shows; the hub's download bars stay as they were (a download is long, and they are its only display)."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging

    downloads_shown = not are_progress_bars_disabled()
    logging.disable_progress_bar()
    if downloads_shown:
        enable_progress_bars()


def check_processor(processor, ref: str):
    """The processor, if it has both halves: without an image processor's config AutoProcessor
    falls back to a bare tokenizer, which cannot read a photo."""
    if not all(hasattr(processor, part) for part in ("tokenizer", "image_processor")):
        raise no_image_processor(ref)
    return processor


def no_image_processor(ref: str) -> UserError:
    return UserError(f"{ref}: the model has no image processor (preprocessor_config.json, or processor_config.json, is missing): "
                     f"copy the model's preprocessor_config.json from where you got it, or save its processor there "
                     f"with AutoProcessor.from_pretrained(HUB_ID).save_pretrained(DIR)")


def read_config(source: str, ref: str) -> dict:
    """config.json, read as plain JSON: what yollava decides before transformers reads anything
    (transformers would offer to run a folder's own code, `auto_map`, for a type it does not know)."""
    from transformers.utils import cached_file

    from yollava_cli.schema import read_json

    path = Path(source) / "config.json" if Path(source).is_dir() else cached_file(source, "config.json")
    if not Path(path).is_file():
        raise UserError(f"{ref}: no config.json, so not a model folder; pass a folder saved with save_pretrained, "
                        f"a hub id, or {default_model()}")
    config = read_json(Path(path), dict, f"{ref}: config.json")
    if "auto_map" in config:
        raise UserError(f"{ref}: its config.json asks to run code shipped with the model (auto_map); yollava never "
                        "runs a model's own code: use a model transformers itself supports (`yollava models` lists them)")
    if not isinstance(config.get("model_type"), str):
        raise UserError(f"{ref}: config.json names no model_type; this is not a model yollava can run")
    return config


def check_architecture(config: dict, ref: str) -> None:
    """A one-line error for an architecture yollava does not run, or a package its processor lacks."""
    from yollava_cli.models.architectures import architecture, missing_modules

    arch = architecture(config["model_type"], ref)
    missing = missing_modules(arch)
    if missing:
        install = f"pip install {' '.join(missing)}"
        if "torchvision" in missing:  # its build must match torch's
            install += " (the build matching your torch; bash scripts/install.sh --open-clip installs a matching pair)"
        raise UserError(f"{ref}: {arch.name} needs {' and '.join(missing)}: {install}")


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def quantized_loading(policy) -> dict:
    """from_pretrained's options for 4/8-bit weights through bitsandbytes, placed on the GPU; the
    concepts' rows stay fp32 (ConceptTokens), compute runs in the policy's dtype."""
    if policy.quantize == "none":
        return {}
    import importlib.util

    missing = [name for name in ("bitsandbytes", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--quantize {policy.quantize} needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    from transformers import BitsAndBytesConfig

    if policy.quantize == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=policy.dtype,
                                    bnb_4bit_use_double_quant=True)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": 0}}


TRANSFORMERS = Family(
    name="transformers",
    summary="a model from a hub id or a local Hugging Face folder: LLaVA, Idefics3/SmolVLM, Qwen2-VL, Gemma 3, InternVL",
    load=load_transformers_model,
    handles=lambda ref: True,
)
