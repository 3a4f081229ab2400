"""Full-size LLaVA-1.5 models on a GPU: what a concept costs there, without downloading a weight.

Builds random-init models from configs (nothing is downloaded; timings do not depend on the weights'
values): LLaVA-1.5-7B (Llama-2-7B text model, CLIP ViT-L/14-336 vision tower, vocab 32064, image
token 32000) in the compute policy's precision, and LLaVA-1.5-13B in 4-bit (built, saved to a temp
folder and loaded back through yollava's own loader with quantize="4bit": needs CUDA, bitsandbytes
and accelerate; recorded as skipped, with the reason, where they are missing). Tokenizer: a small
byte-level BPE padded to the config's vocabulary; image processor: CLIP at 336 px.

For each model, on the policy's device:
- a training step of a concept: a batch of 8 recognition examples with photos (4 positive, 4
  negative), forward, backward through the concept's k+1 rows and its output row, AdamW step;
  image features cached, as in every epoch after the first (median of --steps steps after a warm-up);
- a whole concept at the paper's settings, extrapolated from those steps (15 epochs would take too
  long for a bench): the trainer's own epoch draw on 10 photos and 100 hard + 100 easy negatives
  gives the step count; plus each unique photo through the vision tower once and the per-epoch
  validation scoring, at the rates measured here;
- peak memory of each phase: torch.cuda.max_memory_allocated on a GPU, the process' RSS peak
  (resource.getrusage, cumulative over the run) on a CPU;
- decode tokens/s: a short text prompt, 64 new tokens (sampled at temperature 1: greedy decoding of
  a random-weight model loops and the loop guard would end it early), and the time to the first;
- find photos/s: vlm.yes_probabilities over 32 photo prompts, cold (every photo through the vision
  tower) and warm (features cached).
Times are medians of --repeats runs after a warm-up. Ratios between models are reported only when
both ran in this run. Records the device, torch, CUDA, the compute policy; the JSON is rewritten
after each model, so a run cut short keeps what it measured.

Run on a GPU machine:  python bench/bench_gpu.py   (writes bench/results/gpu-<device>.json). The
4-bit case needs pip install bitsandbytes accelerate, and builds the 13B model's bf16 weights (27 GB)
on the GPU and saves them (--scratch: a folder with that much disk) before loading them back in
4-bit. A model that does not fit is skipped, one that fails (out of memory) is recorded as failed,
and the others still run. On a CPU, in seconds:  python bench/bench_gpu.py --tiny --steps 2
"""

import argparse
import importlib.metadata
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))  # run as a script from anywhere: this checkout's yollava_cli

CONCEPT, K, BATCH, FIND_PHOTOS, NEW_TOKENS = "bo", 16, 8, 32, 64
DECODE_PROMPT = "Write a long story about a dog and a cat who become friends."
# Yo'LLaVA's training setup, run through this trainer's own epoch draw (learning.training.epoch_examples)
PAPER = {"photos": 10, "hard_negatives": 100, "easy_negatives": 100, "epochs": 15}

# Text models shaped as Llama-2 7B / 13B (LLaVA-1.5's); `params` is what the config must come to
MODELS = {
    "llava-7b": {"hidden": 4096, "layers": 32, "heads": 32, "intermediate": 11008, "quantize": "none", "params": 7.06e9},
    "llava-13b-4bit": {"hidden": 5120, "layers": 40, "heads": 40, "intermediate": 13824, "quantize": "4bit", "params": 13.35e9},
}
TINY = {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128}
VOCAB, IMAGE_TOKEN = 32064, 32000  # LLaVA-1.5: <image> is 32000, <pad> 32001, rows padded to 32064
TINY_VOCAB, TINY_IMAGE_TOKEN = 576, 512
CLIP_L_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "image_size": 336, "patch_size": 14, "projection_dim": 768}
CLIP_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
             "image_size": 32, "patch_size": 8}

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# -- models from configs ----------------------------------------------------------------

def llava_config(name: str, tiny: bool):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    shape = TINY if tiny else MODELS[name]
    vocab, image = (TINY_VOCAB, TINY_IMAGE_TOKEN) if tiny else (VOCAB, IMAGE_TOKEN)
    heads = shape["heads"]
    return LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=vocab, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["layers"], num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=image + 1,
        ),
        vision_config=CLIPVisionConfig(**(CLIP_TINY if tiny else CLIP_L_336)),
        image_token_id=image, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def parameter_count(config) -> int:
    """The model's parameter count, built on the meta device (no memory, no init)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def tokenizer_for(image_id: int):
    """A byte-level BPE trained on yollava's own prompt templates, its vocabulary padded with unused
    entries so that <image> is `image_id` and <pad> the next id, as in LLaVA-1.5's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from yollava_cli.learning.synthesis import templates

    table = templates()
    corpus = [pair[side] for kind in ("positive", "negative") for pair in table["recognition"][kind]
              for side in ("question", "answer")] + [DECODE_PROMPT, "Yes, it is. No, it is not. A dog on a sofa."]
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=min(image_id, 2000), special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trained.train_from_iterator(corpus * 4, trainer)
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), image_id)})  # never produced: no merge leads there
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                                                    for m in model["merges"]]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>", "<image>", "<pad>"])  # the last two: new ids, in order
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   extra_special_tokens={"image_token": "<image>"})
    assert fast.convert_tokens_to_ids("<image>") == image_id and fast.pad_token_id == image_id + 1
    fast.chat_template = CHATML
    return fast


def processor_for(config):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    tokenizer = tokenizer_for(config.image_token_id)
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        chat_template=CHATML, num_additional_image_tokens=1,
    )


def random_model(config, device: str, dtype):
    """Random init, straight on the device (a 13B init on the GPU takes seconds, on a CPU minutes)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        return LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()


# -- where it runs ----------------------------------------------------------------------

def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(policy) -> dict:
    import torch

    from yollava_cli.models.compute import cpu_info

    cpu, _ = cpu_info()
    name = torch.cuda.get_device_name(0) if policy.device == "cuda" else cpu
    where = {"device": policy.device, "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
             "cuda_available": torch.cuda.is_available(), "transformers": version("transformers"),
             "bitsandbytes": version("bitsandbytes"), "accelerate": version("accelerate"),
             "policy": policy.summary(), "cpu": cpu, "threads": torch.get_num_threads(), "commit": commit()}
    if policy.device == "cuda":
        _, total = torch.cuda.mem_get_info()
        where["gpu_memory_gib"] = round(total / 2**30, 1)
        where["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return where


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def room_for(weight_bytes: int, device: str) -> str | None:
    """Why a model of this many bytes cannot be built here, or None. Activations need more besides."""
    import torch

    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        where, room = "free GPU memory", free
    else:
        try:
            room = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            return None
        where = f"available {device} memory"
    if weight_bytes > 0.8 * room:
        return f"{weight_bytes / 2**30:.1f} GiB of weights do not fit in the {room / 2**30:.1f} GiB of {where}"
    return None


# -- inputs -----------------------------------------------------------------------------

class Photos:
    """Real photos: the dog's training photos (positives) and the ImageNet sample (negatives, find);
    synthetic noise images where ../shared/data is absent (e.g. on a bare GPU machine), said so."""

    def __init__(self, data: Path):
        positives = sorted((data / "concepts" / "dog" / "train").glob("*.jpg"))
        pool = sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))
        self.real = bool(positives and pool)
        self.source = str(data) if self.real else f"synthetic noise images ({data} not found)"
        self.positives = [str(p) for p in positives] if self.real else [f"synthetic-pos-{i}" for i in range(3)]
        self.pool = [str(p) for p in pool] if self.real else [f"synthetic-neg-{i}" for i in range(64)]

    def load(self, key: str, flip: bool = False):
        from PIL import Image, ImageOps

        if self.real:
            image = Image.open(key).convert("RGB")
        else:
            import numpy as np

            rng = np.random.default_rng(zlib.crc32(key.encode()))
            image = Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))
        return ImageOps.mirror(image) if flip else image


def paper_steps() -> dict:
    """Steps a concept takes at the paper's settings, from the trainer's own split and epoch draw."""
    from yollava_cli.learning.synthesis import TrainingData
    from yollava_cli.learning.train_config import TrainConfig
    from yollava_cli.learning.training import epoch_examples, split_data
    from yollava_cli.store.states import NegativeKind

    config = TrainConfig()
    negatives = [(f"h{i}", NegativeKind.HARD) for i in range(PAPER["hard_negatives"])] + \
                [(f"e{i}", NegativeKind.EASY) for i in range(PAPER["easy_negatives"])]
    photos = [f"p{i}" for i in range(PAPER["photos"])]
    attributes = [(f"q{i}", f"a{i}") for i in range(PAPER["photos"] * 3)]
    split = split_data(TrainingData(photos, negatives, attributes, "dog"), config)
    per_epoch = [math.ceil(len(epoch_examples(CONCEPT, split, e, config)) / config.batch_size) for e in range(PAPER["epochs"])]
    scored = len(split.val_positives) + len(split.val_negatives) + 12  # validation + the train-accuracy probe
    return {"assumed": {**PAPER, "batch_size": config.batch_size, "k": config.k, "lr": config.lr,
                        "note": "every epoch run (the trainer stops 3 epochs after the best: an upper bound)"},
            "steps": sum(per_epoch), "steps_per_epoch": per_epoch[0], "scored_per_epoch": scored,
            "unique_photos": PAPER["photos"] * 2 + len(negatives)}  # photos and their mirror images


# -- measuring --------------------------------------------------------------------------

class Clock:
    """Wall time with the device drained before each reading (CUDA runs asynchronously)."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device == "cuda" else (
            torch.mps.synchronize if device == "mps" else (lambda: None))

    def __call__(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def median(self, fn, repeats: int) -> tuple[float, list[float]]:
        self(fn)  # warm-up: allocations, kernel selection, the feature cache
        times = [self(fn) for _ in range(repeats)]
        return statistics.median(times), times


class Memory:
    """Peak memory of a phase: the GPU's allocator peak, reset per phase; on a CPU, the process' RSS
    peak (it cannot be reset: cumulative over the run)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device == "cuda"
        self.kind = "torch.cuda.max_memory_allocated, reset per phase" if self.cuda else \
            "process RSS peak (resource.getrusage ru_maxrss), cumulative over the run"
        self.torch = torch

    def reset(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.cuda:
            return round(self.torch.cuda.max_memory_allocated() / 2**30, 3)
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
        return round(kib / (2**30 if sys.platform == "darwin" else 2**20), 3)

    def allocated_gib(self) -> float | None:
        return round(self.torch.cuda.memory_allocated() / 2**30, 3) if self.cuda else None


def measure(vlm, photos: Photos, steps: int, repeats: int, clock: Clock, memory: Memory, plan: dict) -> dict:
    import torch

    from yollava_cli.learning.synthesis import recognition_pair, score_question
    from yollava_cli.models.prompts import Prompt

    out = {"weights_gib": memory.allocated_gib()}

    def prompt(key: str, question: str, cached: bool = True, flip: bool = False) -> Prompt:
        view = f"{slug(key)}{'-flip' if flip else ''}"
        return Prompt(question, [lambda: photos.load(key, flip)], [view if cached else None], [CONCEPT])

    # a training step: 4 positive views (photos and mirror images), 4 negatives, as the trainer batches them
    vlm.tokens.add(CONCEPT, K, seed=0, init_word="dog")
    params = vlm.tokens.parameters(CONCEPT)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    views = [(photos.positives[i % len(photos.positives)], i >= len(photos.positives)) for i in range(BATCH // 2)]
    examples = [(prompt(key, q, flip=flip), a) for i, (key, flip) in enumerate(views)
                for q, a in [recognition_pair(CONCEPT, True, i)]]
    examples += [(prompt(key, q), a) for i, key in enumerate(photos.pool[: BATCH - len(examples)])
                 for q, a in [recognition_pair(CONCEPT, False, i)]]
    losses = []

    def train_step():  # what Trainer runs per step: encode (features from the cache), collate, loss, step
        loss = vlm.loss(vlm.prompts.collate([vlm.prompts.encode(p, a) for p, a in examples]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    before = [p.detach().clone() for p in params]
    memory.reset()
    step_s, step_times = clock.median(train_step, steps)
    out["train"] = {"batch": BATCH, "steps_measured": steps, "step_s": round(step_s, 4),
                    "step_s_each": [round(t, 4) for t in step_times],
                    "sequence_tokens": int(max(len(vlm.prompts.encode(p, a).input_ids) for p, a in examples)),
                    "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
                    "rows_changed": all(not torch.equal(b, p.detach()) for b, p in zip(before, params)),
                    "peak_gib": memory.peak_gib()}

    # one photo through the vision tower and projector (uncached)
    memory.reset()
    image = photos.load(photos.pool[0])
    vision_s, _ = clock.median(lambda: vlm.image_features([image]), repeats)
    out["vision"] = {"s_per_photo": round(vision_s, 4), "feature_tokens": int(vlm.image_features([image])[0].shape[0])}

    # find: 32 photo prompts scored yes/no, cold (vision tower each time) and warm (features cached)
    keys = (photos.positives + photos.pool)[:FIND_PHOTOS]
    question = score_question(CONCEPT)
    cold = [prompt(key, question, cached=False) for key in keys]
    warm = [prompt(key, question) for key in keys]
    cold_s, _ = clock.median(lambda: vlm.yes_probabilities(cold), repeats)
    warm_s, _ = clock.median(lambda: vlm.yes_probabilities(warm), repeats)
    out["find"] = {"photos": len(keys), "cold_s": round(cold_s, 4), "warm_s": round(warm_s, 4),
                   "photos_per_s_cold": round(len(keys) / cold_s, 2), "photos_per_s_warm": round(len(keys) / warm_s, 2),
                   "peak_gib": memory.peak_gib()}

    # decode: a text prompt, 64 new tokens; each forward of the model during generate makes one token
    memory.reset()
    calls, firsts, counts = [], [], []
    hook = vlm.model.register_forward_hook(lambda *_: calls.append(time.perf_counter()))
    text = Prompt(DECODE_PROMPT)

    def answer():
        calls.clear()
        start = time.perf_counter()
        vlm.generate(text, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=0)
        firsts.append(calls[0] - start)
        counts.append(len(calls))

    try:
        answer_s, _ = clock.median(answer, repeats)
    finally:
        hook.remove()
    first_s, tokens = statistics.median(firsts[1:]), statistics.median(counts[1:])
    out["decode"] = {"new_tokens": int(tokens), "answer_s": round(answer_s, 4), "first_token_s": round(first_s, 4),
                     "tokens_per_s": round((tokens - 1) / max(answer_s - first_s, 1e-9), 2),
                     "sampling": "temperature 1, seed 0 (greedy on random weights loops; the loop guard would stop it)",
                     "peak_gib": memory.peak_gib()}

    # the whole concept at the paper's settings, extrapolated from the measured rates
    steps_s = plan["steps"] * step_s
    features_s = plan["unique_photos"] * vision_s
    scoring_s = PAPER["epochs"] * plan["scored_per_epoch"] / out["find"]["photos_per_s_warm"]
    out["concept"] = {"extrapolated": True,
                      "how": f"{plan['steps']} steps x the median step, {plan['unique_photos']} photos through the "
                             f"vision tower once, {plan['scored_per_epoch']} prompts scored per epoch x "
                             f"{PAPER['epochs']} epochs at the warm find rate; measured {steps} step{'s' if steps != 1 else ''}, not run",
                      "steps": plan["steps"], "s": round(steps_s + features_s + scoring_s, 1),
                      "minutes": round((steps_s + features_s + scoring_s) / 60, 2),
                      "parts_s": {"steps": round(steps_s, 1), "features": round(features_s, 1), "scoring": round(scoring_s, 1)}}
    out["peak_gib"] = max(out[phase]["peak_gib"] for phase in ("train", "find", "decode"))
    return out


# -- the cases --------------------------------------------------------------------------

def run_case(name: str, args, policy, photos: Photos, plan: dict) -> dict:
    import torch

    from yollava_cli.errors import UserError
    from yollava_cli.models.compute import current_policy
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.models.vlm import VLM

    spec = MODELS[name]
    config = llava_config(name, args.tiny)
    params = parameter_count(config)
    case = {"params": params, "quantize": spec["quantize"],
            "config": {"hidden": config.text_config.hidden_size, "layers": config.text_config.num_hidden_layers,
                       "heads": config.text_config.num_attention_heads,
                       "intermediate": config.text_config.intermediate_size, "vocab": config.text_config.vocab_size,
                       "image_token": config.image_token_id, "image_size": config.vision_config.image_size,
                       "vision_layers": config.vision_config.num_hidden_layers}}
    dtype = policy.load_dtype
    if spec["quantize"] != "none":
        try:
            policy = current_policy(spec["quantize"])
        except UserError as e:
            return {**case, "status": "skipped", "reason": str(e)}
        missing = [p for p in ("bitsandbytes", "accelerate") if version(p) is None]
        if missing:
            return {**case, "status": "skipped", "reason": f"{spec['quantize']} needs {' and '.join(missing)}: pip install {' '.join(missing)}"}
    full_bytes = params * torch.empty((), dtype=dtype).element_size()
    reason = room_for(full_bytes, policy.device)
    if reason:
        return {**case, "status": "skipped", "reason": reason}
    clock, memory = Clock(policy.device), Memory(policy.device)
    case["memory_kind"] = memory.kind
    started = time.perf_counter()
    processor = processor_for(config)
    model = random_model(config, policy.device, dtype)
    clock.sync()
    case["build_s"] = round(time.perf_counter() - started, 2)
    folder = None
    try:
        if spec["quantize"] == "none":
            vlm = VLM(model, processor, f"random-{name}", policy=policy)
        else:  # through yollava's own loader, as `--model FOLDER --quantize 4bit` runs
            folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=args.scratch))
            started = time.perf_counter()
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            case["save_s"] = round(time.perf_counter() - started, 2)
            del model
            if policy.device == "cuda":
                torch.cuda.empty_cache()
            started = time.perf_counter()
            vlm = load_vlm(str(folder), quantize=spec["quantize"])
            case["load_s"] = round(time.perf_counter() - started, 2)
            case["policy"] = vlm.policy.summary()
        log(f"{name}: measuring ({args.steps} steps, {args.repeats} repeats)")
        return {**case, "status": "measured", **measure(vlm, photos, args.steps, args.repeats, clock, memory, plan)}
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def ratios(models: dict) -> dict:
    """The other models against the first measured one, only for models measured in this run."""
    measured = [n for n, m in models.items() if m.get("status") == "measured"]
    if len(measured) < 2:
        return {}
    base = models[measured[0]]
    out = {}
    for name in measured[1:]:
        m = models[name]
        out[f"{name} / {measured[0]}"] = {
            "train_step_s": round(m["train"]["step_s"] / base["train"]["step_s"], 2),
            "decode_tokens_per_s": round(m["decode"]["tokens_per_s"] / base["decode"]["tokens_per_s"], 2),
            "find_photos_per_s_warm": round(m["find"]["photos_per_s_warm"] / base["find"]["photos_per_s_warm"], 2),
            "peak_gib": round(m["peak_gib"] / base["peak_gib"], 2),
        }
    return out


def log(text: str):
    print(f"[bench_gpu] {text}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (hidden 64, 2 layers): seconds on a CPU")
    parser.add_argument("--steps", type=int, default=8, help="training steps measured (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the find, vision and decode timings")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/gpu-<device>[-tiny].json)")
    parser.add_argument("--data", type=Path, default=DATA, help="shared data (photos); synthetic ones if absent")
    parser.add_argument("--scratch", default=None, help="folder for the 4-bit case's saved model (default: the temp dir)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or args.steps < 1 or args.repeats < 1:
        parser.error(f"unknown model(s) {', '.join(unknown)}: use {', '.join(MODELS)}" if unknown else "--steps and --repeats must be >= 1")

    os.environ["YOLLAVA_HOME"] = tempfile.mkdtemp(prefix="yollava-bench-gpu-")  # no user config, a fresh cache
    import torch

    from yollava_cli.models.compute import current_policy
    from yollava_cli.models.cores import use_idle_cores

    use_idle_cores()
    policy = current_policy()
    where = environment(policy)
    out = args.out or REPO / "bench" / "results" / f"gpu-{slug(where['device_name'])}{'-tiny' if args.tiny else ''}.json"
    photos = Photos(args.data)
    plan = paper_steps()
    report = {"bench": "bench/bench_gpu.py", "tiny": args.tiny, "where": where,
              "settings": {"models": names, "steps": args.steps, "repeats": args.repeats, "batch": BATCH, "k": K,
                           "find_photos": FIND_PHOTOS, "decode_new_tokens": NEW_TOKENS, "photos": photos.source,
                           "weights": "random init from configs (timings do not depend on the values)",
                           "chat_template": "ChatML (a few tokens longer than LLaVA-1.5's USER:/ASSISTANT:)"},
              "paper_concept": plan, "models": {}, "ratios": {}}
    failed = False
    for name in names:
        log(f"{name}: building{' (tiny)' if args.tiny else ''} on {policy.device}")
        try:
            report["models"][name] = run_case(name, args, policy, photos, plan)
        except Exception as e:  # noqa: BLE001 one model failing (out of memory, say) keeps the others' results
            failed = True
            report["models"][name] = {"status": "failed", "error": f"{type(e).__name__}: {str(e).strip()[:500]}",
                                      "traceback": traceback.format_exc().splitlines()[-6:]}
        if policy.device == "cuda":
            torch.cuda.empty_cache()
        report["ratios"] = ratios(report["models"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"{name}: {report['models'][name]['status']}; wrote {out}")
    print(json.dumps(report, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
