"""pocket under each CPU compute policy (fp32, bf16), on this CPU, in one run.

For each policy, forced with YOLLAVA_PRECISION, on a fresh pocket load: a training step (a batch
of recognition examples with real photos, forward and backward through the concept's rows), a
find-sized scoring batch (16 photo prompts, prefill only), time to the first token and decode
tokens/s of a text answer. Plus the matrix products behind them on one thread (a training-shaped
64x576 @ 576x1536 and a decode-shaped 1x576 @ 576x1536). Reports medians of --repeats runs, the
ratio bf16 / fp32, which policy `auto` picks here and whether it is the fastest (within 10%).
Records the CPU, its flags and threads.
Run:  python bench/bench_precision.py  (writes bench/results/precision-<cpu>.json)
"""

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path

from measure import median_time
from setup_concept import prepared_concept

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("fp32", "bf16")


def matmuls(repeats: int) -> dict:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        w32 = torch.randn(1536, 576)
        for name, rows in (("train_64x576x1536", 64), ("decode_1x576x1536", 1)):
            x = torch.randn(rows, 576)
            fp32 = median_time(lambda: x @ w32.T, repeats * 10, warm_up=True)
            wb, xb = w32.bfloat16(), x.bfloat16()
            bf16 = median_time(lambda: xb @ wb.T, repeats * 10, warm_up=True)
            out[name] = {"fp32_ms": round(fp32 * 1e3, 4), "bf16_ms": round(bf16 * 1e3, 4), "bf16_over_fp32": round(bf16 / fp32, 2)}
        linear = torch.nn.Linear(576, 1536)
        x = torch.randn(64, 576, requires_grad=True)

        def step(autocast: bool):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = linear(x)
            y.float().sum().backward()

        fp32, bf16 = median_time(lambda: step(False), repeats * 5, warm_up=True), median_time(lambda: step(True), repeats * 5, warm_up=True)
        out["linear_fwd_bwd_64"] = {"fp32_ms": round(fp32 * 1e3, 3), "bf16_ms": round(bf16 * 1e3, 3), "bf16_over_fp32": round(bf16 / fp32, 2)}
    finally:
        torch.set_num_threads(before)
    return out


def measure(policy: str, registry, subject: str, repeats: int) -> dict:
    import torch
    from PIL import Image

    from yollava_cli.models.loading import load_vlm
    from yollava_cli.models.prompts import Prompt

    os.environ["YOLLAVA_PRECISION"] = policy
    vlm = load_vlm("pocket")
    assert vlm.policy.precision == policy
    photos = [p.sha256 for p in registry.concept_photos(registry.concept(subject).id)]
    negatives = [sha for sha, _ in registry.negatives(registry.concept(subject).id)]

    def views(sha: str):
        return Image.open(registry.root / registry.photo(sha).file).convert("RGB")

    vlm.tokens.add(subject, 16, seed=0, init_word="dog")
    params = vlm.tokens.parameters(subject)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    question = f"Is <{subject}> in this photo?"
    batch_examples = [(sha, f"Yes, <{subject}> is in this photo.") for sha in photos[:2]] + \
                     [(sha, f"No, <{subject}> is not in this photo.") for sha in negatives[:2]]
    encoded = [vlm.prompts.encode(Prompt(question, [lambda s=sha: views(s)], [sha], concepts=[subject]), answer)
               for sha, answer in batch_examples]

    def train_step():
        loss = vlm.loss(vlm.prompts.collate(encoded))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    scoring = [Prompt(question, [lambda s=sha: views(s)], [sha], concepts=[subject]) for sha in (photos + negatives)[:16]]
    text = Prompt("Write a long story about a dog and a cat who become friends.")
    first, tokens = [], []

    def answer():
        start = time.perf_counter()
        seen = []
        out = vlm.generate(text, max_new_tokens=64, on_text=lambda t: seen.append(time.perf_counter() - start))
        first.append(seen[0])
        tokens.append(len(vlm.tokenizer.encode(out, add_special_tokens=False)))

    step_s = median_time(train_step, repeats, warm_up=True)
    score_s = median_time(lambda: vlm.yes_probabilities(scoring), repeats, warm_up=True)
    first.clear(), tokens.clear()
    answer_s = median_time(answer, repeats, warm_up=True)
    first_s = statistics.median(first[1:])
    return {"train_step_s": round(step_s, 4), "score_16_photos_s": round(score_s, 4),
            "first_token_s": round(first_s, 4), "answer_64_tokens_s": round(answer_s, 4),
            "decode_tokens_per_s": round(statistics.median(tokens[1:]) / max(answer_s - first_s, 1e-9), 1),
            "policy": vlm.policy.summary()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subject", default="dog")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    from yollava_cli.models.compute import choose, detect

    capability = detect()
    registry, _ = prepared_concept(args.subject)
    results = {policy: measure(policy, registry, args.subject, args.repeats) for policy in POLICIES}
    chosen = choose(capability)
    ratios = {key: round(results["bf16"][key] / results["fp32"][key], 2)
              for key in ("train_step_s", "score_16_photos_s", "first_token_s", "answer_64_tokens_s")}
    fastest_ok = {key: results[chosen.precision][key] <= 1.1 * min(results[p][key] for p in POLICIES) for key in ratios}
    report = {
        "cpu": capability.describe(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "auto_policy": chosen.summary(), "auto_is_fastest_within_10pct": fastest_ok,
        "matmul_one_thread": matmuls(args.repeats), "pocket": results, "bf16_over_fp32": ratios,
        "repeats": args.repeats,
    }
    slug = re.sub(r"[^a-z0-9]+", "-", capability.cpu_model.lower()).strip("-") or "cpu"
    out = REPO / "bench" / "results" / f"precision-{slug}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
