"""Embedders: the open_clip path on a randomly initialised tiny open_clip model (no download)."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import embed_photos, load_embedder
from yollava_cli.store.registry import Registry

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_open_clip(tmp_path):
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip(reason="open_clip_torch is not installed (bash scripts/install.sh --open-clip installs it)")
    import open_clip
    import torch
    from safetensors.torch import save_file

    (tmp_path / "yollava-tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "yollava-tiny.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("yollava-tiny", pretrained=None)
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return model, preprocess, weights


def photos():
    return [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (50, 90), (10, 90, 250))]


def test_open_clip_embedder_loads_a_local_checkpoint(tiny_open_clip):
    import torch

    model, preprocess, weights = tiny_open_clip
    embedder = load_embedder(f"open_clip:yollava-tiny:{weights}")
    assert embedder.id == "open_clip:yollava-tiny:tiny.safetensors" and embedder.dim == 32
    vectors = embedder.embed(photos())
    with torch.no_grad():
        expected = model.eval().encode_image(torch.stack([preprocess(p) for p in photos()]))
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    assert vectors.shape == (2, 32) and np.allclose(vectors, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_open_clip_vectors_are_cached_per_embedder(tiny_open_clip, tmp_path):
    _, _, weights = tiny_open_clip
    registry = Registry(tmp_path / "home")
    embedder = load_embedder(f"open_clip:yollava-tiny:{weights}")
    images = dict(zip(["a" * 64, "b" * 64], photos()))
    loaders = {sha: (lambda im=im: im) for sha, im in images.items()}
    first, embedded = embed_photos(registry, embedder, loaders)
    again, embedded_again = embed_photos(registry, embedder, loaders)
    assert (embedded, embedded_again) == (2, 0)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    rows = registry.db.execute("SELECT DISTINCT embedder FROM embeddings").fetchall()
    assert [r[0] for r in rows] == [embedder.id]


def test_missing_open_clip_weights_are_a_one_line_error(tiny_open_clip, tmp_path):
    with pytest.raises(UserError, match="efficientnet-lite0") as error:
        load_embedder(f"open_clip:yollava-tiny:{tmp_path / 'missing.safetensors'}")
    assert "\n" not in str(error.value)


def test_unknown_embedder_is_refused():
    with pytest.raises(UserError, match="unknown embedder"):
        load_embedder("resnet")


def test_auto_remembers_its_fallback_per_data_dir(tmp_path, monkeypatch):
    """Offline, auto must not wait for the hub on every command: one try per data dir, again
    after AUTO_RETRY or when asked for explicitly; and it says which embedder it used."""
    import importlib.util
    from datetime import datetime, timedelta, timezone

    import yollava_cli.learning.embeddings as embeddings

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "open_clip" else find_spec(name, *a))
    tries = []

    def offline(arch, pretrained):
        tries.append(arch)
        raise UserError("cannot load open_clip ViT-B-32 weights (we are offline)")

    class Offline:
        id = embeddings.OFFLINE_EMBEDDER

    monkeypatch.setattr(embeddings, "load_open_clip", offline)
    monkeypatch.setattr(embeddings, "EfficientNetEmbedder", Offline)
    said = []
    for home in ("a", "a", "b"):
        monkeypatch.setenv("YOLLAVA_HOME", str(tmp_path / home))
        embedder = embeddings.load_embedder()
        assert embedder.id == "efficientnet-lite0"
        said.append(embedder.note)
    assert len(tries) == 2  # once per data dir
    assert all(line.startswith("embedder: efficientnet-lite0 (auto: open_clip's weights did not load") for line in said)
    assert "not tried again for 7 days" in said[0] and "did not load on" in said[1]
    assert "offline" in (tmp_path / "a" / embeddings.AUTO_STATE).read_text()
    embeddings.load_embedder("auto")  # asked for by name: try again now
    assert len(tries) == 3
    state = tmp_path / "b" / embeddings.AUTO_STATE
    old = datetime.now(timezone.utc) - embeddings.AUTO_RETRY - timedelta(hours=1)
    state.write_text(json.dumps({"since": old.isoformat(), "reason": "x"}))
    embeddings.load_embedder()
    assert len(tries) == 4  # the remembered fallback has expired
