"""pocket on CPU: load time (cold = first build, warm = cached), time to first token, tokens/s, peak RSS.

Usage: python bench/bench_pocket.py [--image PATH] [--runs 5]; writes bench/results/pocket-bench.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from threading import Thread

import torch
from PIL import Image
from transformers import TextIteratorStreamer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from measure import where

from yollava_cli.models.pocket.model import load_pocket  # noqa: E402

COLD = ("import sys, time; sys.path.insert(0, {root!r}); from pathlib import Path; "
        "from yollava_cli.models.pocket.model import load_pocket; t = time.perf_counter(); load_pocket(Path({cache!r})); "
        "print(time.perf_counter() - t)")
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "concepts" / "dog" / "train" / "00.jpg"


def generate_timed(model, processor, image, new_tokens: int) -> tuple[float, float]:
    """(seconds to first streamed text, decode tokens/s after the first token)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this photo."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    start = time.perf_counter()
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True)
    kwargs = {**inputs, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "streamer": streamer}
    thread = Thread(target=model.generate, kwargs=kwargs)
    thread.start()
    first = None
    for _ in streamer:
        first = first or time.perf_counter()
    thread.join()
    end = time.perf_counter()
    return first - start, (new_tokens - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pocket-bench.json")
    args = parser.parse_args()
    image = Image.open(args.image) if args.image.exists() else Image.new("RGB", (512, 384), "gray")
    with tempfile.TemporaryDirectory() as cache:
        # Cold build in a child process so this process's peak RSS reflects normal (warm) use.
        code = COLD.format(root=str(ROOT), cache=cache)
        cold = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        warm_times = []
        for _ in range(3):
            model = processor = None
            t = time.perf_counter()
            model, processor = load_pocket(Path(cache))
            warm_times.append(time.perf_counter() - t)
    with torch.inference_mode():
        generate_timed(model, processor, image, 8)  # warm-up
        runs = [generate_timed(model, processor, image, args.new_tokens) for _ in range(args.runs)]
    result = {
        "machine": where(),
        "load_cold_s": round(cold, 2),
        "load_warm_s_median": round(statistics.median(warm_times), 2),
        "ttft_s_median": round(statistics.median(r[0] for r in runs), 3),
        "tokens_per_s_median": round(statistics.median(r[1] for r in runs), 1),
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
