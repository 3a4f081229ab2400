"""A photo as the language model sees it, made by the model's own processor and vision tower, so
every supported family runs through the same passes.

The processor decides what text an image's placeholder becomes (LLaVA: `<image>` x 576; Idefics3:
tiles wrapped in `<fake_token_around_image>` and `<row_i_col_j>`; Gemma 3: `<start_of_image>`, soft
tokens, `<end_of_image>`; InternVL: `<img>...</img>`), and the side inputs some passes need
(Qwen2-VL's patch grid, for its M-RoPE positions; Qwen3-VL's deepstack features, added to the first
decoder layers' hidden states at the image's tokens). All of it is kept with the features, in the
feature cache, so a cached photo needs neither its pixels nor the processor again."""

import inspect
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

# processor outputs that describe the text, not the image
TEXT_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "text_replacement_offsets"}


@dataclass
class ImageInput:
    features: torch.Tensor  # (n_tokens, hidden): what the placeholder tokens of this photo take
    replacement: str  # the text the processor writes in place of the photo's placeholder
    grid: torch.Tensor | None = None  # (3,) temporal, height, width patches: Qwen2-VL's M-RoPE positions
    deepstack: torch.Tensor | None = None  # (layers, n_tokens, hidden): Qwen3-VL's features for its first layers

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values()) + len(self.replacement)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"features": self.features.contiguous()}
        if self.grid is not None:
            out["grid"] = self.grid.contiguous()
        if self.deepstack is not None:
            out["deepstack"] = self.deepstack.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> "ImageInput | None":
        """None for a file written before the replacement text was kept: computed again."""
        if not metadata or "replacement" not in metadata:
            return None
        return cls(tensors["features"], metadata["replacement"], tensors.get("grid"), tensors.get("deepstack"))


@dataclass
class PooledImages(BaseModelOutputWithPooling):
    """`mm_encoder_outputs["image"]` for any family: the pooled features, and the deepstack
    features where the model has them."""

    deepstack_features: list | None = None


def compute_image_input(model, processor, image, dtype: torch.dtype, device, fast) -> ImageInput:
    """Run one photo through the processor (pixels and its placeholder's expansion together) and
    the model's `get_image_features`, passing every processor output that the method takes."""
    processed = processor(images=[image.convert("RGB")], text=[processor.image_token], return_tensors="pt",
                          return_text_replacement_offsets=True)
    [[offset]] = processed["text_replacement_offsets"]
    takes = image_feature_parameters(model)
    inputs = {k: v.to(device) for k, v in processed.items() if k in takes and k not in TEXT_KEYS}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    for option in ("vision_feature_layer", "vision_feature_select_strategy"):
        if option in takes and getattr(model.config, option, None) is not None:
            inputs[option] = getattr(model.config, option)
    with torch.no_grad(), fast():
        result = model.get_image_features(**inputs)
    features = flat(getattr(result, "pooler_output", result))
    deepstack = getattr(result, "deepstack_features", None)
    grid = processed.get("image_grid_thw")
    return ImageInput(features, offset["replacement"], grid[0].cpu() if grid is not None else None,
                      torch.stack([flat(layer) for layer in deepstack]) if deepstack else None)


def flat(pooled) -> torch.Tensor:
    """(n_tokens, hidden) from a tensor of any rank or a list of them (one per image or tile)."""
    parts = pooled if isinstance(pooled, (list, tuple)) else [pooled]
    return torch.cat([p.reshape(-1, p.shape[-1]) for p in parts]).detach().cpu()


def image_feature_parameters(model) -> set[str]:
    parameters = inspect.signature(model.get_image_features).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
