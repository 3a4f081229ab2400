"""Shared by the benchmarks: a fresh data dir with one shared subject added, the ImageNet sample as
its pool, negatives mined, and pocket loaded."""

import os
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def prepared_concept(subject: str):
    os.environ["YOLLAVA_HOME"] = tempfile.mkdtemp(prefix="yollava-bench-")
    from yollava_cli.config import data_dir
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.learning.mining import add_pool, mine
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.store.concepts import add_concept
    from yollava_cli.store.registry import Registry

    registry = Registry(data_dir())
    add_concept(registry, subject, [DATA / "concepts" / subject / "train"], kind="pet")
    embedder = load_embedder("efficientnet-lite0")
    add_pool(registry, "imagenet", DATA / "pool" / "imagenet-sample", embedder)
    mine(registry, subject, embedder)
    return registry, load_vlm("pocket")
