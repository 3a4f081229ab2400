"""Trust: bundles that refuse tampering, locks, doctor, kill -9 fault injection, and a bad-input suite
across every verb (one-line error, non-zero exit, no traceback, nothing stored changed)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from conftest import run_cli, shared_data, snapshot
from tiny import tiny_llava
from yollava_cli.bundles import export_concept
from yollava_cli.doctor import examine
from yollava_cli.store import Registry


# -- a trained concept on a tiny model saved to disk, shared by the tests below -----------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = shared_data()
    root = tmp_path_factory.mktemp("trust")
    home, model_dir = root / "home", root / "model"
    model, processor = tiny_llava()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (root / "pool").mkdir()
    for photo in sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))[::40]:
        shutil.copy(photo, root / "pool")
    for args in (["add", "bo", data / "concepts" / "dog" / "train", "--kind", "pet", "--no-train"],
                 ["pool", "add", "p", root / "pool"],
                 ["train", "bo", "--model", model_dir, "--epochs", "1", "--k", "4"]):
        result = run_cli(*args, home=home)
        assert result.returncode == 0, result.stderr
    return {"home": home, "model": model_dir, "root": root, "data": data}


def fresh_home(world, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(world["home"], home)
    return home


# -- bundles ----------------------------------------------------------------------------------


def test_export_import_round_trip(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    exported = json.loads(run_cli("export", "bo", bundle, "--with-photos", "--json", home=home).stdout)
    assert exported["photos"] == 3 and bundle.exists()
    other = tmp_path / "other"
    imported = run_cli("import", bundle, "--as", "bo2", "--model", world["model"], "--json", home=other)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["concept"] == "bo2"
    shown = json.loads(run_cli("show", "bo2", "--json", home=other).stdout)
    assert shown["status"] == "trained" and len(shown["photos"]) == 3
    asked = run_cli("ask", "bo2", "hi?", "--max-tokens", "4", "--model", world["model"], "--json", home=other)
    assert asked.returncode == 0, asked.stderr
    again = run_cli("import", bundle, "--as", "bo2", "--model", world["model"], home=other)
    assert again.returncode == 1 and "exists already" in again.stderr


def test_importing_photos_already_stored_reuses_them(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert run_cli("export", "bo", bundle, "--with-photos", home=home).returncode == 0
    before = sorted(p.name for p in (home / "photos").rglob("*.jpg"))
    imported = run_cli("import", bundle, "--as", "bo2", "--skip-model-check", home=home)
    assert imported.returncode == 0, imported.stderr
    assert sorted(p.name for p in (home / "photos").rglob("*.jpg")) == before  # one photo, one file
    photos = lambda name: sorted(p["sha256"] for p in json.loads(run_cli("show", name, "--json", home=home).stdout)["photos"])
    assert photos("bo2") == photos("bo")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    from yollava_cli.fileio import atomic_write_bytes

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
        ("manifest not JSON", lambda m: m.update({"manifest.json": b"{oops"}), "not valid JSON"),
        ("foreign format", lambda m: m.update({"manifest.json": json.dumps({"format": "other/1"}).encode()}), "not a yollava-concept-bundle"),
        ("no tensors", lambda m: m.pop("concept.safetensors"), "no concept.safetensors"),
    ]


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
    for description, path, message in cases:
        result = run_cli("import", path, "--as", "evil", "--skip-model-check", home=home)
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
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from yollava_cli.store import Registry\n"
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
    stored = registry.concept_photos(registry.concept("bo")["id"])[0]
    (home / stored["file"]).unlink()
    (home / "photos" / "zz").mkdir()
    (home / "photos" / "zz" / "stray.jpg").write_bytes(b"x")
    (home / "checkpoints" / "bo" / ".x.partial").write_bytes(b"x")
    result = run_cli("doctor", "--json", home=home)
    assert result.returncode == 1
    kinds = sorted(p["kind"] for p in json.loads(result.stdout)["problems"])
    assert kinds == ["orphan", "orphan", "photo"]
    fixed = run_cli("doctor", "--fix", home=home)
    assert fixed.returncode == 0 and "fixed 3" in fixed.stdout
    assert run_cli("doctor", home=home).returncode == 0
    assert json.loads(run_cli("show", "bo", "--json", home=home).stdout)["status"] == "added"  # retrain: a photo is gone


def consistent(home) -> None:
    """No row points at a missing file; unreferenced files are the only leftovers allowed."""
    report = examine(Registry(home))
    assert {p["kind"] for p in report["problems"]} <= {"orphan", "run"}, report["problems"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_during_add_leaves_a_consistent_registry(world, tmp_path, seed):
    home = tmp_path / "home"
    folder = tmp_path / "many"
    folder.mkdir()
    for i, photo in enumerate(sorted((world["data"] / "pool" / "imagenet-sample").glob("*.jpg"))[:60]):
        shutil.copy(photo, folder / f"{i}.jpg")
    proc = subprocess.Popen([sys.executable, "-m", "yollava_cli", "add", "many", folder, "--no-train"],
                            env={**os.environ, "YOLLAVA_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(seed).uniform(0.5, 3.0))
    proc.kill()
    proc.wait()
    if (home / "registry.db").exists():
        consistent(home)
    result = run_cli("add", "many", folder, "--no-train", "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total_photos"] == 60
    assert run_cli("doctor", "--fix", home=home).returncode == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_during_train_then_resume(world, tmp_path, seed):
    home = fresh_home(world, tmp_path)
    args = ["train", "bo", "--model", str(world["model"]), "--epochs", "3", "--k", "4"]
    proc = subprocess.Popen([sys.executable, "-m", "yollava_cli", *args],
                            env={**os.environ, "YOLLAVA_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(seed).uniform(3.0, 12.0))
    proc.kill()
    proc.wait()
    consistent(home)
    resumable = (home / "checkpoints" / "bo" / "resume.safetensors").exists()
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
    ]


def test_bad_input_suite(world, tmp_path):
    home = fresh_home(world, tmp_path)
    before = snapshot(home)
    cases = bad_input_cases(world, tmp_path)
    assert len(cases) >= 40
    for verb, args, message in cases:
        result = run_cli(*args, home=home, timeout=120)
        label = f"{verb}: {' '.join(map(str, args))}"
        assert result.returncode != 0, label
        assert "Traceback" not in result.stderr, label
        if message:
            assert result.returncode == 1 and message in result.stderr, (label, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)
        assert snapshot(home) == before, label


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
    assert snapshot(home) == before
