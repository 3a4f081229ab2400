"""Mining benchmark: embed throughput per embedder, first vs cached `mine` on the 1000-photo pool,
and nearest-neighbour query time on a synthetic 1M x 512 float16 pool (numpy chunked vs faiss).

Run:  python bench/bench_mine.py [--repeats 5]   (writes bench/results/mine.json)
Times are medians of --repeats runs; ratios compare against a baseline measured in the same process.
"""

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import median_time, where

from yollava_cli.learning.embeddings import EfficientNetEmbedder
from yollava_cli.learning.mining import add_pool, mine, top_k
from yollava_cli.store.concepts import add_concept
from yollava_cli.store.photos import read_photo
from yollava_cli.store.registry import Registry

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def embed_throughput(embedder, images, repeats):
    seconds = median_time(lambda: embedder.embed(images), repeats)
    return len(images) / seconds


def open_clip_embedder():
    """ViT-B-32 with random weights: throughput depends on the architecture, not the weights."""
    if importlib.util.find_spec("open_clip") is None:
        return None
    import open_clip

    from yollava_cli.learning.embeddings import OpenClipEmbedder

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return OpenClipEmbedder(model, preprocess, "open_clip:ViT-B-32:random-timing-only")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pool-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    results = {"machine": where(), "repeats": args.repeats}

    pool_dir = DATA / "pool" / "imagenet-sample"
    images = [read_photo(p, max_side=512).image for p in sorted(pool_dir.glob("*.jpg"))[:64]]
    lite0 = EfficientNetEmbedder()
    results["embed_photos_per_s"] = {lite0.id: embed_throughput(lite0, images, args.repeats)}
    clip = open_clip_embedder()
    if clip:
        results["embed_photos_per_s"]["open_clip ViT-B-32"] = embed_throughput(clip, images, args.repeats)

    with tempfile.TemporaryDirectory() as home:
        registry = Registry(Path(home))
        add_concept(registry, "dog", [DATA / "concepts" / "dog" / "train"], kind="pet")
        start = time.perf_counter()
        add_pool(registry, "imagenet", pool_dir, lite0)
        mine(registry, "dog", lite0)
        first = time.perf_counter() - start
        cached = median_time(lambda: mine(registry, "dog", lite0), args.repeats)
        results["mine_1000_pool_s"] = {"first_with_embedding": first, "cached_median": cached,
                                       "speedup": first / cached}

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.f16"
        matrix = np.memmap(path, dtype=np.float16, mode="w+", shape=(args.pool_rows, 512))
        for start in range(0, args.pool_rows, 100_000):
            block = rng.standard_normal((min(100_000, args.pool_rows - start), 512)).astype(np.float32)
            matrix[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        matrix.flush()
        queries = rng.standard_normal((5, 512)).astype(np.float32)
        mapped = np.memmap(path, dtype=np.float16, mode="r", shape=(args.pool_rows, 512))
        numpy_s = median_time(lambda: top_k(queries, mapped, 100), args.repeats)
        results["query_1M_x_512_f16"] = {"numpy_chunked_memmap_s": numpy_s}
        if importlib.util.find_spec("faiss") is not None:
            import faiss

            index = faiss.IndexFlatIP(512)
            index.add(np.asarray(mapped, dtype=np.float32))
            faiss_s = median_time(lambda: index.search(queries, 100), args.repeats)
            results["query_1M_x_512_f16"].update(faiss_flat_s=faiss_s, numpy_over_faiss=numpy_s / faiss_s)
    out = REPO / "bench" / "results" / "mine.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
