"""Recognition signals as a registry (issue #36): a new signal is one module that registers itself
(tests/brightness_signal.py, a toy), fitted into the fusion at training and used by `find --by
fused`, with no other file edited; checkpoints and bundles written with the old three-weight
fusion score as they did."""

import importlib
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, tiny_world
from safetensors import safe_open
from safetensors.torch import save

from yollava_cli.learning.signals import SIGNALS, Signal, register, registered
from yollava_cli.store.registry import Registry


@contextmanager
def brightness():
    """The toy signal registered (by importing its module) for the block, and gone after it."""
    sys.modules.pop("brightness_signal", None)
    try:
        yield importlib.import_module("brightness_signal")
    finally:
        SIGNALS.pop("brightness", None)
        sys.modules.pop("brightness_signal", None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """<bo> trained with the shipped signals only."""
    return tiny_world(tmp_path_factory.mktemp("signals"))


@pytest.fixture(scope="module")
def bright_world(tmp_path_factory):
    """<bo> trained while the toy signal was registered."""
    with brightness():
        return tiny_world(tmp_path_factory.mktemp("bright"))


def checkpoint(home):
    registry = Registry(home)
    return home / registry.current_checkpoint(registry.concept("bo").id).file


def edit_recognizer(path, edit) -> None:
    """Rewrite the checkpoint's recognizer metadata with `edit`; its tensors as they were."""
    with safe_open(str(path), "pt") as f:
        meta, tensors = json.loads(f.metadata()["yollava"]), {k: f.get_tensor(k) for k in f.keys()}
    meta["recognizer"] = edit(meta["recognizer"])
    path.write_bytes(save(tensors, metadata={"yollava": json.dumps(meta)}))


def recognizer_meta(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["yollava"])["recognizer"]


def find(world, *args):
    result = invoke("find", "bo", world["data"] / "concepts" / "dog" / "train", world["root"] / "pool", *args,
                    "--model", world["model"], "--json", "--explain", home=world["home"])
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def logit(p):
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def test_a_toy_signal_is_fitted_into_the_fusion_and_fused_by_find(bright_world):
    path = checkpoint(bright_world["home"])
    stored = recognizer_meta(path)
    assert set(stored["fusion"]) == {"head", "tokens", "brightness", "bias"} and stored["fusion_version"] == 3
    registry = Registry(bright_world["home"])
    assert 0 < registry.thresholds(registry.concept("bo").id)["brightness"] < 1  # calibrated under its name
    edit_recognizer(path, lambda r: {**r, "fusion": {**r["fusion"], "brightness": 20.0}})  # make its say unmistakable
    weights = recognizer_meta(path)["fusion"]
    with brightness():
        result = find(bright_world, "--by", "fused")
    fused = [r for r in result["results"] if r["signal"] == "fused"]
    assert fused and "brightness" in result["thresholds"]
    for r in fused:
        why = r["why"]
        assert why["brightness"] == pytest.approx(photo_brightness(r["path"]), abs=2e-4)
        expected = logit(why["head"]) + weights["tokens"] * (2 * why["tokens"] - 1) + weights["bias"]
        with_brightness = 1 / (1 + math.exp(-(expected + 20.0 * (2 * why["brightness"] - 1))))
        # each score in `why` is rounded to 4 places: their rounding bounds how far the logit can be off
        off = 5e-5 / max(why["head"] * (1 - why["head"]), 1e-6) + 1e-4 * (abs(weights["tokens"]) + 20.0)
        assert r["probability"] == pytest.approx(with_brightness, abs=with_brightness * (1 - with_brightness) * off + 1e-4)
    assert any(abs(r["why"]["brightness"] - 0.5) > 0.05 for r in fused)  # so the weight moved the scores
    with brightness():
        alone = find(bright_world, "--by", "brightness")
    assert {r["signal"] for r in alone["results"]} == {"brightness"}
    assert {r["path"]: r["probability"] for r in alone["results"]} == {
        r["path"]: pytest.approx(photo_brightness(r["path"]), abs=2e-4) for r in alone["results"]}


def photo_brightness(path) -> float:
    from yollava_cli.store.photos import read_photo
    from yollava_cli.use.find import FIND_SIDE

    return float(np.asarray(read_photo(Path(path), FIND_SIDE).image.convert("L"), np.float32).mean() / 255)


def test_a_signal_the_fusion_names_but_this_machine_lacks_is_left_out(bright_world):
    """A concept trained with a plugin signal still fuses, by the signals this machine has."""
    result = find(bright_world, "--by", "fused")
    assert result["results"] and all("brightness" not in r["why"] for r in result["results"])
    assert "brightness" not in result["thresholds"]


def test_checkpoints_and_bundles_in_the_three_weight_layout_score_as_before(world, tmp_path):
    """main's layout: {"fusion": [head, tokens' vote, bias], "fusion_version": 2}; version 1 (the
    tokens' logit weighed, not their vote) was never reused: the head alone."""
    path = checkpoint(world["home"])
    named = recognizer_meta(path)
    assert list(named["fusion"]) == ["head", "tokens", "bias"]
    now = find(world, "--by", "fused")
    edit_recognizer(path, lambda r: {**r, "fusion": [r["fusion"][k] for k in ("head", "tokens", "bias")], "fusion_version": 2})
    assert find(world, "--by", "fused") == now
    bundle = tmp_path / "old.yollava"
    assert invoke("export", "bo", bundle, "--with-photos", home=world["home"]).returncode == 0
    other = {**world, "home": tmp_path / "other"}
    imported = invoke("import", bundle, "--model", world["model"], home=other["home"])
    assert imported.returncode == 0, imported.stderr
    assert scored(find(other, "--by", "fused")) == scored(now)
    edit_recognizer(path, lambda r: {**r, "fusion_version": 1})
    head_alone = find(world, "--by", "fused")["results"]
    assert all(r["probability"] == r["why"]["head"] for r in head_alone)
    edit_recognizer(path, lambda r: named)


def scored(result) -> list[tuple]:
    return [(r["path"], r["probability"], r["signal"], r["verdict"]) for r in result["results"]]


def test_a_signal_name_is_taken_once():
    registered()  # the shipped signals, tokens among them

    class Impostor(Signal):
        name = "tokens"

    with pytest.raises(ValueError, match="two recognition signals are named 'tokens'"):
        register(Impostor())
    for reserved in ("head", "fused", "bias"):
        Impostor.name = reserved
        with pytest.raises(ValueError, match="cannot be named"):
            register(Impostor())
