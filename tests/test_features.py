"""The image-feature cache: bounded on disk and in memory, least recently used evicted first, a
damaged file recomputed, and its folder keyed on what changes the features."""

import os
import time

import torch
from tiny import tiny_llava

from yollava_cli.models.feature_cache import FeatureCache
from yollava_cli.models.images import ImageInput
from yollava_cli.models.vlm import VLM, feature_cache_name

LLAVA_15 = (576, 4096)  # LLaVA-1.5's features for one photo: 4.7 MB in bf16, 9.4 MB in fp32


def test_a_ten_thousand_photo_find_stays_under_the_cap(tmp_path):
    """10,000 photos through a cache capped at 1/100 of their size (a feature 1/256 of LLaVA-1.5's,
    so the test writes 180 MB, not 47 GB): the folder never passes the cap."""
    shape = (LLAVA_15[0] // 16, LLAVA_15[1] // 16)
    one = shape[0] * shape[1] * 2  # bf16
    cap = 100 * one
    cache = FeatureCache(tmp_path / "f", disk_bytes=cap, memory_bytes=10 * one)
    feature = ImageInput(torch.zeros(shape, dtype=torch.bfloat16), "<image>" * shape[0])
    peak = 0
    for i in range(10_000):
        cache.put(f"photo{i}", feature)
        if i % 500 == 0:
            peak = max(peak, cache.disk_usage())
    assert max(peak, cache.disk_usage()) <= cap
    assert cache.disk_usage() >= 0.8 * cap  # it evicts to 90%, not to nothing
    assert cache.in_memory <= 10 * one
    assert cache.get("photo9999") is not None and cache.get("photo0") is None


def test_the_least_recently_used_go_first(tmp_path):
    one = torch.ones(64, 64)  # 16.9 KB on disk, with its placeholder text
    cache = FeatureCache(tmp_path / "f", disk_bytes=5 * 17_000, memory_bytes=0)
    for i in range(5):
        cache.put(f"p{i}", ImageInput(one * i, "<image>" * 64))
        past = time.time() - 100 + i
        os.utime(tmp_path / "f" / f"p{i}.safetensors", (past, past))
    assert cache.get("p0") is not None  # used again: now the most recent
    cache.put("p5", ImageInput(one * 5, "<image>" * 64))
    kept = sorted(p.stem for p in (tmp_path / "f").glob("*.safetensors"))
    assert "p0" in kept and "p1" not in kept and "p5" in kept


def test_a_damaged_cache_file_is_recomputed(tmp_path):
    vlm = VLM(*tiny_llava(), "tiny", cache_dir=tmp_path)
    from PIL import Image

    photo = Image.new("RGB", (64, 64), (10, 200, 30))
    first = vlm.image_features([photo], ["abc"])[0]
    path = vlm.features.folder / "abc.safetensors"
    path.write_bytes(b"\x00garbage")
    fresh = VLM(*tiny_llava(), "tiny", cache_dir=tmp_path)  # a later process reads the disk
    again = fresh.image_features([photo], ["abc"])[0]
    assert torch.equal(first, again) and fresh.vision_calls == 1
    assert path.stat().st_size > 100  # rewritten whole


def test_the_cache_folder_changes_with_precision_and_processor_settings():
    model, processor = tiny_llava()
    base = feature_cache_name("fp", torch.float32, processor)
    assert feature_cache_name("fp", torch.float32, processor) == base  # stable across processes
    assert feature_cache_name("fp", torch.bfloat16, processor) != base
    processor.image_processor.size = {"shortest_edge": processor.image_processor.size["shortest_edge"] * 2}
    assert feature_cache_name("fp", torch.float32, processor) != base
