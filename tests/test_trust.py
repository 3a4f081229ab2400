"""Trust: bundles that refuse tampering, locks, doctor, kill -9 fault injection, and a bad-input suite
across every verb (one-line error, non-zero exit, no traceback, nothing stored changed)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from conftest import invoke, run_cli, snapshot, tiny_world
from PIL import Image
from safetensors.torch import save as save_safetensors
from tiny import tiny_llava

from yollava_cli.store.doctor import examine
from yollava_cli.store.registry import Registry
from yollava_cli.use.bundle_format import export_concept

# -- a trained concept on a tiny model saved to disk, shared by the tests below -----------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("trust"))


def fresh_home(world, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(world["home"], home)
    return home


# -- bundles ----------------------------------------------------------------------------------


def test_facts_travel_in_bundles_and_malformed_facts_are_refused(world, tmp_path):
    home = fresh_home(world, tmp_path)
    assert invoke("note", "bo", "loves tennis balls", home=home).returncode == 0
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, home=home).returncode == 0
    assert invoke("import", bundle, "--as", "bo2", "--model", world["model"], home=home).returncode == 0
    assert invoke("note", "bo2", home=home).stdout == "1\tloves tennis balls\n"
    for facts, message in ((["ok", "x" * 600], "keep a fact under 500"), ("not a list", '"facts" must be a list')):
        bad = tmp_path / "bad.yollava"
        with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(bad, "w") as dst:
            for item in src.namelist():
                data = src.read(item)
                if item == "manifest.json":
                    data = json.dumps({**json.loads(data), "facts": facts}).encode()
                dst.writestr(item, data)
        before = snapshot(home)
        result = invoke("import", bad, "--as", "bo3", "--skip-model-check", home=home)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert snapshot(home) == before


def test_export_import_round_trip(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    exported = json.loads(invoke("export", "bo", bundle, "--with-photos", "--json", home=home).stdout)
    assert exported["photos"] == 3 and bundle.exists()
    other = tmp_path / "other"
    imported = invoke("import", bundle, "--as", "bo2", "--model", world["model"], "--json", home=other)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["concept"] == "bo2"
    shown = json.loads(invoke("show", "bo2", "--json", home=other).stdout)
    assert shown["status"] == "trained" and len(shown["photos"]) == 3
    asked = invoke("ask", "bo2", "hi?", "--max-tokens", "4", "--model", world["model"], "--json", home=other)
    assert asked.returncode == 0, asked.stderr
    from yollava_cli.learning.recognition import load

    registry, original = Registry(other), Registry(home)  # the concept head came along, its fusion and cuts too
    head = load(other / registry.current_checkpoint(registry.concept("bo2").id).file)
    assert head.fusion == load(home / original.current_checkpoint(original.concept("bo").id).file).fusion
    assert registry.thresholds(registry.concept("bo2").id) == original.thresholds(original.concept("bo").id)
    assert set(shown["metrics"]["thresholds"]) == {"tokens", "head", "fused"}
    test_photos = world["data"] / "concepts" / "dog" / "test"
    found = invoke("find", "bo2", test_photos, "--by", "head", "--json", home=other)
    # bo was trained on this dog: its head finds the dog's unseen photos, and find exits 0 as grep does on a match
    assert found.returncode == 0, found.stderr
    found = json.loads(found.stdout)
    assert found["by"] == "head" and all(r["match"] for r in found["results"]), found["results"]
    original = json.loads(invoke("find", "bo", test_photos, "--by", "head", "--json", home=home).stdout)
    ranked = lambda result: [(r["path"], r["probability"]) for r in result["results"]]
    assert ranked(found) == ranked(original) and len(ranked(found)) == len(list(test_photos.glob("*.jpg")))
    again = invoke("import", bundle, "--as", "bo2", "--model", world["model"], home=other)
    assert again.returncode == 1 and "exists already" in again.stderr


def test_export_refuses_an_existing_target_unless_forced_and_writes_only_regular_files(world, tmp_path):
    home = fresh_home(world, tmp_path)
    target = tmp_path / "holiday.jpg"
    shutil.copy(sorted((world["data"] / "concepts" / "dog" / "test").glob("*.jpg"))[0], target)
    before = target.read_bytes()
    refused = invoke("export", "bo", target, home=home)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert str(target) in refused.stderr and "--force" in refused.stderr
    assert target.read_bytes() == before
    forced = invoke("export", "bo", target, "--force", home=home)
    assert forced.returncode == 0, forced.stderr
    assert zipfile.is_zipfile(target)
    fifo, folder, link = tmp_path / "fifo.yollava", tmp_path / "folder.yollava", tmp_path / "link.yollava"
    os.mkfifo(fifo)
    folder.mkdir()
    link.symlink_to(target)
    for odd in (fifo, folder, link):
        result = run_cli("export", "bo", odd, "--force", home=home, timeout=60)
        assert result.returncode == 1 and "not a regular file" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert fifo.is_fifo() and folder.is_dir() and list(folder.iterdir()) == [] and link.is_symlink()


def test_import_as_a_look_alike_of_an_existing_name_is_refused(world, tmp_path):
    """`add` refuses my-dog beside my_dog (one would be mistyped for the other); `import --as` too."""
    home = fresh_home(world, tmp_path)
    assert invoke("add", "my_dog", world["data"] / "concepts" / "dog" / "train", "--no-train", home=home).returncode == 0
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, home=home).returncode == 0
    before = snapshot(home)
    for args in (["--skip-model-check"], ["--model", world["model"]]):  # refused before the model loads, too
        result = invoke("import", bundle, "--as", "my-dog", *args, home=home)
        assert result.returncode == 1 and "too close to the existing concept 'my_dog'" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(home) == before


def test_importing_photos_already_stored_reuses_them(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, "--with-photos", home=home).returncode == 0
    before = sorted(p.name for p in (home / "photos").rglob("*.jpg"))
    imported = invoke("import", bundle, "--as", "bo2", "--skip-model-check", home=home)
    assert imported.returncode == 0, imported.stderr
    assert sorted(p.name for p in (home / "photos").rglob("*.jpg")) == before  # one photo, one file
    photos = lambda name: sorted(p["sha256"] for p in json.loads(invoke("show", name, "--json", home=home).stdout)["photos"])
    assert photos("bo2") == photos("bo")


def test_find_skips_a_fifo_with_its_reason_and_does_not_hang(world, tmp_path):
    home = fresh_home(world, tmp_path)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    photo = sorted((world["data"] / "concepts" / "dog" / "test").glob("*.jpg"))[0]
    found = run_cli("find", "bo", fifo, photo, "--by", "head", "--json", home=home, timeout=120)
    assert found.returncode in (0, 1) and "Traceback" not in found.stderr, found.stderr
    assert json.loads(found.stdout)["skipped"] == [{"path": str(fifo), "reason": "not a regular file"}]
    assert f"skipped {fifo}: not a regular file" in found.stderr.splitlines()


def test_find_over_names_that_are_not_utf8_and_broken_exif_shows_them_escaped(world, tmp_path):
    from test_photo_fuzz import broken_exif

    home = fresh_home(world, tmp_path)
    folder = tmp_path / "odd"
    folder.mkdir()
    photo = sorted((world["data"] / "concepts" / "dog" / "test").glob("*.jpg"))[0]
    (folder / os.fsdecode(b"\xff.jpg")).write_bytes(photo.read_bytes())
    (folder / os.fsdecode(b"exif\xfe.jpg")).write_bytes(broken_exif("JPEG"))
    found = invoke("find", "bo", folder, "--by", "head", "--threshold", "0", home=home)
    assert found.returncode == 0 and "Traceback" not in found.stderr, found.stderr
    assert [line.split("\t")[-1] for line in found.stdout.splitlines()] == [f"{folder}/\\xff.jpg"]
    assert f"skipped {folder}/exif\\xfe.jpg: corrupt or truncated image data" in found.stderr


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    from yollava_cli.store.fileio import atomic_write_bytes

    before = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "report.md", b"# shared")
    finally:
        os.umask(before)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~umask


def rebuild(bundle_path, tmp_path, edit, name="edited.yollava"):
    """A copy of the bundle with `edit(members)` applied to its {name: bytes} members."""
    with zipfile.ZipFile(bundle_path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    edit(members)
    out = tmp_path / name
    with zipfile.ZipFile(out, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return out


def reseal(members):
    """Recompute checksums so only the deeper checks can catch the edit."""
    import hashlib

    manifest = json.loads(members["manifest.json"])
    manifest["checksums"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "manifest.json"}
    members["manifest.json"] = json.dumps(manifest).encode()


def tampered_tensors(tensors):
    def edit(members):
        members["concept.safetensors"] = save_safetensors(tensors)
        reseal(members)
    return edit


def bad_bundles(bundle, tmp_path):
    rows = torch.zeros(5, 32)
    return [
        ("altered tensors", lambda m: m.update({"concept.safetensors": m["concept.safetensors"][:-4] + b"\0\0\0\0"}), "checksum mismatch"),
        ("NaN rows", tampered_tensors({"input_rows": rows.clone().fill_(float("nan")), "output_row": torch.zeros(32)}), "NaN"),
        ("wrong shape", tampered_tensors({"input_rows": torch.zeros(3, 32), "output_row": torch.zeros(32)}), "shapes"),
        ("float16 rows", tampered_tensors({"input_rows": rows.half(), "output_row": torch.zeros(32).half()}), "float32"),
        ("extra tensor", tampered_tensors({"input_rows": rows, "output_row": torch.zeros(32), "x": torch.zeros(1)}), "token rows"),
        ("zip-slip member", lambda m: m.update({"../../evil.sh": b"rm -rf /"}), "unexpected content"),
        ("pickle member", lambda m: m.update({"concept.pkl": b"\x80\x04K\x01."}), "unexpected content"),
        ("manifest not JSON", lambda m: m.update({"manifest.json": b"{oops"}), "malformed JSON"),
        ("foreign format", lambda m: m.update({"manifest.json": json.dumps({"format": "other/1"}).encode()}), "not a yollava-concept-bundle"),
        ("no tensors", lambda m: m.pop("concept.safetensors"), "no concept.safetensors"),
        ("NaN head", tampered_head(bundle, "head.weights", torch.tensor([float("nan"), 1.0, 0.0])), "finite float32"),
        ("head of two widths", tampered_head(bundle, "head.negatives", torch.zeros(4, 7)), "wrong shapes"),
        ("head without its JSON", tampered_head(bundle, None, None), 'missing "recognizer"'),
    ]


def tampered_head(bundle_path, name, value):
    """The bundle's own checkpoint with one concept-head tensor replaced (None: its JSON dropped)."""
    from safetensors.torch import load as load_tensors

    from yollava_cli.use.bundles import safe_metadata

    def edit(members):
        data = members["concept.safetensors"]
        tensors, meta = load_tensors(data), json.loads(safe_metadata(data)["yollava"])
        if name is None:
            meta.pop("recognizer")
        else:
            tensors[name] = value
        members["concept.safetensors"] = save_safetensors(tensors, metadata={"yollava": json.dumps(meta)})
        reseal(members)
    return edit


def test_tampered_and_foreign_bundles_are_refused(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert run_cli("export", "bo", bundle, home=home).returncode == 0
    cases = [(d, rebuild(bundle, tmp_path, edit, f"{i}.yollava"), m) for i, (d, edit, m) in enumerate(bad_bundles(bundle, tmp_path))]
    (tmp_path / "text.yollava").write_text("hello")
    cases.append(("not a zip", tmp_path / "text.yollava", "not a yollava bundle"))
    (tmp_path / "cut.yollava").write_bytes(bundle.read_bytes()[:200])
    cases.append(("truncated zip", tmp_path / "cut.yollava", "not a yollava bundle"))
    before = snapshot(home)
    for description, path, message in cases:  # in this process: what is tested is the refusal, not the process
        result = invoke("import", path, "--as", "evil", "--skip-model-check", home=home)
        assert result.returncode == 1, description
        assert message in result.stderr, (description, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, description
        assert snapshot(home) == before, description


def test_bundle_for_another_base_is_refused(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    export_concept(Registry(home), "bo", bundle)
    other_model = tmp_path / "other-model"
    model, processor = tiny_llava(seed=5)
    model.save_pretrained(other_model)
    processor.save_pretrained(other_model)
    result = run_cli("import", bundle, "--as", "bo3", "--model", other_model, home=tmp_path / "h2")
    assert result.returncode == 1 and "was trained on" in result.stderr


# -- locks, doctor, crashes ---------------------------------------------------------------------


def test_a_second_trainer_of_the_same_concept_is_refused_and_a_dead_holder_frees_the_lock(world, tmp_path):
    home = fresh_home(world, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from yollava_cli.store.registry import Registry\n"
         "with Registry(Path(sys.argv[1])).lock('train-bo', 'training <bo>'):\n print('locked', flush=True); time.sleep(60)", str(home)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    refused = run_cli("train", "bo", "--model", world["model"], "--epochs", "1", "--k", "4", home=home)
    assert refused.returncode == 1 and f"pid {holder.pid}" in refused.stderr and "training <bo>" in refused.stderr
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    trained = run_cli("train", "bo", "--model", world["model"], "--epochs", "1", "--k", "4", home=home)
    assert trained.returncode == 0, trained.stderr


def test_two_processes_train_different_concepts_while_another_reads(world, tmp_path):
    home = fresh_home(world, tmp_path)
    assert run_cli("add", "cat", world["data"] / "concepts" / "cat" / "train", "--no-train", home=home).returncode == 0
    env = {**os.environ, "YOLLAVA_HOME": str(home)}
    command = [sys.executable, "-m", "yollava_cli", "train"]
    procs = [subprocess.Popen(command + [name, "--model", str(world["model"]), "--epochs", "1", "--k", "4"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("bo", "cat")]
    reads = [run_cli("list", "--json", home=home).returncode for _ in range(3)]  # like cron's eval next to a chat
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
    assert reads == [0, 0, 0]
    assert examine(Registry(home))["ok"]


def test_doctor_finds_and_repairs(world, tmp_path):
    home = fresh_home(world, tmp_path)
    registry = Registry(home)
    stored = registry.concept_photos(registry.concept("bo").id)[0]
    (home / stored.file).unlink()
    (home / "photos" / "zz").mkdir()
    (home / "photos" / "zz" / "stray.jpg").write_bytes(b"x")
    (home / "checkpoints" / "bo" / ".x.partial").write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(home / "checkpoints" / "bo" / ".x.partial", (hour_ago, hour_ago))  # a fresh one may be a live write
    (home / "checkpoints" / "bo" / ".live.partial").write_bytes(b"x")
    result = run_cli("doctor", "--json", home=home)
    assert result.returncode == 1
    kinds = sorted(p["kind"] for p in json.loads(result.stdout)["problems"])
    assert kinds == ["orphan", "orphan", "photo"]
    fixed = run_cli("doctor", "--fix", home=home)
    assert fixed.returncode == 0 and "fixed 3" in fixed.stdout
    assert "moved to trash/" in fixed.stderr and "stray.jpg" in fixed.stderr
    trashed = sorted(p.name for p in (home / "trash").rglob("*") if p.is_file())
    assert trashed == [".x.partial", "stray.jpg"]  # moved, not deleted
    assert (home / "checkpoints" / "bo" / ".live.partial").exists()
    assert run_cli("doctor", home=home).returncode == 0
    assert json.loads(run_cli("show", "bo", "--json", home=home).stdout)["status"] == "added"  # retrain: a photo is gone
    emptied = run_cli("doctor", "--empty-trash", home=home)
    assert emptied.returncode == 0 and not any((home / "trash").rglob("*.jpg"))


def flip_middle(path, other) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(data))


def scramble(path, other) -> None:
    size = path.stat().st_size
    path.write_bytes(b"\xff\xd8\xff" + b"\xff" * (size - 5) + b"\xff\xd9")


DAMAGE = {  # what happens to a stored photo: (the damage, whether `doctor` without --deep sees it, `train` fails)
    "truncated": (lambda path, other: path.write_bytes(path.read_bytes()[:5000]), True, True),
    "overwritten": (lambda path, other: path.write_bytes(other.read_bytes()), True, True),  # another valid JPEG
    "zeroed": (lambda path, other: path.write_bytes(bytes(path.stat().st_size)), True, True),
    "bit rot": (flip_middle, False, False),  # same size and framing, still decodes: only its hash tells
    "scrambled": (scramble, False, True),  # same size and framing, does not decode: training finds it
}


def damage_a_stored_photo(world, tmp_path, how):
    home = fresh_home(world, tmp_path)
    registry = Registry(home)
    stored, other = registry.concept_photos(registry.concept("bo").id)[:2]
    DAMAGE[how][0](home / stored.file, home / other.file)
    return home, stored


@pytest.mark.parametrize("how", DAMAGE)
def test_doctor_finds_a_damaged_photo_train_names_it_and_re_adding_restores_it(world, tmp_path, how):
    home, stored = damage_a_stored_photo(world, tmp_path, how)
    damaged = (home / stored.file).read_bytes()
    shallow, deep = run_cli("doctor", home=home), run_cli("doctor", "--deep", home=home)
    assert (shallow.returncode, deep.returncode) == ((1, 1) if DAMAGE[how][1] else (0, 1)), (shallow.stdout, deep.stdout)
    [line] = [line for line in deep.stderr.splitlines() if line.startswith("photo:")]
    assert stored.file in line and f"yollava add bo {stored.source_path}" in line and "doctor --fix" in line
    if DAMAGE[how][2]:
        trained = invoke("train", "bo", "--model", world["model"], "--epochs", "1", "--k", "4", home=home)
        assert trained.returncode == 1 and "Traceback" not in trained.stderr
        error = trained.stderr.strip().splitlines()[-1]  # after the lines of the steps before it
        assert error.startswith("error: "), trained.stderr
        assert str(home / stored.file) in error and "`yollava doctor" in error and "--fix`" in error, trained.stderr
    again = invoke("add", "bo", stored.source_path, "--no-train", home=home)
    assert again.returncode == 0 and "0 new photo(s), 1 restored to the store, 3 in all" in again.stdout, again.stdout
    assert run_cli("doctor", "--deep", home=home).returncode == 0
    assert [p.read_bytes() for p in (home / "trash").rglob("*.jpg")] == [damaged]  # set aside, not deleted


def test_doctor_fix_moves_a_damaged_photo_to_the_trash(world, tmp_path):
    home, stored = damage_a_stored_photo(world, tmp_path, "truncated")
    fixed = run_cli("doctor", "--fix", home=home)
    assert fixed.returncode == 0 and "fixed 1 problem(s)" in fixed.stdout, fixed.stdout + fixed.stderr
    assert [len(p.read_bytes()) for p in (home / "trash").rglob("*.jpg")] == [5000]
    assert not (home / stored.file).exists() and run_cli("doctor", home=home).returncode == 0
    restored = invoke("add", "bo", stored.source_path, "--no-train", home=home)
    assert restored.returncode == 0 and "1 new photo(s), 3 in all" in restored.stdout


def test_add_replace_moves_the_old_checkpoints_to_the_trash(world, tmp_path):
    """Replacing a concept drops its checkpoint rows; their files went on lying in checkpoints/ as
    orphans on main. They go to the trash after the new rows commit, and never under a training."""
    home = fresh_home(world, tmp_path)
    photos = world["data"] / "concepts" / "cat" / "train"
    old = sorted(p.name for p in (home / "checkpoints" / "bo").glob("*.safetensors"))
    assert old
    with Registry(home).lock("train-bo", "training <bo>"):  # as a running `train bo` holds it
        busy = invoke("add", "bo", photos, "--replace", "--no-train", home=home)
    assert busy.returncode == 1 and "training <bo>" in busy.stderr, busy.stderr
    replaced = invoke("add", "bo", photos, "--replace", "--no-train", home=home)
    assert replaced.returncode == 0, replaced.stderr
    assert list((home / "checkpoints" / "bo").glob("*.safetensors")) == []
    assert sorted(p.name for p in (home / "trash").rglob("*.safetensors")) == old
    doctor = run_cli("doctor", "--json", home=home)
    assert doctor.returncode == 0 and json.loads(doctor.stdout)["problems"] == [], doctor.stdout


def stored_files_exist(home) -> list[str]:
    """The registry's photo and checkpoint files that are missing on disk (none, when nothing was lost)."""
    registry = Registry(home)
    files = list(registry.stored_photos().values()) + [checkpoint.file for checkpoint in registry.checkpoints()]
    return [f for f in files if not (home / f).is_file()]


def test_doctor_fix_racing_an_add_loses_no_photo(world, tmp_path):
    """doctor --fix run while `add` is inside its transaction (files written, rows not yet
    committed) must not take those files for orphans."""
    home = fresh_home(world, tmp_path)
    folder = tmp_path / "many"
    folder.mkdir()
    for i, photo in enumerate(sorted((world["data"] / "pool" / "imagenet-sample").glob("*.jpg"))[100:160]):
        shutil.copy(photo, folder / f"{i}.jpg")
    before = len(list((home / "photos").rglob("*.jpg")))
    doctor = Registry(home)  # opened first, as a looping `doctor --fix` is when an add begins
    proc = subprocess.Popen([sys.executable, "-c", SLOW_ADD, "add", "rnd", folder, "--no-train"],
                            env={**os.environ, "YOLLAVA_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list((home / "photos").rglob("*.jpg"))) >= before + 10, proc)
    report = examine(doctor, fix=True)  # scans add's uncommitted files, then waits for its commit to repair
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert stored_files_exist(home) == []
    assert len(json.loads(run_cli("show", "rnd", "--json", home=home).stdout)["photos"]) == 60
    assert not [p for p in report["problems"] if p["kind"] == "orphan"]  # re-checked under the lock: none was


def test_doctor_fix_during_train_leaves_its_checkpoint(world, tmp_path):
    home = fresh_home(world, tmp_path)
    existing = set((home / "checkpoints" / "bo").glob("run*.safetensors"))
    args = ["train", "bo", "--model", str(world["model"]), "--epochs", "3", "--k", "4"]
    proc = subprocess.Popen([sys.executable, "-m", "yollava_cli", *args], env={**os.environ, "YOLLAVA_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    doctor = Registry(home)
    wait_for(lambda: set((home / "checkpoints" / "bo").glob("run*.safetensors")) - existing, proc)
    (new,) = set((home / "checkpoints" / "bo").glob("run*.safetensors")) - existing
    assert proc.poll() is None  # still training: the new checkpoint is not recorded yet
    report = examine(doctor, fix=True)
    assert new.is_file() and report["ok"], report["problems"]
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert stored_files_exist(home) == []
    assert json.loads(run_cli("show", "bo", "--json", home=home).stdout)["status"] == "trained"


@pytest.mark.parametrize("damage", ["empty", "missing", "garbage"])
def test_a_damaged_registry_is_refused_then_restored_from_its_backup(world, tmp_path, damage):
    home = fresh_home(world, tmp_path)
    assert (home / "registry.db.backup").is_file()  # written by the commands that built the home
    concepts = run_cli("list", "--json", home=home).stdout
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "registry" not in p.name)
    for name in ("registry.db-wal", "registry.db-shm"):
        (home / name).unlink(missing_ok=True)
    if damage == "missing":
        (home / "registry.db").unlink()
    else:
        (home / "registry.db").write_bytes(b"" if damage == "empty" else b"not a database at all" * 100)
    for args in (["list"], ["doctor", "--fix"], ["add", "bo", world["data"] / "concepts" / "dog" / "train", "--no-train"]):
        result = run_cli(*args, home=home)
        assert result.returncode == 1 and "damaged" in result.stderr and "doctor --restore" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "registry" not in p.name) == files
    restored = run_cli("doctor", "--restore", home=home)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert run_cli("list", "--json", home=home).stdout == concepts
    assert stored_files_exist(home) == []
    assert any((home / "trash").rglob("registry.db")) == (damage != "missing")  # the damaged file is kept


def test_an_error_inside_the_registry_names_it(world, tmp_path):
    """A damaged table that SQLite finds only when a command reads it: the error says which file,
    and the way back."""
    import sqlite3

    home = fresh_home(world, tmp_path)
    db = home / "registry.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'concept_photos'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:  # the table's first page: its header overwritten
        f.seek((root - 1) * page_size)
        f.write(b"\x07" * 12)
    for args in (["show", "bo"], ["doctor"]):
        result = invoke(*args, home=home)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "malformed" in result.stderr and str(db) in result.stderr and "doctor --restore" in result.stderr, result.stderr


def test_a_registry_newer_than_its_backup_keeps_the_new_photos(world, tmp_path):
    """Restoring an older backup leaves the photos added since as orphans: reported, and only
    ever moved to the trash."""
    home = fresh_home(world, tmp_path)
    (home / "registry.db.backup").rename(tmp_path / "old.backup")
    assert run_cli("add", "cat", world["data"] / "concepts" / "cat" / "train", "--no-train", home=home).returncode == 0
    (tmp_path / "old.backup").rename(home / "registry.db.backup")
    (home / "registry.db").write_bytes(b"")
    restored = run_cli("doctor", "--restore", "--json", home=home)
    assert restored.returncode == 1  # the cat's photos are orphans of the restored registry
    orphans = [p for p in json.loads(restored.stdout)["problems"] if p["kind"] == "orphan"]
    assert len(orphans) == len(list((world["data"] / "concepts" / "cat" / "train").glob("*.jpg")))
    assert run_cli("doctor", "--fix", home=home).returncode == 0
    assert len(list((home / "trash").rglob("*.jpg"))) == len(orphans)


def consistent(home) -> None:
    """No row points at a missing file; unreferenced files are the only leftovers allowed."""
    report = examine(Registry(home))
    assert {p["kind"] for p in report["problems"]} <= {"orphan", "run"}, report["problems"]


def wait_for(marker, proc, timeout: float = 180) -> None:
    """Poll until the operation has visibly got halfway; a process that ends first fails the test,
    since a kill after the end would prove nothing."""
    deadline = time.monotonic() + timeout
    while not marker():
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before the kill could land mid-operation"
        assert time.monotonic() < deadline, "the operation never reached the point to kill it at"
        time.sleep(0.01)


def kill_9(proc) -> None:
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the process had already exited: the kill landed on nothing"


def scalar(home, sql: str):
    import sqlite3

    conn = sqlite3.connect(home / "registry.db", timeout=30)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


# `add` writes its photo files inside its one transaction; a short pause per photo keeps that
# window open long enough to kill the process in it, between two stored photos
SLOW_ADD = ("import sys, time; from yollava_cli.store.registry import Registry; store = Registry.store_photo; "
            "Registry.store_photo = lambda self, *a: (time.sleep(0.05), store(self, *a))[1]; "
            "from yollava_cli.cli import main; sys.argv = ['yollava', *sys.argv[1:]]; main()")


@pytest.mark.parametrize("stored", [1, 20, 40])
def test_kill_9_during_add_leaves_a_consistent_registry(world, tmp_path, stored):
    home = tmp_path / "home"
    folder = tmp_path / "many"
    folder.mkdir()
    for i, photo in enumerate(sorted((world["data"] / "pool" / "imagenet-sample").glob("*.jpg"))[:60]):
        shutil.copy(photo, folder / f"{i}.jpg")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_ADD, "add", "many", folder, "--no-train"],
                            env={**os.environ, "YOLLAVA_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(list((home / "photos").rglob("*.jpg"))) >= stored, proc)
    kill_9(proc)
    assert scalar(home, "SELECT count(*) FROM concept_photos") == 0  # killed inside the transaction: nothing committed
    consistent(home)
    result = run_cli("add", "many", folder, "--no-train", "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total_photos"] == 60
    assert run_cli("doctor", "--fix", home=home).returncode == 0


@pytest.mark.parametrize("point", ["first epoch", "after an epoch"])
def test_kill_9_during_train_then_resume(world, tmp_path, point):
    home = fresh_home(world, tmp_path)
    runs = scalar(home, "SELECT count(*) FROM runs")
    resume_file = home / "checkpoints" / "bo" / "resume.safetensors"
    args = ["train", "bo", "--model", str(world["model"]), "--epochs", "3", "--k", "4"]
    proc = subprocess.Popen([sys.executable, "-m", "yollava_cli", *args],
                            env={**os.environ, "YOLLAVA_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if point == "first epoch":  # the run has started (its row is written just before the first step)
        wait_for(lambda: scalar(home, "SELECT count(*) FROM runs") > runs, proc)
    else:  # an epoch has ended (its resume state is saved) and more are to come
        wait_for(resume_file.exists, proc)
    kill_9(proc)
    assert scalar(home, "SELECT status FROM runs ORDER BY id DESC LIMIT 1") == "running"  # it never finished
    consistent(home)
    resumable = resume_file.exists()
    assert resumable or point == "first epoch"
    result = run_cli(*args, *(["--resume"] if resumable else []), home=home)
    assert result.returncode == 0, result.stderr
    fixed = run_cli("doctor", "--fix", home=home)
    assert fixed.returncode == 0, fixed.stdout
    assert json.loads(run_cli("show", "bo", "--json", home=home).stdout)["status"] == "trained"


# -- the bad-input suite ----------------------------------------------------------------------


def bad_input_cases(world, tmp_path):
    d = tmp_path / "inputs"
    d.mkdir()
    good = d / "good.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good)
    (d / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not a photo")
    (d / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    Image.new("1", (8000, 7000)).save(d / "bomb.png")
    with open(d / "huge.jpg", "wb") as f:
        f.truncate(101 * 2**20)
    os.mkfifo(d / "fifo.jpg")
    os.symlink(d / "loop", d / "loop")
    (d / "empty").mkdir()
    (d / "bad_only").mkdir()
    (d / "bad_only" / "x.png").write_bytes(b"junk")
    (d / "manifest_bad").mkdir()
    (d / "manifest_bad" / "manifest.json").write_text("[1, 2")
    (d / "many-notes.txt").write_text("".join(f"fact {i}\n" for i in range(101)))
    return [
        ("add", ["add", "bo", d / "missing.jpg"], "no such file"),
        ("add", ["add", "bo", d / "empty"], "no photos"),
        ("add", ["add", "bo", d / "text.jpg"], "not an image"),
        ("add", ["add", "bo", d / "truncated.jpg"], "truncated"),
        ("add", ["add", "bo", d / "zero.jpg"], "empty file"),
        ("add", ["add", "bo", d / "photo.heic"], "HEIC"),
        ("add", ["add", "bo", d / "bomb.png"], "MP limit"),
        ("add", ["add", "bo", d / "huge.jpg"], "over 100 MB"),
        ("add", ["add", "bo", d / "fifo.jpg"], "not a regular file"),
        ("add", ["add", "bo", d / "loop"], "no such file"),
        ("add", ["add", "bo", d / "bad_only"], "no usable photo"),
        ("add", ["add", "Bo Cat", good], "invalid concept name"),
        ("add", ["add", "image", good], "reserved"),
        ("add", ["add", "bo_7", good], "latent tokens"),
        ("add", ["add", "<>", good], "invalid concept name"),
        ("add", ["add", "b" * 40, good], "invalid concept name"),
        ("add", ["add", "bo", good, "--kind", "person"], "--replace"),
        ("add", ["add", "bo", good, "--kind", "planet"], ""),  # usage error, exit 2
        ("show", ["show", "nobody"], "unknown concept"),
        ("rm", ["rm", "nobody", "--yes"], "unknown concept"),
        ("rm", ["rm", "bo"], "--yes"),
        ("mine", ["mine", "nobody"], "unknown concept"),
        ("mine", ["mine", "bo", "--pool", "nope"], "unknown pool"),
        ("mine", ["mine", "bo", "--embedder", "resnet"], "unknown embedder"),
        ("pool", ["pool", "add", "x", d / "missing"], "not a folder"),
        ("pool", ["pool", "add", "x", good], "not a folder"),
        ("pool", ["pool", "add", "bad name!", d], "invalid pool name"),
        ("pool", ["pool", "rm", "nope"], "unknown pool"),
        ("train", ["train", "nobody"], "unknown concept"),
        ("ask", ["ask", "nobody", "hi?"], "unknown concept"),
        ("ask", ["ask", "is <nobody> here?"], "unknown concept"),
        ("ask", ["ask", "bo", "hi?", "--image", d / "missing.jpg"], "no such file"),
        ("ask", ["ask", "bo", "hi?", "--image", d / "truncated.jpg"], "truncated"),
        ("ask", ["ask", "bo", "hi?", "--model", d / "no-model"], "not a model directory"),
        ("ask", ["ask", "a", "b", "c"], "quote the question"),
        ("find", ["find", "bo", d / "missing"], "no such file"),
        ("find", ["find", "nobody", good], "unknown concept"),
        ("explain", ["explain", "nobody"], "unknown concept"),
        ("export", ["export", "nobody", d / "x.yollava"], "unknown concept"),
        ("import", ["import", d / "missing.yollava"], "no such file"),
        ("import", ["import", good], "not a yollava bundle"),
        ("eval", ["eval", d / "missing"], "not a dataset folder"),
        ("eval", ["eval", d / "manifest_bad"], "malformed JSON"),
        ("eval", ["eval", d / "empty"], "manifest.json: missing"),
        ("eval", ["eval", world["data"] / "concepts", "--subjects", "unicorn"], "unknown subject"),
        ("eval", ["eval"], "name a dataset"),
        ("note", ["note", "bo", ""], "fact is empty"),
        ("note", ["note", "bo", "x" * 501], "keep a fact under 500"),
        ("note", ["note", "bo", "loves\tballs"], "control character"),
        ("note", ["note", "bo", "--rm", "7"], "has no fact 7"),
        ("note", ["note", "nobody", "likes balls"], "unknown concept"),
        ("add", ["add", "newone", good, "--no-train", "--note", "ok", "--note", " "], "fact is empty"),
        ("add", ["add", "newone", good, "--no-train", "--notes-file", d / "missing.txt"], "cannot read the notes file"),
        ("add", ["add", "newone", good, "--no-train", "--notes-file", d / "many-notes.txt"], "the limit is 100"),
        ("export", ["export", "bo", good], "exists already"),
        ("export", ["export", "bo", d / "fifo.jpg", "--force"], "not a regular file"),
        ("export", ["export", "bo", d / "empty", "--force"], "not a regular file"),
        ("chat", ["chat", "bo", "--json"], ""),  # usage error, exit 2: ask --json is the one with JSON
    ]


def test_bad_input_suite(world, tmp_path):
    home = fresh_home(world, tmp_path)
    before = snapshot(home)
    cases = bad_input_cases(world, tmp_path)
    assert len(cases) >= 40
    for verb, args, message in cases:  # in this process: the process boundary is not what is tested here
        result = invoke(*args, home=home)
        label = f"{verb}: {' '.join(map(str, args))}"
        assert result.returncode != 0, label
        assert "Traceback" not in result.stderr, label
        if message:
            assert result.returncode == 1 and message in result.stderr, (label, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)
        assert snapshot(home) == before, label


# -- every JSON the tool reads, against its schema ------------------------------------------------

TRUNCATED = object()  # the file's JSON cut off halfway
NOT_UTF8 = object()  # the file's JSON in Latin-1, with a byte UTF-8 refuses


def edited_json(original: bytes, edit) -> bytes:
    """`original` JSON with `edit` applied: a function of the parsed value returning the new value
    (None: edited in place), or TRUNCATED / NOT_UTF8."""
    if edit is TRUNCATED:
        return original[: len(original) // 2]
    if edit is NOT_UTF8:
        return original.replace(b"{", '{"note": "caf\u00e9", '.encode("latin-1"), 1)
    value = json.loads(original)
    changed = edit(value)
    return json.dumps(value if changed is None else changed).encode()


def small_dataset(world, tmp_path):
    """A dataset of two shared subjects (dog, cat): their photo folders linked, their JSON entries copied."""
    src, root = world["data"] / "concepts", tmp_path / "dataset"
    root.mkdir()
    for subject in ("dog", "cat"):
        (root / subject).symlink_to(src / subject)
    for name in ("manifest.json", "descriptions.json", "text_qa.json", "visual_qa.json", "facts.json"):
        data = json.loads((src / name).read_text())
        kept = {k: v for k, v in data.items() if k.strip("<>").split("/")[0] in ("dog", "cat")}
        (root / name).write_text(json.dumps(kept))
    return root


def bad_json_cases(world, tmp_path, home):
    """(file, edit, command, what the one-line error must hold besides the file's name)."""
    dataset = small_dataset(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert run_cli("export", "bo", bundle, home=home).returncode == 0
    ask = ["ask", "bo", "hi?", "--model", world["model"], "--max-tokens", "2"]
    photo = sorted((world["data"] / "concepts" / "dog" / "test").glob("*.jpg"))[0]
    find = ["find", "bo", photo, "--by", "head"]
    config = lambda edit, message: ("config", home / "config.json", edit, ask, message)
    evaluate = ["eval", dataset, "--model", world["model"], "--methods", "head", "--epochs", "1"]  # should a file pass: quick
    data = lambda name, edit, message: ("dataset", dataset / name, edit, evaluate, message)
    manifest = lambda edit, message: ("bundle", bundle, edit, ["import", bundle, "--as", "bo2", "--skip-model-check"], message)
    checkpoint = lambda edit, message: ("checkpoint", None, edit, find, message)
    return [
        config(lambda c: {"feature_cache_mb": "big"}, '"feature_cache_mb" must be a whole number from 64'),
        config(lambda c: {"feature_cache_mb": 3}, '"feature_cache_mb" must be a whole number from 64'),
        config(lambda c: {"default_pools": "imagenet"}, '"default_pools" must be a list'),
        config(lambda c: {"device": "gpu"}, '"device" must be one of "auto", "cpu", "cuda", "mps"'),
        config(lambda c: {"feature_cache_mb": 4096, "modle": "x"}, 'unknown key "modle"'),
        config(lambda c: [{"model": "x"}], "must be an object (got a list"),
        config(NOT_UTF8, "not UTF-8"),
        config(TRUNCATED, "malformed JSON"),
        data("manifest.json", lambda m: m["dog"].update(train="dog/train/00.jpg"), '"dog.train" must be a list'),
        data("manifest.json", lambda m: m["cat"].pop("test") and None, 'missing "cat.test"'),
        data("manifest.json", lambda m: m["dog"].update(test=[]), '"dog.test" must be a list of non-empty strings, at least 1'),
        data("manifest.json", lambda m: list(m.values()), "must be an object"),
        data("manifest.json", lambda m: {"Dog Two": m["dog"], "cat": m["cat"]}, 'key "Dog Two": invalid concept name'),
        data("manifest.json", NOT_UTF8, "not UTF-8"),
        data("manifest.json", TRUNCATED, "malformed JSON"),
        data("descriptions.json", lambda d: d.update({"<dog>": ["a corgi"]}), '"<dog>" must be a non-empty string (got a list'),
        data("text_qa.json", lambda q: q["<dog>"][0].update(correct_answer="C"), '"<dog>[0].correct_answer" must be one of "A", "B"'),
        data("text_qa.json", lambda q: q["<cat>"][1].pop("options") and None, 'missing "<cat>[1].options"'),
        data("visual_qa.json", lambda q: next(iter(q.values())).update(options=["x", "y"]), ".options must be an object"),
        data("facts.json", lambda f: f["dog"]["facts"].append("is \u202egnorw"), '"dog.facts[3]": fact holds a bidirectional'),
        data("facts.json", lambda f: f["cat"].update(questions={"question": "x"}), '"cat.questions" must be a list'),
        data("facts.json", TRUNCATED, "malformed JSON"),
        manifest(lambda m: m.update(k="4"), '"k" must be a whole number from 1 to 64 (got "4")'),
        manifest(lambda m: m.update(k=4096), '"k" must be a whole number from 1 to 64 (got 4096)'),
        manifest(lambda m: m.pop("base_fingerprint") and None, 'missing "base_fingerprint"'),
        manifest(lambda m: m.update(threshold=1.5), '"threshold" must be a number from 0 to 1'),
        manifest(lambda m: m.update(metrics=[m["metrics"]]), '"metrics" must be an object (got a list'),
        manifest(lambda m: m["metrics"]["validation"].update(weighted="0.9"), '"metrics.validation.weighted" must be a number'),
        manifest(lambda m: m.update(kind="planet"), '"kind" must be one of'),
        manifest(NOT_UTF8, "not UTF-8"),
        manifest(TRUNCATED, "malformed JSON"),
        checkpoint(lambda m: m.update(k="4"), '"k" must be a whole number >= 1 (got "4")'),
        checkpoint(lambda m: m.pop("base_model") and None, 'missing "base_model"'),
        checkpoint(lambda m: m["recognizer"].update(embedder=""), '"recognizer.embedder" must be'),
        checkpoint(lambda m: m["recognizer"].update(fusion=[1.0]), '"recognizer.fusion": must be the weights by name, with "head" and "bias" (numbers), or a list of numbers, exactly 3'),
        checkpoint(lambda m: [m], "must be an object (got a list"),
        checkpoint(TRUNCATED, "malformed JSON"),
    ]


def rewrite_checkpoint_meta(path, edit) -> None:
    """The checkpoint with its metadata JSON (under "yollava") edited; its tensors as they were."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = f.metadata()["yollava"]
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    path.write_bytes(save_safetensors(tensors, metadata={"yollava": edited_json(raw.encode(), edit).decode("latin-1")}))


def test_every_json_the_tool_reads_is_checked_against_its_schema(world, tmp_path):
    """config.json, a dataset's five files, a bundle's manifest and a checkpoint's metadata, each
    with wrong types, missing keys, numbers out of range, a list for an object, non-UTF-8 bytes and
    truncated JSON: one line naming the file and the key, exit 1, nothing stored changed."""
    home = fresh_home(world, tmp_path)
    checkpoint_file = home / Registry(home).current_checkpoint(Registry(home).concept("bo").id).file
    good_checkpoint = checkpoint_file.read_bytes()
    cases = bad_json_cases(world, tmp_path, home)
    for kind, path, edit, args, message in cases:
        label = f"{kind}: {message}"
        checkpoint_file.write_bytes(good_checkpoint)
        (home / "config.json").unlink(missing_ok=True)
        if kind == "checkpoint":
            rewrite_checkpoint_meta(checkpoint_file, edit)
            path = checkpoint_file
        elif kind == "bundle":
            path = rebuild(tmp_path / "bo.yollava", tmp_path, lambda m: m.update({"manifest.json": edited_json(m["manifest.json"], edit)}),
                           "edited.yollava")
            args = [path if a == tmp_path / "bo.yollava" else a for a in args]
        else:
            original = path.read_bytes() if path.exists() else b"{}"
            path.write_bytes(edited_json(original, edit))
        before = snapshot(home)
        result = invoke(*args, home=home)
        if kind == "dataset":
            path.write_bytes(original)
        assert result.returncode == 1, (label, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)
        assert str(path) in result.stderr and message in result.stderr, (label, result.stderr)
        assert snapshot(home) == before, label
    assert {kind for kind, *_ in cases} == {"config", "dataset", "bundle", "checkpoint"}


def test_a_damaged_resume_state_is_one_line(world, tmp_path):
    home = fresh_home(world, tmp_path)
    resume = home / "checkpoints" / "bo" / "resume.safetensors"
    args = ["train", "bo", "--model", world["model"], "--epochs", "1", "--k", "4"]
    resume.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    result = invoke(*args, "--resume", home=home)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(resume) in errors[0] and "damaged" in errors[0], result.stderr


def test_read_only_and_full_disk(world, tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    unwritable = run_cli("add", "bo", good, "--no-train", home=blocked / "home")
    assert unwritable.returncode == 1 and "cannot open the data dir" in unwritable.stderr
    assert len(unwritable.stderr.strip().splitlines()) == 1
    home = fresh_home(world, tmp_path)
    before = snapshot(home)
    big = tmp_path / "big.png"
    Image.effect_noise((900, 900), 80).convert("RGB").save(big)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
            "from yollava_cli.cli import main; sys.argv = ['yollava', 'add', 'bo', sys.argv[1], '--no-train']; main()")
    full = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True,
                          env={**os.environ, "YOLLAVA_HOME": str(home)}, timeout=120)
    # the cap hits the first write: SQLite's journal ("disk I/O error") or the photo ("File too large")
    assert full.returncode == 1 and ("disk" in full.stderr or "too large" in full.stderr), full.stderr
    assert len(full.stderr.strip().splitlines()) == 1 and "Traceback" not in full.stderr
    rows, files = snapshot(home)
    assert rows == before[0]  # the transaction never committed; at most a temp file was left behind
    assert run_cli("doctor", "--fix", home=home).returncode == 0
    rows, files = snapshot(home)
    assert rows == before[0] and [f for f in files if not f.startswith("trash/")] == before[1]
