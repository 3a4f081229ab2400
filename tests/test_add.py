"""`add`, `list`, `show`, `rm` through the real command line, on real photos and odd files."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, invoke, run_cli, shared_data, snapshot
from PIL import Image


def make_photo(path, size=(64, 48), mode="RGB", color=(200, 30, 30), **save):
    Image.new(mode, size, color).save(path, **save)
    return path


def add_json(home, *args):
    result = invoke("add", *args, "--no-train", "--json", home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_add_shared_concept_then_again_adds_nothing(home):
    train = shared_data() / "concepts" / "dog" / "train"
    first = add_json(home, "dog", train, "--kind", "pet")
    assert (first["new_photos"], first["total_photos"], first["created"]) == (3, 3, True)
    shown = json.loads(invoke("show", "dog", "--json", home=home).stdout)
    assert len(shown["photos"]) == 3 and shown["kind"] == "pet" and shown["status"] == "added"
    assert all((home / p["stored"]).exists() for p in shown["photos"])
    again = add_json(home, "dog", train)
    assert (again["new_photos"], again["total_photos"]) == (0, 3)
    said = invoke("add", "dog", train, "--no-train", home=home).stdout
    assert said == "<dog> (pet) has these photos already (3 in all); nothing changed.\n"
    said = invoke("add", "dog", train, "--no-train", "--note", "loves tennis balls", home=home).stdout
    assert said == "<dog> (pet) has these photos already (3 in all); noted 1 fact(s).\n"


def test_list_show_rm(home, tmp_path):
    add_json(home, "<bo>", make_photo(tmp_path / "a.png"), "--kind", "pet")
    # a2.png has a.png's bytes: one stored photo shared by both concepts
    add_json(home, "mam", make_photo(tmp_path / "b.png", color=(1, 2, 3)), make_photo(tmp_path / "a2.png"))
    listed = json.loads(invoke("list", "--json", home=home).stdout)["concepts"]
    assert [(c["name"], c["photos"]) for c in listed] == [("bo", 1), ("mam", 2)]
    plain = invoke("list", home=home).stdout.splitlines()
    assert plain[0].split("\t")[:4] == ["bo", "pet", "added", "1"]  # piped: tab-separated

    refused = invoke("rm", "bo", home=home)  # no terminal, no --yes: refuse rather than hang
    assert refused.returncode == 1 and "--yes" in refused.stderr
    removed = json.loads(invoke("rm", "bo", "--yes", "--json", home=home).stdout)
    assert removed["removed"] == "bo"
    assert removed["photos_deleted"] == 0  # mam still uses the same photo
    assert len(list((home / "photos").rglob("*.jpg"))) == 2
    invoke("rm", "mam", "--yes", home=home)
    assert list((home / "photos").rglob("*.jpg")) == []
    missing = invoke("show", "mamm", home=home)
    assert missing.returncode == 1 and "unknown concept 'mamm'" in missing.stderr


def test_replace_and_collisions(home, tmp_path):
    add_json(home, "bo-cat", make_photo(tmp_path / "a.png"), "--kind", "pet")
    clash = invoke("add", "bo_cat", tmp_path / "a.png", home=home)
    assert clash.returncode == 1 and "too close" in clash.stderr
    kind_change = invoke("add", "bo-cat", tmp_path / "a.png", "--kind", "person", home=home)
    assert kind_change.returncode == 1 and "--replace" in kind_change.stderr
    replaced = add_json(home, "bo-cat", make_photo(tmp_path / "b.png", color=(9, 9, 9)), "--kind", "person", "--replace")
    assert (replaced["created"], replaced["kind"], replaced["total_photos"]) == (True, "person", 1)
    assert len(list((home / "photos").rglob("*.jpg"))) == 1  # the replaced photo is gone


def test_odd_but_valid_photos_are_converted(home, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    make_photo(folder / "cmyk.jpg", mode="CMYK", color=(0, 100, 200, 0))
    Image.new("I;16", (40, 30), 40000).save(folder / "deep.png")
    make_photo(folder / "palette.png", mode="P", color=5)
    make_photo(folder / "alpha.png", mode="RGBA", color=(10, 20, 30, 0))
    big = make_photo(folder / "big.jpg", size=(3000, 2000))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored upright
    make_photo(folder / "rotated.jpg", size=(80, 40), exif=exif)
    result = add_json(home, "odd", folder)
    assert result["new_photos"] == 6 and result["skipped"] == []
    sizes = {p["source"].rsplit("/", 1)[-1]: p["size"] for p in json.loads(invoke("show", "odd", "--json", home=home).stdout)["photos"]}
    assert sizes["rotated.jpg"] == [40, 80]
    assert sizes["big.jpg"] == [1024, 683]
    for stored in (home / "photos").rglob("*.jpg"):
        assert Image.open(stored).mode == "RGB"
    alpha = next(p for p in json.loads(invoke("show", "odd", "--json", home=home).stdout)["photos"] if p["source"].endswith("alpha.png"))
    assert Image.open(alpha["stored"]).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert big.exists()


def test_a_photo_with_large_text_metadata_is_a_photo(home, tmp_path):
    """Text chunks are metadata: one over Pillow's 1 MB MAX_TEXT_CHUNK made the photo "corrupt or
    truncated", and a long PNG or GIF comment crashed the JPEG encoder (over 64 KB) on main."""
    from PIL import PngImagePlugin

    folder = tmp_path / "texts"
    folder.mkdir()
    for name, zip_ in (("ztxt.png", True), ("text.png", False)):
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", "x" * (2 * 2**20), zip=zip_)
        info.add_itxt("Description", "y" * 2**20, zip=zip_)
        make_photo(folder / name, pnginfo=info)
    make_photo(folder / "comment.gif", mode="P", color=3, comment=b"z" * 200_000)
    result = add_json(home, "bo", folder)
    assert result["new_photos"] == 3 and result["skipped"] == [], result
    for stored in (home / "photos").rglob("*.jpg"):
        assert "comment" not in Image.open(stored).info  # the source's metadata is not stored with the photo


def test_show_piped_escapes_a_tab_or_newline_in_a_path(home, tmp_path):
    """A file name may hold a tab or a newline: piped, each stays one escaped field of one line."""
    folder = tmp_path / "odd\tnames"
    folder.mkdir()
    make_photo(folder / "two\nlines.png")
    make_photo(folder / "back\\slash.png", color=(1, 2, 3))
    add_json(home, "bo", folder)
    shown = json.loads(invoke("show", "bo", "--json", home=home).stdout)
    (home / next(p["stored"] for p in shown["photos"] if "two" in p["source"])).unlink()  # listed as missing too
    lines = invoke("show", "bo", home=home).stdout.splitlines()
    rows = lines[lines.index("photos:") + 1 :]
    assert [len(row.split("\t")) for row in rows] == [4, 4], rows
    escaped = str(folder).replace("\t", "\\t")
    assert {row.split("\t")[3] for row in rows} == {f"{escaped}/two\\nlines.png", f"{escaped}/back\\\\slash.png"}
    missing = [line for line in lines if line.startswith("missing from the store:")]
    assert len(missing) == 1 and "two\\nlines.png" in missing[0]


def test_mixed_folder_adds_good_and_names_bad(home, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_photo(folder / "good.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    result = invoke("add", "mix", folder, "--no-train", home=home)
    assert result.returncode == 0
    assert "skipped" in result.stderr and "empty.jpg" in result.stderr and "notes.png" in result.stderr
    assert "1 new photo" in result.stdout
    before = snapshot(home)
    strict = invoke("add", "mix2", folder, "--strict", home=home)
    assert strict.returncode == 1 and "--strict" in strict.stderr
    assert snapshot(home) == before


def bad_inputs(tmp_path):
    """(description, args) pairs that must each fail cleanly."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "empty_dir").mkdir()
    (folder / "text.txt").write_text("hello")
    make_photo(folder / "full.jpg", size=(200, 200))
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:300])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    Image.new("1", (8000, 7000)).save(folder / "bomb.png")
    (folder / "only_bad").mkdir()
    (folder / "only_bad" / "a.jpg").write_bytes(b"junk")
    good = make_photo(folder / "good.jpg")
    return [
        ("missing path", ["bo", folder / "nope.jpg"], "no such file"),
        ("directory with no photos", ["bo", folder / "empty_dir"], "no photos"),
        ("non-image file", ["bo", folder / "text.txt"], "not an image"),
        ("truncated jpeg", ["bo", folder / "truncated.jpg"], "truncated"),
        ("zero-byte file", ["bo", folder / "zero.jpg"], "empty file"),
        ("HEIC", ["bo", folder / "photo.heic"], "HEIC"),
        ("decompression bomb", ["bo", folder / "bomb.png"], "MP limit"),
        ("no usable photo", ["bo", folder / "only_bad"], "no usable photo"),
        ("invalid name", ["Bo Cat!", good], "invalid concept name"),
        ("reserved name", ["image", good], "reserved"),
        ("latent-token-shaped name", ["bo_3", good], "latent tokens"),
    ]


def test_bad_inputs_fail_in_one_line_and_store_nothing(home, tmp_path):
    add_json(home, "keep", make_photo(tmp_path / "keep.png"))
    before = snapshot(home)
    for description, args, expected in bad_inputs(tmp_path):
        result = invoke("add", *args, "--no-train", home=home)
        assert result.returncode == 1, description
        assert expected in result.stderr, (description, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (description, result.stderr)
        assert "Traceback" not in result.stderr, description
        assert snapshot(home) == before, description


def test_usage_errors_exit_2(home):
    assert invoke("add", home=home).returncode == 2
    assert invoke("add", "bo", "x.jpg", "--kind", "planet", home=home).returncode == 2


@pytest.mark.parametrize("args", [
    ["train", "bo", "--k", "65"], ["train", "bo", "--epochs", "100000"], ["train", "bo", "--lr", "5"],
    ["train", "bo", "--lr", "0"], ["train", "bo", "--batch-size", "100000"], ["train", "bo", "--seed", "-1"],
    ["mine", "bo", "--seed", "-1"], ["mine", "bo", "--hard", "1000000"], ["mine", "bo", "--duplicate-above", "3"],
    ["ask", "bo", "hi?", "--temperature", "50"], ["ask", "bo", "hi?", "--max-tokens", "1000000"],
    ["ask", "bo", "hi?", "--seed", "-1"], ["eval", "data", "--folds", "1000"], ["eval", "data", "--epochs", "0"],
])
def test_numeric_options_outside_what_the_model_can_use_are_usage_errors(home, args):
    """Checked before anything else (here, before the unknown concept `bo`): a learning rate of 5,
    a seed numpy refuses, a temperature of 50 would each fail, or waste a run, much later."""
    result = invoke(*args, home=home)
    assert result.returncode == 2 and "Invalid value for '" + args[-2] in result.stderr, result.stderr


def test_two_processes_add_concurrently(home, tmp_path):
    folders = []
    for i in range(2):
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        for j in range(12):
            make_photo(folder / f"{j}.png", size=(600, 400), color=(i * 100, j * 20, 7))
        folders.append(folder)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "yollava_cli", "add", f"c{i}", folders[i], "--no-train", "--json"],
            env={**__import__("os").environ, "YOLLAVA_HOME": str(home)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert json.loads(stdout)["new_photos"] == 12
    import sqlite3

    conn = sqlite3.connect(home / "registry.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM concept_photos").fetchone()[0] == 24
    assert conn.execute("SELECT count(*) FROM photos").fetchone()[0] == 24


def test_completions_are_current():
    sys.path.insert(0, str(REPO / "scripts"))
    from gen_completions import OUT, render

    for name, text in render().items():
        assert (OUT / name).read_text() == text, f"completions/{name} is stale: run python scripts/gen_completions.py"


def test_each_disk_trouble_has_its_own_message_and_fix(home, monkeypatch):
    import errno
    import sqlite3

    from yollava_cli.store.registry import Registry

    def fail_with(error):
        def concept_summaries(registry):
            raise error
        monkeypatch.setattr(Registry, "concept_summaries", concept_summaries)
        result = invoke("list", home=home)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
        return result.stderr

    told = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk is full", errno.EROFS: "file system is read-only",
            errno.EACCES: "permission denied", errno.EIO: "input/output error"}
    for code, message in told.items():
        said = fail_with(OSError(code, "boom", "/data/x.jpg"))
        assert said.startswith("error: /data/x.jpg: ") and message in said, said
        assert all(other not in said for other in told.values() if other != message), said
    vanished = fail_with(FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.jpg"))
    assert vanished.strip() == "error: No such file or directory: /data/x.jpg"
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert "the disk is full" in fail_with(full) and str(home / "registry.db") in fail_with(full)
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert "locked by another process" in fail_with(busy) and "restore" not in fail_with(busy)
    plain = fail_with(sqlite3.OperationalError("no such table: concepts"))
    assert all(message not in plain for message in told.values()) and "restore" not in plain, plain


def test_rm_refuses_while_the_concept_is_training(home, tmp_path):
    """rm takes the concept's training lock without waiting: a concept being trained is not pulled
    out from under its trainer, and the one-line refusal names the training and its pid."""
    add_json(home, "bo", make_photo(tmp_path / "a.png"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from yollava_cli.store.registry import Registry\n"
         "with Registry(Path(sys.argv[1])).lock('train-bo', 'training <bo>'):\n print('locked', flush=True); time.sleep(60)", str(home)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(home)
        refused = invoke("rm", "bo", "--yes", home=home)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().splitlines() == [
            f"error: another yollava process (pid {holder.pid}) is training <bo>; wait for it to finish"]
        assert snapshot(home) == before
    finally:
        holder.kill()
        holder.wait()
    assert invoke("rm", "bo", "--yes", home=home).returncode == 0


def lose_a_stored_photo(home, tmp_path):
    """`bo` with two photos, one of whose stored files is then deleted behind the registry's back."""
    a, b = make_photo(tmp_path / "a.png"), make_photo(tmp_path / "b.png", color=(10, 200, 10))
    add_json(home, "bo", a, b)
    shown = json.loads(invoke("show", "bo", "--json", home=home).stdout)
    lost = next(p for p in shown["photos"] if p["source"] == str(a.resolve()))
    (home / lost["stored"]).unlink()
    return a, b, lost


def test_show_names_a_stored_photo_missing_from_the_store(home, tmp_path):
    a, _, lost = lose_a_stored_photo(home, tmp_path)
    shown = json.loads(invoke("show", "bo", "--json", home=home).stdout)
    assert {p["sha256"]: p["missing"] for p in shown["photos"]} == {p["sha256"]: p["sha256"] == lost["sha256"] for p in shown["photos"]}
    assert shown["missing_photos"] == [{"sha256": lost["sha256"], "source": str(a.resolve()), "stored": lost["stored"]}]
    human = invoke("show", "bo", home=home).stdout
    assert f"missing from the store: 1 of 2 photos ({a.resolve()}); re-add with `yollava add bo {a.resolve()}`" in human


def test_re_adding_restores_a_stored_photo_missing_from_the_store(home, tmp_path):
    a, b, lost = lose_a_stored_photo(home, tmp_path)
    again = add_json(home, "bo", a, b)
    assert (again["new_photos"], again["restored_photos"], again["total_photos"]) == (0, 1, 2)
    assert (home / lost["stored"]).is_file()
    assert not any(p["missing"] for p in json.loads(invoke("show", "bo", "--json", home=home).stdout)["photos"])
    plain = invoke("add", "bo", a, "--no-train", home=home).stdout
    assert "has these photos already (2 in all); nothing changed" in plain  # nothing to restore the second time


def test_training_names_a_stored_photo_missing_from_the_store(home, tmp_path):
    a, _, lost = lose_a_stored_photo(home, tmp_path)
    for args in (["train", "bo", "--model", tmp_path / "no-model-needed"], ["mine", "bo"]):
        result = invoke(*args, home=home)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: <bo>: 1 stored photo is missing from the store ({a.resolve()}); re-add it with "
            f"`yollava add bo {a.resolve()}`, or forget it with `yollava doctor --fix`"], (args, result.stderr)


def test_chat_json_is_a_one_line_usage_error_that_points_at_ask(home):
    """chat is interactive: its answers stream as they are generated, so it has no --json; the
    README says so, and the refusal names what does (`ask --json`) before any model loads."""
    for args in (["chat", "--json"], ["chat", "bo", "--json", "--image", "x.jpg"]):
        result = run_cli(*args, home=home, timeout=60)
        assert result.returncode == 2 and result.stdout == "", (args, result)
        assert result.stderr.strip().splitlines() == [
            "error: chat is interactive and has no --json; for one answer as JSON use "
            "`yollava ask NAME \"QUESTION\" --json`"], (args, result.stderr)
    readme = (REPO / "README.md").read_text()
    assert "Every verb but `chat` takes `--json`" in readme


def not_utf8(folder, raw: bytes):
    """A path in `folder` whose name is the bytes `raw` (Linux allows any but / and NUL)."""
    return folder / os.fsdecode(raw)


def test_file_names_that_are_not_utf8_are_added_and_shown_escaped(home, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    make_photo(not_utf8(folder, b"\xff.jpg"))
    make_photo(not_utf8(folder, b"caf\xe9.png"), color=(10, 200, 10))
    not_utf8(folder, b"bad\xfe.jpg").write_bytes(b"junk")
    added = invoke("add", "bo", folder, "--no-train", home=home)
    assert added.returncode == 0, added.stderr
    assert "2 new photo(s), 2 in all" in added.stdout
    assert f"skipped {folder}/bad\\xfe.jpg: not an image format" in added.stderr
    shown = invoke("show", "bo", home=home).stdout  # piped: tab-separated, each field escaped
    assert f"{folder.resolve()}/\\\\xff.jpg" in shown and f"{folder.resolve()}/caf\\\\xe9.png" in shown
    strict = invoke("add", "bo2", not_utf8(folder, b"bad\xfe.jpg"), "--strict", home=home)
    assert strict.returncode == 1 and strict.stderr.startswith(f"error: {folder}/bad\\xfe.jpg: not an image format")
    again = invoke("add", "bo", folder, "--no-train", home=home)
    assert again.returncode == 0 and "has these photos already (2 in all); nothing changed" in again.stdout


def test_a_pool_with_file_names_that_are_not_utf8_mines_them(home, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, photo in enumerate(sorted((shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))[::60]):
        (not_utf8(pool, b"\xff%d.jpg" % i) if i % 2 else pool / photo.name).write_bytes(photo.read_bytes())
    not_utf8(pool, b"bad\xfe.jpg").write_bytes(b"junk")
    assert invoke("add", "bo", shared_data() / "concepts" / "dog" / "train", "--no-train", home=home).returncode == 0
    pooled = invoke("pool", "add", "p", pool, home=home)
    assert pooled.returncode == 0, pooled.stderr
    assert "1 unreadable" in pooled.stdout  # the junk file: embedding decodes it and leaves it out
    mined = invoke("mine", "bo", "--pool", "p", "--json", home=home)
    assert mined.returncode == 0, mined.stderr
    negatives = [n["photo"] for n in json.loads(mined.stdout)["negatives"]]
    assert any(n.startswith(f"{pool}/\\xff") for n in negatives), negatives  # stored, and stored escaped
    assert invoke("pool", "add", "p", pool, home=home).returncode == 0  # a rescan matches the stored names
    odd = not_utf8(tmp_path, b"pool\xff")
    pool.rename(odd)
    refused = invoke("pool", "add", "q", odd, home=home)
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: {tmp_path.resolve()}/pool\\xff: a pool folder's path")
