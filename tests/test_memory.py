"""Memory does not grow with the number of photos: `add` and `find` read, decode and store or score
one photo (or one scoring batch) at a time. Counted here with tracemalloc, which sees every file's
bytes and every encoded JPEG Python holds; the whole process's peak, 30 vs 3,000 camera-sized
photos, is bench/bench_memory.py's."""

import gc
import random
import tracemalloc

from PIL import Image
from tiny import tiny_llava

from yollava_cli.learning.events import ScoringPhotos
from yollava_cli.models.vlm import SCORE_BATCH, VLM
from yollava_cli.reporting import reporting
from yollava_cli.store.concepts import add_concept
from yollava_cli.store.registry import Registry
from yollava_cli.use.find import find

SIZE = (360, 270)


def photos(folder, count: int, seed: int = 0) -> int:
    """`count` distinct noisy JPEGs (noise does not compress: each file is ~100 KB); the largest size."""
    folder.mkdir()
    rng = random.Random(seed)
    noise = Image.effect_noise(SIZE, 80).convert("RGB")
    for i in range(count):
        tint = Image.new("RGB", SIZE, tuple(rng.randrange(256) for _ in range(3)))
        Image.blend(noise, tint, 0.3).save(folder / f"{i}.jpg", quality=95)
    return max(p.stat().st_size for p in folder.iterdir())


def traced_peak(fn) -> int:
    """The most memory Python held at once while fn ran, above what it held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_add_holds_one_photo_at_a_time(tmp_path):
    """add kept every decoded photo and its encoded JPEG until the transaction (1.16 GB for 300
    photos); now each is staged on disk before the next is read."""
    one = max(photos(tmp_path / "few", 4), photos(tmp_path / "many", 24, seed=1))
    registry = Registry(tmp_path / "home")
    add_concept(registry, "warm", [tmp_path / "few"])  # the first add's one-time allocations, untraced
    few = traced_peak(lambda: add_concept(registry, "few", [tmp_path / "few"]))
    many = traced_peak(lambda: add_concept(registry, "many", [tmp_path / "many"]))
    assert many - few < 3 * one, (few, many)  # 20 more photos: 20 more JPEGs if they were all held
    assert registry.concept_photo_count(registry.concept("many").id) == 24
    assert not any((tmp_path / "home" / "incoming").iterdir())  # the staging folders are gone


def test_find_holds_one_scoring_batch_at_a_time(tmp_path):
    """find kept every file's bytes from hashing to the end (2.87 GB over 300 photos of 8.8 MB), and
    with --by tokens every decoded photo; now a photo is read again when it is scored, a batch at a
    time. Checked after each batch (find's progress callback): the decoded photos alive, and the
    most Python held at once."""
    one = max(photos(tmp_path / "few", 4), photos(tmp_path / "many", 40, seed=1))
    registry = Registry(tmp_path / "home")
    add_concept(registry, "bo", [tmp_path / "few"])
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    peaks, found, alive = {}, {}, []

    def images_alive() -> int:
        return sum(issubclass(type(o), Image.Image) for o in gc.get_objects())

    gc.collect()
    before = images_alive()  # what earlier tests in this process left alive is not find's

    def count_images(event):
        if isinstance(event, ScoringPhotos):
            alive.append(images_alive() - before)

    def search(name):
        with reporting(count_images):
            found[name] = find(registry, vlm, "bo", [tmp_path / name], by="tokens")

    for name in ("few", "many"):
        vlm.features.clear()  # every photo decoded: none is scored from cached features
        peaks[name] = traced_peak(lambda name=name: search(name))
    assert len(found["many"]["results"]) == 40 and not found["many"]["skipped"]
    assert len(alive) == 1 + 3 and max(alive) <= SCORE_BATCH, alive  # 40 photos in 3 batches: not 40 at once
    assert peaks["many"] - peaks["few"] < 3 * one, peaks  # 36 more photos: 36 more files if all were held


def test_doctor_leaves_a_live_adds_staged_photos_and_collects_a_dead_ones(tmp_path):
    """add stages its photos outside the store before its transaction; a long add's staged files
    may be older than doctor's staleness cut, so a live one (its folder flocked) is left alone,
    while a killed add's leftovers go to the trash."""
    import os
    import time

    from yollava_cli.store.doctor import examine
    from yollava_cli.store.fileio import staging_folder

    registry = Registry(tmp_path / "home")
    hour_ago = time.time() - 3600
    dead = tmp_path / "home" / "incoming" / "killed"
    dead.mkdir(parents=True)
    with staging_folder(registry.root) as live:
        for file in (live / "a.tmp", dead / "b.tmp"):
            file.write_bytes(b"x")
            os.utime(file, (hour_ago, hour_ago))
        report = examine(registry, fix=True)
        assert (live / "a.tmp").exists() and not (dead / "b.tmp").exists()
    assert [p["detail"] for p in report["problems"]] == [
        "incoming/killed/b.tmp is a temporary file left by a stopped write"]
    assert not live.exists()
