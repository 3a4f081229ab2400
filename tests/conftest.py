import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data() -> Path:
    """../shared/data, or skip: it is not in the repo and some machines do not have it."""
    if not (SHARED_DATA / "concepts" / "manifest.json").exists():
        pytest.skip(reason=f"shared data not found at {SHARED_DATA} (tests that use real photos need it)")
    return SHARED_DATA


@pytest.fixture
def said():
    """The status lines the test's code reports (yollava_cli.reporting), as the CLI would print them."""
    from yollava_cli.reporting import Status, reporting

    lines = []
    with reporting(lambda event: lines.append(event.text) if isinstance(event, Status) else None):
        yield lines


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh data dir for each test, via YOLLAVA_HOME."""
    path = tmp_path / "home"
    monkeypatch.setenv("YOLLAVA_HOME", str(path))
    return path


def run_cli(*args: str, home: Path, input: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `yollava` in a subprocess: real exit codes, real stdout/stderr."""
    env = {**os.environ, "YOLLAVA_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "yollava_cli", *map(str, args)],
        capture_output=True, text=True, env=env, input=input, timeout=timeout,
    )


def invoke(*args: str, home: Path, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `yollava` in this process (typer's CliRunner), answering like run_cli: no interpreter
    start-up per call. For crash, signal and exit-code-race tests keep run_cli. An exception the
    CLI did not turn into an exit code is re-raised, as a subprocess would print its traceback."""
    from typer.testing import CliRunner

    from yollava_cli.cli import app

    result = CliRunner().invoke(app, list(map(str, args)), input=input, prog_name="yollava",
                                env={"YOLLAVA_HOME": str(home), "COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def snapshot(home: Path) -> tuple:
    """Every registry row and every stored file: equal snapshots mean nothing changed."""
    import sqlite3

    db_path = home / "registry.db"
    rows = []
    if db_path.exists():
        conn = sqlite3.connect(db_path)
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for table in tables:
            rows.append((table, sorted(map(repr, conn.execute(f"SELECT * FROM {table}")))))
        conn.close()
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "registry.db" not in p.name)
    return rows, files


def with_negatives(registry, name: str, folder: Path, count: int = 12) -> None:
    """Give a concept `count` plain bluish negatives (half hard, half easy), as if mined: training
    tests need negatives but not a pool or an embedder."""
    import hashlib

    from PIL import Image

    from yollava_cli.learning.mining import Candidate, file_loader, store_negatives

    folder.mkdir()
    picked = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.new("RGB", (48, 40), (20, 40 + i * 10, 200)).save(path)
        candidate = Candidate(hashlib.sha256(path.read_bytes()).hexdigest(), str(path), file_loader(path))
        picked.append((candidate, "hard" if i < count // 2 else "easy", 0.5))
    store_negatives(registry, registry.concept(name), picked, "test")


def tiny_world(root: Path, bundle: bool = False) -> dict:
    """A trained concept <bo> on a tiny model saved to disk (a user's folder), with a pool; with
    `bundle`, its export with photos too. Built by the trust and recovery tests once per module."""
    from tiny import tiny_llava

    from yollava_cli.store.backup import write_backup

    data = shared_data()
    home, model_dir = root / "home", root / "model"
    model, processor = tiny_llava()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (root / "pool").mkdir()
    for photo in sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))[::40]:
        shutil.copy(photo, root / "pool")
    steps = [["add", "bo", data / "concepts" / "dog" / "train", "--kind", "pet", "--no-train"],
             ["pool", "add", "p", root / "pool"],
             ["train", "bo", "--model", model_dir, "--epochs", "1", "--k", "4"]]
    if bundle:
        steps.append(["export", "bo", root / "bo.yollava", "--with-photos"])
    for args in steps:
        result = invoke(*args, home=home)
        assert result.returncode == 0, result.stderr
    write_backup(home)  # what each of those commands' processes does at exit
    return {"home": home, "model": model_dir, "root": root, "data": data} | ({"bundle": root / "bo.yollava"} if bundle else {})
