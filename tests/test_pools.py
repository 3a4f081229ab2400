"""Pool refresh and negative storage on a fake embedder: an emptied pool folder keeps its rows,
and negatives that cannot be stored are reported, not silently dropped."""

import numpy as np
import pytest
from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.learning import mining
from yollava_cli.learning.embeddings import Embedder
from yollava_cli.learning.events import ScanningPool
from yollava_cli.reporting import Status, collecting
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
    with collecting() as heard:
        result = mining.add_pool(registry, "p", pool, ColorEmbedder())
    said = [e.text for e in heard if isinstance(e, Status)]
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
    with collecting() as heard:
        result = mining.mine(registry, "bo", ColorEmbedder(), hard=2, easy=2)
    said = [e.text for e in heard if isinstance(e, Status)]
    assert len(result.negatives) == 3
    assert result.dropped == [{"photo": victim, "reason": "no such file"}]
    assert any("dropped 1 chosen negative" in line and victim in line for line in said)


def test_mine_names_the_embedder_auto_chose(pooled):
    registry, _ = pooled
    embedder = ColorEmbedder()
    embedder.note = "embedder: color (auto: a test)"
    with collecting() as heard:
        mining.mine(registry, "bo", embedder, hard=2, easy=2)
    said = [e.text for e in heard if isinstance(e, Status)]
    assert said == ["embedder: color (auto: a test)"]


def nested_pool(tmp_path, folders=4, each=3):
    pool = tmp_path / "big-pool"
    for f in range(folders):
        (pool / f"d{f}").mkdir(parents=True)
        for i in range(each):
            Image.new("RGB", (40, 30), (20 + 50 * f, 30 * i, 200)).save(pool / f"d{f}" / f"{i}.png")
    return pool


def test_pool_add_interrupted_while_scanning_leaves_no_pool(tmp_path, monkeypatch):
    """Ctrl-C in `pool add NAME /` (hours of scanning) left an empty pool registered on main: the
    pool is registered with its files, once the scan is done."""
    registry = Registry(tmp_path / "home")
    pool, real, seen = nested_pool(tmp_path), mining.photo_sha256, []

    def photo_sha256(path):
        seen.append(path)
        if len(seen) == 5:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(mining, "photo_sha256", photo_sha256)
    with pytest.raises(KeyboardInterrupt):
        mining.add_pool(registry, "big", pool, ColorEmbedder())
    assert registry.pool_names() == [] and pool_rows(registry) == 0
    monkeypatch.setattr(mining, "photo_sha256", real)
    assert mining.add_pool(registry, "big", pool, ColorEmbedder())["photos"] == 12  # a clean start again
    assert registry.pool_names() == ["big"] and pool_rows(registry) == 12


def test_pool_add_reports_its_scan_and_refuses_a_folder_with_no_usable_photo(tmp_path):
    registry = Registry(tmp_path / "home")
    with collecting() as heard:
        mining.add_pool(registry, "big", nested_pool(tmp_path), ColorEmbedder())
    progress = [(e.done, e.total) for e in heard if isinstance(e, ScanningPool)]
    walked = [done for done, total in progress if total is None]
    assert walked == sorted(walked) and walked[-1] == 12 and len(walked) >= 4  # found so far, folder by folder
    assert [p for p in progress if p[1] is not None] == [(i, 12) for i in range(1, 13)]  # then checked of all
    import os

    junk = tmp_path / "junk"
    junk.mkdir()
    os.mkfifo(junk / "a.jpg")
    with pytest.raises(UserError, match="no usable photo to make a pool of .e.g. a.jpg: not a regular file"):
        mining.add_pool(registry, "junk", junk, ColorEmbedder())
    assert registry.pool_names() == ["big"]


def odd_pool(tmp_path):
    """A pool folder with two good photos and a FIFO, a symlink to the FIFO and a 2 GB sparse .jpg
    in it: files a plain read_bytes() would wait on forever or read whole into memory."""
    import os

    pool = tmp_path / "odd-pool"
    pool.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (20, 90 * i, 200)).save(pool / f"{i}.png")
    os.mkfifo(pool / "fifo.jpg")
    os.symlink(pool / "fifo.jpg", pool / "link-to-fifo.jpg")
    with open(pool / "sparse.jpg", "wb") as f:
        f.truncate(2 * 2**30)
    return pool


def test_pool_add_skips_a_fifo_and_an_oversized_file_with_a_reason(tmp_path):
    """`pool add` must finish (a FIFO hung it, and mine and train after it), register the good
    photos, and say why each odd file was skipped."""
    import json

    from conftest import run_cli

    pool = odd_pool(tmp_path)
    result = run_cli("pool", "add", "p", pool, "--embedder", "efficientnet-lite0", "--json", home=tmp_path / "home", timeout=120)
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)
    assert added["photos"] == 2 and added["embedded"] == 2
    reasons = {item["path"]: item["reason"] for item in added["skipped"]}
    assert reasons == {"fifo.jpg": "not a regular file", "link-to-fifo.jpg": "not a regular file",
                       "sparse.jpg": "file is over 100 MB"}
    for name, reason in reasons.items():
        assert f"skipped {pool / name}: {reason}" in result.stderr
    listed = json.loads(run_cli("pool", "list", "--json", home=tmp_path / "home").stdout)["pools"]
    assert [(p["name"], p["photos"]) for p in listed] == [("p", 2)]


def test_photo_intake_reads_only_regular_files_under_the_cap(tmp_path, monkeypatch):
    """One intake path for add, pool and find: the checks come from the open file itself, and a
    file that grows past the cap while it is read is refused after at most cap + one chunk."""
    import os

    from yollava_cli.store import photos

    pool = odd_pool(tmp_path)
    for name in ("fifo.jpg", "link-to-fifo.jpg"):
        with pytest.raises(BadPhoto, match="not a regular file"):
            photos.photo_bytes(pool / name)
        with pytest.raises(BadPhoto, match="not a regular file"):
            photos.photo_sha256(pool / name)
    with pytest.raises(BadPhoto, match="over 100 MB"):
        photos.photo_sha256(pool / "sparse.jpg")
    growing = tmp_path / "growing.jpg"
    growing.write_bytes(b"\xff\xd8" + b"\0" * 5000)
    monkeypatch.setattr(photos, "MAX_FILE_BYTES", 1000)
    real_fstat = os.fstat
    monkeypatch.setattr(photos.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 10, *real_fstat(fd)[7:])))
    with pytest.raises(BadPhoto, match="over"):
        photos.photo_bytes(growing)  # its size said 10 bytes when it was opened


def test_add_and_find_skip_the_same_odd_files_with_their_reasons(tmp_path):
    import json

    from conftest import invoke

    from yollava_cli.store.photos import expand_photo_paths
    from yollava_cli.use.find import read_for_find

    pool = odd_pool(tmp_path)
    expected = {str(pool / "fifo.jpg"): "not a regular file", str(pool / "link-to-fifo.jpg"): "not a regular file",
                str(pool / "sparse.jpg"): "file is over 100 MB"}
    added = invoke("add", "bo", pool, "--no-train", "--json", home=tmp_path / "home")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["new_photos"] == 2
    assert {s["path"]: s["reason"] for s in json.loads(added.stdout)["skipped"]} == expected
    refused = invoke("add", "bo", pool / "fifo.jpg", "--no-train", home=tmp_path / "home")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"error: no usable photo for 'bo' ({pool / 'fifo.jpg'}: not a regular file)"]
    photos, skipped = read_for_find(expand_photo_paths([pool]))
    assert len(photos) == 2 and {s["path"]: s["reason"] for s in skipped} == expected


def test_mining_names_the_concepts_photos_missing_from_the_store(pooled):
    """Every stored file of the concept gone: mining stacked no vectors (ValueError: need at least
    one array to stack); it names what is missing instead, and so does training."""
    from yollava_cli.errors import UserError
    from yollava_cli.learning.training import train_concept

    registry, _ = pooled
    photos = registry.concept_photos(registry.concept("bo").id)
    for photo in photos:
        (registry.root / photo.file).unlink()
    with pytest.raises(UserError, match=r"<bo>: 2 stored photos are missing from the store \(.*0\.png, .*1\.png\)"):
        mining.mine(registry, "bo", ColorEmbedder(), hard=2, easy=2)
    with pytest.raises(UserError, match="2 stored photos are missing from the store"):
        train_concept(registry, None, "bo")


def test_pool_add_names_the_embedder_auto_chose_once(tmp_path, monkeypatch):
    """The executor that loads the embedder says which one auto chose; the pool step must not say
    it again (it did, once the note travelled as an event from both)."""
    from conftest import invoke

    from yollava_cli.learning import embeddings

    def offline(*args):
        raise UserError("cannot load open_clip weights (offline)")

    monkeypatch.setattr(embeddings, "load_open_clip", offline)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (60 * i, 90, 200)).save(pool / f"{i}.jpg")
    result = invoke("pool", "add", "p", pool, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("embedder: efficientnet-lite0 (auto:") == 1, result.stderr


def test_a_photo_given_twice_is_listed_once(tmp_path):
    """`find bo ~/Pictures ~/Pictures/park.jpg` scores park.jpg once, not twice."""
    from yollava_cli.store.photos import expand_photo_paths

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(folder / name)
    given = [folder, folder / "b.jpg", tmp_path / "photos" / ".." / "photos" / "a.jpg"]
    assert expand_photo_paths(given) == [folder / "a.jpg", folder / "b.jpg"]
