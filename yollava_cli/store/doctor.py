"""`doctor`: check the registry against the files it points at, and repair what is safe to repair.

Safe repairs only drop what is already lost or never referenced: orphan and temporary files,
rows whose files are gone, runs left 'running' by a killed process. The repair runs inside one
write transaction, so every writer of the store waits for it; each file is checked again there
just before it is moved, files a live training owns are left alone, and nothing is deleted: what
is removed goes to the trash folder (see trash.py).
"""

import fcntl
import json
import os
import shutil
import sqlite3
import struct
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.reporting import Status, report
from yollava_cli.store.backup import FILE as BACKUP_FILE
from yollava_cli.store.backup import backup_is_usable, backup_lacks, backup_state, describe_lacks, uri, write_backup
from yollava_cli.store.failures import BUSY_TIMEOUT_S, explain, require_free
from yollava_cli.store.facts import check_fact
from yollava_cli.store.fileio import STAGING, staging_in_use
from yollava_cli.store.migrations import MIGRATIONS
from yollava_cli.store.photo_check import photo_problems, still_damaged
from yollava_cli.store.registry import Registry
from yollava_cli.store.trash import KEEP_DAYS, empty_trash, move_to_trash, trash_folder

STALE_TEMP_S = 600  # a temporary file outside the photo store older than this has no live writer


def problem(kind: str, detail: str, **target) -> dict:
    return {"kind": kind, "detail": detail, "fixed": False, **target}


def examine(registry: Registry, fix: bool = False, deep: bool = False) -> dict:
    """What is wrong, and with `fix` repaired; `deep` reads every stored photo whole (photo_check)."""
    root = registry.root
    found = []
    integrity = registry.integrity_check()
    if integrity != "ok":
        found.append(problem("database", f"SQLite integrity check: {integrity} (restore registry.db from a backup)"))

    found += photo_problems(registry, deep)
    photos = registry.stored_photos()
    known_files = set(photos.values())
    for path in (root / "photos").rglob("*"):
        if path.is_file() and path.suffix != ".tmp" and rel(root, path) not in known_files:
            found.append(problem("orphan", f"{rel(root, path)} is not in the registry", path=path))

    checkpoints = registry.checkpoints()
    for checkpoint in checkpoints:
        if not (root / checkpoint.file).is_file():
            found.append(problem("checkpoint", f"{checkpoint.file} is missing", checkpoint=checkpoint))
    for path in stray_checkpoints(registry, {checkpoint.file for checkpoint in checkpoints}):
        found.append(problem("orphan", f"{rel(root, path)} is not in the registry", path=path))
    for path in temporary_files(registry):
        found.append(problem("orphan", f"{rel(root, path)} is a temporary file left by a stopped write", path=path))

    for r in registry.running_runs():
        if not running(registry, r.name):
            found.append(problem("run", f"run {r.id} ({r.name or 'eval'}) was left running by a process that died", run=r))

    for r in registry.all_facts():  # written around `note` (by hand, an old tool): reported, never rewritten
        try:
            check_fact(r.text)
        except UserError as e:
            found.append(problem("fact", f"<{r.name}>: {e} (see `yollava note {r.name}`; remove it with --rm N)"))

    trash = None
    if fix and any(p["kind"] not in ("database", "fact") for p in found):
        trash = trash_folder(root)
        found = repair(registry, found, trash)
    emptied = empty_trash(root) if fix else []
    report = [{k: v for k, v in p.items() if k in ("kind", "detail", "fixed", "moved_to")} for p in found]
    backup = backup_state(root)
    if fix and backup.get("behind"):  # a refresh that failed at a command's exit, tried again
        write_backup(root)
        backup = {**backup_state(root), "refreshed": True}
    return {"registry": str(root / "registry.db"), "schema_version": registry.schema_version,
            "schema_expected": len(MIGRATIONS), "problems": report, "backup": backup,
            "trash": str(trash) if trash and trash.exists() else None, "trash_emptied": emptied,
            "ok": not [p for p in report if not p["fixed"]]}


def repair(registry: Registry, found: list[dict], trash: Path) -> list[dict]:
    """Fix each problem after checking it again under the write lock; one that a concurrent
    command resolved meanwhile (its rows committed) is dropped from the report."""
    root = registry.root
    still = []
    with registry.transaction():
        photos = registry.stored_photos()
        known_files = set(photos.values())
        checkpoint_files = {checkpoint.file for checkpoint in registry.checkpoints()}
        live = {r.id for r in registry.running_runs()}
        for item in found:
            kind = item["kind"]
            if kind == "photo":
                sha = item["sha"]
                if sha not in photos or not still_damaged(registry, item):
                    continue
                registry.forget_photo(sha)
                if (root / photos[sha]).is_file():
                    item["moved_to"] = rel(root, move_to_trash(root, root / photos[sha], trash))
            elif kind == "orphan":
                path = item["path"]
                if not path.is_file() or rel(root, path) in known_files | checkpoint_files:
                    continue
                with concept_lock(registry, path) as free:
                    if not free:
                        continue  # a training started meanwhile: the file is its own
                    if path.name == "resume.safetensors" or rel(root, path) in resumable_files(path.parent):
                        continue
                    item["moved_to"] = rel(root, move_to_trash(root, path, trash))
            elif kind == "checkpoint":
                checkpoint = item["checkpoint"]
                if checkpoint.file not in checkpoint_files or (root / checkpoint.file).is_file():
                    continue
                registry.forget_checkpoint(checkpoint.id, checkpoint.concept_id)
            elif kind == "run":
                r = item["run"]
                if r.id not in live or running(registry, r.name):
                    continue
                registry.interrupt_run(r.id)
            item["fixed"] = kind not in ("database", "fact")
            still.append(item)
    return still


def rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def concept_folders(registry: Registry):
    base = registry.root / "checkpoints"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def stray_checkpoints(registry: Registry, known: set[str]) -> list[Path]:
    """Checkpoint files no row names, in folders whose concept is not being trained right now, and
    not the best-so-far file an interrupted run's resume state still points at."""
    stray = []
    for folder in concept_folders(registry):
        with concept_lock(registry, folder / "x") as free:
            if not free:
                continue
            keep = resumable_files(folder)
            stray += [p for p in sorted(folder.glob("*.safetensors")) if p.name != "resume.safetensors"
                      and rel(registry.root, p) not in known | keep]
    return stray


def temporary_files(registry: Registry) -> list[Path]:
    """Temporary files of writes that stopped: in the photo store (written only inside a write
    transaction, so none is live while doctor holds it), and elsewhere once they are stale."""
    root = registry.root
    found = sorted((root / "photos").rglob("*.tmp")) if (root / "photos").is_dir() else []
    cutoff = time.time() - STALE_TEMP_S
    for pattern in ("*.tmp", "*.partial"):
        for path in root.rglob(pattern):
            parts = path.relative_to(root).parts
            if parts[0] in ("photos", "trash") or not path.is_file() or path.stat().st_mtime > cutoff:
                continue
            if parts[0] == "checkpoints" and len(parts) > 2 and training(registry, parts[1]):
                continue
            if parts[0] == STAGING and len(parts) > 2 and staging_in_use(root / STAGING / parts[1]):
                continue  # a long `add` is still staging its photos
            found.append(path)
    return found


def resumable_files(folder: Path) -> set[str]:
    """The checkpoint an interrupted run's resume state names as its best so far: `--resume` needs it."""
    path = folder / "resume.safetensors"
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        best = json.loads(header["__metadata__"]["yollava"]).get("best") or {}
        return {best["file"]} if best.get("file") else set()
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return set()


@contextmanager
def concept_lock(registry: Registry, path: Path):
    """Hold the training lock of the concept whose checkpoint folder holds `path` (yields True), or
    yield False when a live process holds it; paths outside checkpoints/ need no lock."""
    parts = path.relative_to(registry.root).parts
    if parts[0] != "checkpoints" or len(parts) < 3:
        yield True
        return
    try:
        with registry.lock(f"train-{parts[1]}", "checking"):
            yield True
    except UserError:
        yield False


def training(registry: Registry, name: str) -> bool:
    try:
        with registry.lock(f"train-{name}", "checking"):
            return False
    except UserError:
        return True


def running(registry: Registry, name: str | None) -> bool:
    """Whether a live process holds the concept's training lock."""
    return name is not None and training(registry, name)


def restore(root: Path) -> dict:
    """Put the registry's own backup in place of a registry.db that is damaged (missing, empty,
    unreadable, or failing SQLite's integrity check), and only then: a healthy one is refused, as
    is one that cannot be read for a reason a restore does not cure (a full disk, a permission).
    Under the lock every command takes to open the registry; what the backup lacks of the
    registry is said (a reported Status) before anything is replaced; the backup is copied first and
    swapped in by a rename, so a failure midway leaves registry.db where it was."""
    db = root / "registry.db"
    if not backup_is_usable(root):
        raise UserError(f"{root / BACKUP_FILE}: no usable backup to restore; restore registry.db from your own backup")
    with open(root / "registry.open-lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        damage = registry_damage(db)
        if damage is None:
            raise UserError(f"{db} is healthy (SQLite's integrity check: ok): nothing to restore, it was left as it is; "
                            "`yollava doctor` checks it against its files")
        require_free(root, 2 * (root / BACKUP_FILE).stat().st_size + 2**20, "restoring the backup")
        lacks = backup_lacks(root)
        report(Status(f"{db} {damage}; the backup ({saved_at(root)}) " + (
            f"lacks {describe_lacks(lacks)} of it, which the damaged copy in the trash keeps" if lacks
            else "holds all that could be read of it" if lacks is not None
            else "replaces it: what changed since the backup cannot be read from it")))
        moved = swap_in_backup(root)
    with Registry(root) as registry:
        found = examine(registry)
    return {**found, "restored_from": str(root / BACKUP_FILE), "damaged_moved_to": moved, "backup_lacked": lacks}


def registry_damage(db: Path) -> str | None:
    """How registry.db is damaged, or None when it is sound; an error it cannot be read for that
    is not damage (see failures.py) is raised as a one-line UserError."""
    if not db.is_file():
        return "is missing"
    if db.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        conn = sqlite3.connect(uri(db, "rw"), uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as e:
        told = explain(e, db)
        if told:
            raise UserError(f"{told}; nothing was restored") from None
        return f"cannot be read ({e})"
    return None if result == "ok" else f"fails SQLite's integrity check ({result})"


def swap_in_backup(root: Path) -> list[str]:
    """Copy the backup beside registry.db, then keep the damaged files in the trash and rename
    the copy into place; returns where the damaged files went."""
    tmp = root / f".registry.db.restore.{os.getpid()}.tmp"
    try:
        shutil.copyfile(root / BACKUP_FILE, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    trash = trash_folder(root)
    moved = []
    try:
        for name in ("registry.db-wal", "registry.db-shm", "registry.db"):  # the log first: never replayed on the backup
            if (root / name).exists():
                moved.append(rel(root, move_to_trash(root, root / name, trash)))
        os.replace(tmp, root / "registry.db")
    finally:
        tmp.unlink(missing_ok=True)
    return moved[::-1]


def saved_at(root: Path) -> str:
    return "saved " + datetime.fromtimestamp((root / BACKUP_FILE).stat().st_mtime).isoformat(timespec="minutes")


def summary_line(report: dict) -> str:
    open_problems = [p for p in report["problems"] if not p["fixed"]]
    if not report["problems"]:
        return f"registry OK (schema {report['schema_version']}); {backup_line(report['backup'])}"
    if not open_problems:
        moved = f"; what was removed is in {report['trash']} (kept {KEEP_DAYS} days, or `yollava doctor --empty-trash`)" \
            if report.get("trash") else ""
        return f"fixed {len(report['problems'])} problem(s){moved}; {backup_line(report['backup'])}"
    return f"{len(open_problems)} problem(s); `yollava doctor --fix` repairs what is safe to repair; {backup_line(report['backup'])}"


def backup_line(backup: dict) -> str:
    """The backup's age, and whether it is behind the registry: a restore would lose what it lacks."""
    if not backup["usable"]:
        return f"no usable backup ({backup['file']}): one is written after the next change"
    age = backup["age_s"]
    ago = f"{age // 86400} d" if age >= 86400 else f"{age // 3600} h" if age >= 3600 else f"{age // 60} min"
    saved = f"backup saved {backup['saved_at']} ({ago} ago)"
    if backup.get("refreshed"):
        return "the backup was behind the registry and is refreshed now"
    if backup["lacks"] is None:
        return f"{saved}; whether it is behind the registry could not be read"
    if backup["behind"]:
        return f"{saved} is behind the registry: it lacks {describe_lacks(backup['lacks'])}; `yollava doctor --fix` refreshes it"
    return f"{saved}, up to date"
