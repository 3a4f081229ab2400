"""ask and find on `pocket` with a trained concept, on this CPU.

Reports time to first token (cold: first question after loading, photo features not cached;
warm: the same question again), tokens/s, the same text question with three owner's notes (their
ranking before the first token, the contrast pass per token: use.ask.steered) and the first
token with fifty, and `find` photos/s with a cold vs warm feature cache.
Baselines in the same process: a long answer decoded by pocket as transformers loads and runs it
(fp32, oneDNN), and scoring each find batch with one plain forward (logits at every position, no
shared opening).
Medians of --repeats runs.  Run:  python bench/bench_ask.py  (writes bench/results/ask.json)
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from measure import where
from setup_concept import DATA, prepared_concept

REPO = Path(__file__).resolve().parents[1]


def plain_next_token_logits(vlm):
    """The baseline scoring path: the whole batch through the model in one forward pass, the head at
    every position (VLM.next_token_logits runs the shared opening once and the head at the end)."""
    import torch

    def logits(prompts):
        encoded = [vlm.prompts.encode(p) for p in prompts]
        with torch.no_grad():
            out = vlm.forward(vlm.prompts.collate(encoded))
        return torch.stack([out[i, len(e.input_ids) - 1] for i, e in enumerate(encoded)]).float()

    return logits


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subject", default="dog")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch
    from transformers.generation.streamers import BaseStreamer

    from yollava_cli.config import data_dir
    from yollava_cli.learning.training import TrainConfig, train_concept
    from yollava_cli.models.decoding import Sampling
    from yollava_cli.models.pocket.model import load_pocket
    from yollava_cli.models.prompts import Prompt
    from yollava_cli.use.ask import ask
    from yollava_cli.use.find import find
    from yollava_cli.use.session import open_images

    registry, vlm = prepared_concept(args.subject)
    train_concept(registry, vlm, args.subject, TrainConfig(epochs=3))

    photo = sorted((DATA / "concepts" / args.subject / "test").glob("*.jpg"))[0]
    images, keys = open_images([photo])
    options = Sampling(max_new_tokens=48)
    cold = ask(vlm, [args.subject], f"What is <{args.subject}> doing?", images, keys, options)["timings"]
    warm = [ask(vlm, [args.subject], f"What is <{args.subject}> doing?", images, keys, options)["timings"] for _ in range(args.repeats)]
    text = [ask(vlm, [args.subject], "What should I buy him for his birthday?", [], [], options)["timings"] for _ in range(args.repeats)]
    notes = [f"<{args.subject}> is 4 years old.", f"<{args.subject}> loves chasing tennis balls.",
             f"<{args.subject}> is scared of the vacuum cleaner."]
    noted = [ask(vlm, [args.subject], "What should I buy him for his birthday?", [], [], options, notes=notes)["timings"]
             for _ in range(args.repeats)]
    fifty = [f"{notes[i % 3][:-1]} (note {i})." for i in range(50)]  # half the most a concept may hold
    noted_50 = [ask(vlm, [args.subject], "What should I buy him for his birthday?", [], [], options, notes=fifty)["timings"]
                for _ in range(args.repeats)]
    rate = lambda t: (t["tokens"] - 1) / (t["total_s"] - t["first_token_s"]) if t["tokens"] > 1 else None

    story = "Write a long story about a dog."  # a long answer: pocket writes ~40 tokens

    def plain_rate(model) -> float:
        """tokens/s after the first, transformers' own generate on the story prompt (EOS counted)."""
        ids = vlm.prompts.encode(Prompt(story)).input_ids[None]
        times = []

        class Clock(BaseStreamer):  # put() gets the prompt, then each new token
            def put(self, value):
                times.append(time.perf_counter())

            def end(self):
                times.append(time.perf_counter())

        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False, streamer=Clock())
        return (out.shape[1] - ids.shape[1] - 1) / (times[-1] - times[1])

    plain_model, _ = load_pocket(data_dir() / "models" / "pocket")  # as transformers loads it: fp32 on CPU
    story_runs = [ask(vlm, [], story, [], [], Sampling(max_new_tokens=64))["timings"] for _ in range(args.repeats)]
    decode = {"ours": statistics.median(map(rate, story_runs)),
              "plain": statistics.median(plain_rate(plain_model) for _ in range(args.repeats))}
    del plain_model

    folder = DATA / "pool" / "imagenet-sample"
    sample = sorted(folder.glob("*.jpg"))[:64]
    scratch = Path(tempfile.mkdtemp())
    for p in sample:
        (scratch / p.name).symlink_to(p)
    vlm.features.memory.clear()
    start = time.perf_counter()
    find(registry, vlm, args.subject, [scratch], by="tokens")
    cold_find = len(sample) / (time.perf_counter() - start)
    warm_find = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        find(registry, vlm, args.subject, [scratch], by="tokens")
        warm_find.append(len(sample) / (time.perf_counter() - start))

    plain_find = []
    vlm.next_token_logits = plain_next_token_logits(vlm)  # the baseline, shadowing the shared-opening path
    for _ in range(args.repeats):
        start = time.perf_counter()
        find(registry, vlm, args.subject, [scratch], by="tokens")
        plain_find.append(len(sample) / (time.perf_counter() - start))
    del vlm.next_token_logits
    report = {
        "machine": where(), "repeats": args.repeats,
        "ttft_s": {"cold_with_photo": cold["first_token_s"], "warm_with_photo": statistics.median(t["first_token_s"] for t in warm),
                   "warm_text_only": statistics.median(t["first_token_s"] for t in text)},
        "tokens_per_s": statistics.median(r for r in map(rate, warm + text) if r),
        "text_with_50_notes_ttft_s": statistics.median(t["first_token_s"] for t in noted_50),
        "text_with_3_notes": {"ttft_s": statistics.median(t["first_token_s"] for t in noted),
                              "tokens_per_s": round(statistics.median(r for r in map(rate, noted) if r), 1),
                              "tokens_per_s_ratio_to_no_notes": round(statistics.median(r for r in map(rate, noted) if r)
                                                                      / statistics.median(r for r in map(rate, text) if r), 2)},
        "long_answer_tokens_per_s": {"ours": round(decode["ours"], 1), "plain_fp32_transformers": round(decode["plain"], 1),
                                     "ratio": round(decode["ours"] / decode["plain"], 2), "tokens": story_runs[0]["tokens"]},
        "find_photos_per_s": {"cold_cache": round(cold_find, 1), "warm_cache": round(statistics.median(warm_find), 1),
                              "warm_cache_plain_scoring": round(statistics.median(plain_find), 1),
                              "ratio": round(statistics.median(warm_find) / statistics.median(plain_find), 2)},
    }
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "ask.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
