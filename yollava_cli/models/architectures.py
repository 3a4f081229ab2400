"""The transformers model types yollava runs, and the few ways they differ in a pass.

Everything else is generic: prompts come from the processor's chat template, each image placeholder
expands as the processor expands it (`images`), the features reach the model as its own
`mm_encoder_outputs`. What is left differs per architecture and lives here: the form the model
takes its pooled features in, whether its positions are M-RoPE (Qwen2-VL and Qwen3-VL: three axes,
computed over the whole sequence with the image grids), and whether image tokens carry token types
(Gemma 3: bidirectional attention inside an image). Side data a vision tower returns (Qwen3-VL's
deepstack features) is kept with the features whatever the architecture (`images`). An architecture not listed is refused before its weights
load. This module imports no torch: `yollava models` lists the table without loading one."""

from dataclasses import dataclass

from yollava_cli.errors import UserError


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]  # config.json's model_type
    examples: tuple[tuple[str, float], ...]  # hub ids people personalize, each with its billions of parameters
    pooled_as_tensor: bool = False  # mm_encoder_outputs' pooler_output: one tensor, not a list per image
    mrope: bool = False  # positions from get_rope_index over the whole sequence, three axes
    token_types: bool = False  # token_type_ids mark image tokens on every pass
    needs: tuple[str, ...] = ()  # modules its processor imports


ARCHITECTURES = (
    Architecture("LLaVA-1.5", ("llava",), (("llava-hf/llava-1.5-7b-hf", 7.1),)),
    Architecture("LLaVA-NeXT", ("llava_next",), (("llava-hf/llava-v1.6-mistral-7b-hf", 7.6),)),
    Architecture("LLaVA-OneVision", ("llava_onevision",), (("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", 0.9),),
                 needs=("torchvision",)),
    Architecture("Idefics3", ("idefics3",), (("HuggingFaceM4/Idefics3-8B-Llama3", 8.5),)),
    Architecture("SmolVLM", ("smolvlm",), (("HuggingFaceTB/SmolVLM-256M-Instruct", 0.26), ("HuggingFaceTB/SmolVLM-500M-Instruct", 0.51)),
                 needs=("num2words", "torchvision")),
    Architecture("Qwen2-VL", ("qwen2_vl",), (("Qwen/Qwen2-VL-2B-Instruct", 2.2),), mrope=True, needs=("torchvision",)),
    Architecture("Qwen2.5-VL", ("qwen2_5_vl",), (("Qwen/Qwen2.5-VL-3B-Instruct", 3.8), ("Qwen/Qwen2.5-VL-7B-Instruct", 8.3)),
                 mrope=True, needs=("torchvision",)),
    Architecture("Qwen3-VL", ("qwen3_vl",), (("Qwen/Qwen3-VL-2B-Instruct", 2.1), ("Qwen/Qwen3-VL-8B-Instruct", 8.8)), mrope=True,
                 needs=("torchvision",)),
    Architecture("Gemma 3", ("gemma3",), (("google/gemma-3-4b-it", 4.3),), pooled_as_tensor=True, token_types=True),
    Architecture("InternVL", ("internvl",), (("OpenGVLab/InternVL3-1B-hf", 0.9), ("OpenGVLab/InternVL3-8B-hf", 7.9)),
                 pooled_as_tensor=True, needs=("torchvision",)),
    Architecture("Mistral 3", ("mistral3",), (("mistralai/Mistral-Small-3.1-24B-Instruct-2503", 24.0),)),
)

# what a model type needs that yollava does not do (yet): said instead of a crash mid-pass
REFUSED = {
    "qwen3_vl_moe": "a mixture of experts too large to have been tried",
    "paligemma": "it has no chat template (a prefix-LM, not a chat model)",
    "mllama": "its images enter through cross-attention, not as input tokens",
    "llama4": "its image tokens are laid out in tiles with their own separators the passes do not keep",
    "phi4_multimodal": "it has no get_image_features to precompute photos with",
}


def architecture(model_type: str, ref: str) -> Architecture:
    """The architecture of a model type, or a one-line error naming those that are supported."""
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    supported = ", ".join(a.name for a in ARCHITECTURES)
    why = f" ({REFUSED[model_type]})" if model_type in REFUSED else ""
    raise UserError(f"{ref}: model type {model_type!r} is not supported{why}; yollava runs {supported}")


def missing_modules(arch: Architecture) -> list[str]:
    import importlib.util

    return [name for name in arch.needs if importlib.util.find_spec(name) is None]
