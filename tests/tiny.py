"""Tiny randomly initialised models of every family yollava runs, built from configs: no download.
Each comes with its own processor and a chat template that writes the family's own image marker."""

import importlib.util

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Is this a photo of a dog? Yes, it is. No, it is not. What is in this photo? A cat on a sofa.",
    "yes no Yes No thing things what should I buy him for his birthday",
] * 20
SPECIALS = ["<|im_start|>", "<|im_end|>", "<pad>", "<image>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return tokenizer_with(SPECIALS, CHATML, {"image_token": "<image>"}, vocab_size=400)


def tokenizer_with(specials: list[str], template: str, extra: dict | None = None, eos: str = "<|im_end|>",
                   vocab_size: int = 420) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on CORPUS with these special tokens (`extra`: named ones, e.g. the
    image token a processor reads from its tokenizer)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="<pad>", extra_special_tokens=extra or {})
    fast.chat_template = template
    return fast


def tiny_llava(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=len(tokenizer) + 6,  # padded rows past the tokenizer, as real LLaVA checkpoints have
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            image_size=32, patch_size=8,
        ),
        image_token_id=image_token, vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        chat_template=CHATML, num_additional_image_tokens=1,
    )
    return model, processor


class OnevisionProcessor(LlavaOnevisionProcessor):
    """Without torchvision there is no video processor, and transformers' class check trips on None."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument is not None:
            super().check_argument_for_proper_class(argument_name, argument)


def tiny_onevision(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = LlavaOnevisionConfig(
        text_config=Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            image_size=32, patch_size=8,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=True,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    # with torchvision, the real processor class and a video processor: the folder it saves loads
    # back through AutoProcessor (the subclass's name would not, and then only a tokenizer loads)
    video = onevision_video_processor()
    processor = (LlavaOnevisionProcessor if video else OnevisionProcessor)(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints, do_pad=True,
        ),
        video_processor=video, tokenizer=tokenizer, num_image_tokens=16, vision_feature_select_strategy="full",
        chat_template=CHATML,
    )
    return model, processor


def onevision_video_processor():
    """OneVision's video processor, or None without torchvision (it needs it)."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    from transformers import LlavaOnevisionVideoProcessor

    return LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})


def tiny_llava_next(seed: int = 0):
    """LLaVA-NeXT: a photo as its base view plus the tiles of the best-fitting grid, with a newline
    feature after each row of patches."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        text_config=LlamaConfig(**text_kwargs(tokenizer)),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                       image_size=32, patch_size=8),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", chat_template=CHATML,
        num_additional_image_tokens=1,
    )
    return model, processor


def chat_template(image: str, user="<|im_start|>user\n", assistant="<|im_start|>assistant\n", end="<|im_end|>\n") -> str:
    """A chat template in a family's manner, writing `image` for each image of a message."""
    def lit(text):
        return "'" + text.replace("\n", "\\n") + "'"

    return (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ " + lit(user) + " }}{% else %}{{ " + lit(assistant) + " }}{% endif %}"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{{ " + lit(image) + " }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ " + lit(end) + " }}{% endfor %}{% if add_generation_prompt %}{{ " + lit(assistant) + " }}{% endif %}"
    )


def text_kwargs(tokenizer, **extra) -> dict:
    """A two-layer language model of width 32 over the tokenizer's vocabulary."""
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_idefics3(seed: int = 0, smol: bool = False):
    """Idefics3, or SmolVLM (its successor on SmolLM2): images split into tiles, each wrapped in
    `<fake_token_around_image>` and its `<row_i_col_j>`, then the whole image, `<global-img>`."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, Idefics3VisionConfig, LlamaConfig, SmolVLMConfig,
                              SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, SmolVLMProcessor)
    torch.manual_seed(seed)
    rows = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    template = chat_template("<image>", "<|im_start|>User:", "<|im_start|>Assistant:", "<end_of_utterance>\n")
    tokenizer = tokenizer_with(["<|im_start|>", "<end_of_utterance>", "<pad>", "<image>", "<fake_token_around_image>",
                                "<global-img>", *rows], template, eos="<end_of_utterance>",
                               extra={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                      "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    Config, Model = (SmolVLMConfig, SmolVLMForConditionalGeneration) if smol else (Idefics3Config, Idefics3ForConditionalGeneration)
    config = Config(
        text_config=LlamaConfig(**text_kwargs(tokenizer)),
        vision_config=Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=32, patch_size=8),
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Model(config).eval()
    ImageProcessor, Processor = (SmolVLMImageProcessorPil, SmolVLMProcessor) if smol else (Idefics3ImageProcessorPil, Idefics3Processor)
    image_processor = ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True)
    from transformers import SmolVLMVideoProcessor
    extra = {"video_processor": SmolVLMVideoProcessor()} if smol else {}
    processor = Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=template, **extra)
    return model, processor


def tiny_qwen2_vl(seed: int = 0, v25: bool = False):
    """Qwen2-VL, or Qwen2.5-VL: a patch grid per image and M-RoPE positions over three axes."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor,
                              Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor)
    torch.manual_seed(seed)
    template = chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    tokenizer = tokenizer_with(["<|im_start|>", "<|im_end|>", "<pad>", "<|vision_start|>", "<|vision_end|>",
                                "<|image_pad|>", "<|video_pad|>"], template)
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}
    if v25:
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=14,
                      window_size=56, fullatt_block_indexes=[0])
        Config, Model, Processor = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    else:
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=14)
        Config, Model, Processor = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in
           [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    config = Config(text_config=dict(**text_kwargs(tokenizer), rope_parameters=rope, bos_token_id=None),
                    vision_config=vision, **ids)
    model = Model(config).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2)
    processor = Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=template)
    return model, processor


def tiny_gemma3(seed: int = 0):
    """Gemma 3: the template writes `<start_of_image>`, the model scatters into `<image_soft_token>`s,
    image tokens attend to each other both ways, and the embedding scales by sqrt(hidden)."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)
    torch.manual_seed(seed)
    template = chat_template("<start_of_image>", "<start_of_turn>user\n", "<start_of_turn>model\n", "<end_of_turn>\n")
    tokenizer = tokenizer_with(["<start_of_turn>", "<end_of_turn>", "<pad>", "<bos>", "<start_of_image>",
                                "<end_of_image>", "<image_soft_token>"], template, eos="<end_of_turn>",
                               extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                      "image_token": "<image_soft_token>"})
    text = Gemma3TextConfig(**text_kwargs(tokenizer), head_dim=8, sliding_window=64)
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, image_size=32, patch_size=8),
        mm_tokens_per_image=4, boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, chat_template=template, image_seq_length=4)
    return model, processor


def tiny_internvl(seed: int = 0):
    """InternVL: `<img>`, `<IMG_CONTEXT>` x N per patch, `</img>`; one tensor of pooled features."""
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, InternVLVisionConfig, Qwen2Config)
    torch.manual_seed(seed)
    template = chat_template("<IMG_CONTEXT>\n")
    tokenizer = tokenizer_with(["<|im_start|>", "<|im_end|>", "<pad>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
                               template, extra={"start_image_token": "<img>", "end_image_token": "</img>",
                                                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    config = InternVLConfig(
        text_config=Qwen2Config(**text_kwargs(tokenizer)),
        vision_config=InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=[32, 32], patch_size=[8, 8]),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
    )
    model = InternVLForConditionalGeneration(config).eval()
    # the processor crops each photo into patches plus a thumbnail (13 here), as InternVL3's does
    processor = InternVLProcessor(image_processor=GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}),
                                  tokenizer=tokenizer, video_processor=InternVLVideoProcessor(), image_seq_length=4, chat_template=template)
    return model, processor


def tiny_smolvlm(seed: int = 0):
    return tiny_idefics3(seed, smol=True)


def tiny_qwen2_5_vl(seed: int = 0):
    return tiny_qwen2_vl(seed, v25=True)




def tiny_qwen3_vl(seed: int = 0):
    """Qwen3-VL: Qwen2-VL's layout, plus deepstack features added to the first decoder layers."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    torch.manual_seed(seed)
    template = chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    tokenizer = tokenizer_with(["<|im_start|>", "<|im_end|>", "<pad>", "<|vision_start|>", "<|vision_end|>",
                                "<|image_pad|>", "<|video_pad|>"], template)
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in
           [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True, "rope_theta": 10000.0}
    config = Qwen3VLConfig(
        text_config=dict(**text_kwargs(tokenizer), head_dim=8, rope_parameters=rope),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=16,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        **ids,
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=64 * 64, max_pixels=128 * 128, patch_size=16, merge_size=2)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen3VLVideoProcessor(), chat_template=template)
    return model, processor


def tiny_mistral3(seed: int = 0):
    """Mistral 3 (Pixtral's vision): rows of `[IMG]` tokens separated by `[IMG_BREAK]`, ended by `[IMG_END]`."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralImageProcessorPil, PixtralProcessor, PixtralVisionConfig

    torch.manual_seed(seed)
    template = chat_template("[IMG]", "[INST]", "[/INST]", "</s>")
    tokenizer = tokenizer_with(["[INST]", "[/INST]", "</s>", "<pad>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"], template, eos="</s>")
    config = Mistral3Config(
        text_config=MistralConfig(**text_kwargs(tokenizer), head_dim=8),
        vision_config=PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                          image_size=64, patch_size=8, head_dim=8),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), vision_feature_layer=-1, spatial_merge_size=2,
    )
    model = Mistral3ForConditionalGeneration(config).eval()
    processor = PixtralProcessor(image_processor=PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=8),
                                 tokenizer=tokenizer, patch_size=8, spatial_merge_size=2, chat_template=template,
                                 image_token="[IMG]", image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]")
    return model, processor


FAMILIES = {"llava": tiny_llava, "llava_next": tiny_llava_next, "onevision": tiny_onevision, "idefics3": tiny_idefics3,
            "smolvlm": tiny_smolvlm, "qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl, "qwen3_vl": tiny_qwen3_vl,
            "gemma3": tiny_gemma3, "internvl": tiny_internvl, "mistral3": tiny_mistral3}
