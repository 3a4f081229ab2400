"""Pool refresh and negative storage on a fake embedder: an emptied pool folder keeps its rows,
and negatives that cannot be stored are reported, not silently dropped."""

import numpy as np
import pytest
from PIL import Image

from yollava_cli.learning import mining
from yollava_cli.learning.embeddings import Embedder
from yollava_cli.store.concepts import add_concept
from yollava_cli.store.photos import BadPhoto
from yollava_cli.store.registry import Registry


class ColorEmbedder(Embedder):
    """A photo's mean colour as a unit vector: instant, and similar photos are similar."""

    id, dim = "color", 3

    def embed(self, images):
        vectors = np.array([np.asarray(i.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) + 1 for i in images])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def pooled(tmp_path):
    """A registry with a concept `bo` (2 red photos) and a pool of 4 other photos."""
    registry = Registry(tmp_path / "home")
    own, pool = tmp_path / "bo", tmp_path / "pool"
    own.mkdir()
    pool.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (220 - i * 30, 20, 20)).save(own / f"{i}.png")
    for i in range(4):
        Image.new("RGB", (40, 30), (20, 60 * i, 200)).save(pool / f"{i}.png")
    add_concept(registry, "bo", [own])
    mining.add_pool(registry, "p", pool, ColorEmbedder())
    return registry, pool


def pool_rows(registry):
    return registry.db.execute("SELECT count(*) FROM pool_files").fetchone()[0]


def test_an_emptied_pool_folder_keeps_its_rows_and_says_so(pooled):
    registry, pool = pooled
    assert pool_rows(registry) == 4
    hidden = pool.parent / "hidden"
    pool.rename(hidden)
    pool.mkdir()  # the mount point of an unmounted drive: there, but empty
    said = []
    result = mining.add_pool(registry, "p", pool, ColorEmbedder(), on_status=said.append)
    assert result["photos"] == 0 and pool_rows(registry) == 4
    assert len(said) == 1 and "kept its 4 known files" in said[0]
    pool.rmdir()
    hidden.rename(pool)
    assert mining.add_pool(registry, "p", pool, ColorEmbedder())["embedded"] == 0  # nothing was forgotten


def test_negatives_that_cannot_be_stored_are_reported(pooled, monkeypatch):
    registry, pool = pooled
    victim = str(pool / "0.png")
    real = mining.read_photo

    def read_photo(path, *args, **kwargs):
        if str(path) == victim:
            raise BadPhoto("no such file")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(mining, "read_photo", read_photo)
    said = []
    result = mining.mine(registry, "bo", ColorEmbedder(), hard=2, easy=2, on_status=said.append)
    assert len(result.negatives) == 3
    assert result.dropped == [{"photo": victim, "reason": "no such file"}]
    assert any("dropped 1 chosen negative" in line and victim in line for line in said)


def test_mine_names_the_embedder_auto_chose(pooled):
    registry, _ = pooled
    embedder = ColorEmbedder()
    embedder.note = "embedder: color (auto: a test)"
    said = []
    mining.mine(registry, "bo", embedder, hard=2, easy=2, on_status=said.append)
    assert said == ["embedder: color (auto: a test)"]
