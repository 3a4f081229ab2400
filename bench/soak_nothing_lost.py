"""Soak: the three ways the store used to lose data, each run --rounds times against the real CLI.

1. `doctor --fix` looping while `add` stores 60 new photos (a data dir of ~1000 photos): every
   photo `show` lists must still be on disk.
2. `doctor --fix` looping while `train` runs (a tiny random-init model saved as a user's folder):
   training must finish and its checkpoint exist.
3. registry.db emptied to 0 bytes: `list` and `doctor --fix` must refuse and change no stored file;
   `doctor --restore` must bring back the concepts.
Prints and writes per-case rounds, failures and files lost.
Run:  python bench/soak_nothing_lost.py [--rounds 20]  (writes bench/results/soak-nothing-lost.json)
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))


def cli(home: Path, *args, background: bool = False):
    command = [sys.executable, "-m", "yollava_cli", *map(str, args)]
    env = {**os.environ, "YOLLAVA_HOME": str(home)}
    if background:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def missing_files(home: Path) -> int:
    from yollava_cli.store.registry import Registry

    registry = Registry(home)
    files = list(registry.stored_photos().values()) + [checkpoint.file for checkpoint in registry.checkpoints()]
    return sum(not (home / f).is_file() for f in files)


def small_photos(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(n):  # noise over a random colour: every photo distinct
        tint = Image.new("RGB", (48, 40), tuple(rng.randrange(256) for _ in range(3)))
        Image.blend(tint, Image.effect_noise((48, 40), 60).convert("RGB"), 0.5).save(folder / f"{i}.jpg")
    return folder


def doctor_loop_while(home: Path, proc) -> int:
    runs = 0
    while proc.poll() is None:
        cli(home, "doctor", "--fix")
        runs += 1
    return runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    from tiny import tiny_llava

    work = Path(tempfile.mkdtemp(prefix="yollava-soak-"))
    home, model_dir = work / "home", work / "model"
    model, processor = tiny_llava()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    pool = small_photos(work / "pool", 900, seed=-1)
    for step in (["add", "bo", DATA / "concepts" / "dog" / "train", "--kind", "pet", "--no-train"],
                 ["add", "filler", pool, "--no-train"], ["pool", "add", "p", DATA / "pool" / "imagenet-sample"],
                 ["train", "bo", "--model", model_dir, "--epochs", "1", "--k", "4"]):
        result = cli(home, *step)
        assert result.returncode == 0, result.stderr
    cases = {}

    rounds = []
    for r in range(args.rounds):
        folder = small_photos(work / f"add{r}", 60, seed=r)
        proc = cli(home, "add", f"rnd{r}", folder, "--no-train", background=True)
        doctors = doctor_loop_while(home, proc)
        shown = len(json.loads(cli(home, "show", f"rnd{r}", "--json").stdout)["photos"]) if proc.returncode == 0 else 0
        rounds.append({"add_exit": proc.returncode, "doctor_runs": doctors, "photos_listed": shown, "files_missing": missing_files(home)})
    cases["doctor_racing_add"] = rounds

    rounds = []
    for r in range(args.rounds):
        proc = cli(home, "train", "bo", "--model", model_dir, "--epochs", "3", "--k", "4", background=True)
        doctors = doctor_loop_while(home, proc)
        status = json.loads(cli(home, "show", "bo", "--json").stdout)["status"]
        rounds.append({"train_exit": proc.returncode, "doctor_runs": doctors, "status": status, "files_missing": missing_files(home)})
    cases["doctor_racing_train"] = rounds

    rounds = []
    listed = cli(home, "list", "--json").stdout
    for r in range(args.rounds):
        files = sorted(str(p.relative_to(home)) for p in (home / "photos").rglob("*") if p.is_file())
        for name in ("registry.db-wal", "registry.db-shm"):
            (home / name).unlink(missing_ok=True)
        (home / "registry.db").write_bytes(b"")
        refused = [cli(home, *a).returncode for a in (["list"], ["doctor", "--fix"])]
        after = sorted(str(p.relative_to(home)) for p in (home / "photos").rglob("*") if p.is_file())
        restored = cli(home, "doctor", "--restore").returncode
        rounds.append({"refused_exits": refused, "photos_unchanged": files == after, "restore_exit": restored,
                       "concepts_back": cli(home, "list", "--json").stdout == listed, "files_missing": missing_files(home)})
    cases["zero_byte_registry"] = rounds

    summary = {name: {"rounds": len(rs), "files_missing": sum(r["files_missing"] for r in rs),
                      "failed_rounds": sum(1 for r in rs if r["files_missing"] or r.get("add_exit", 0) or r.get("train_exit", 0)
                                           or r.get("status", "trained") != "trained" or r.get("photos_listed", 60) != 60
                                           or r.get("refused_exits", [1, 1]) != [1, 1] or not r.get("photos_unchanged", True)
                                           or r.get("restore_exit", 0) or not r.get("concepts_back", True))}
               for name, rs in cases.items()}
    report = {"summary": summary, "cases": cases, "stored_photos": len(list((home / "photos").rglob("*.jpg"))),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (REPO / "bench" / "results" / "soak-nothing-lost.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
