"""The data dir's trash: what `doctor` removes is moved here, one folder per run, never deleted at
once, so a repair made on a wrong premise can be undone by moving the files back."""

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

FOLDER = "trash"
KEEP_DAYS = 30


def trash_folder(root: Path) -> Path:
    """A new folder for one run's removals, named by its UTC time (and pid, so two never share)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return root / FOLDER / f"{stamp}-{os.getpid()}"


def move_to_trash(root: Path, path: Path, folder: Path) -> Path:
    """Move `path` (inside the data dir) to `folder`, keeping its place relative to the data dir."""
    target = folder / path.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def empty_trash(root: Path, older_than_days: float | None = KEEP_DAYS) -> list[str]:
    """Delete the trash folders older than the given days (all of them with None); returns their names."""
    base = root / FOLDER
    if not base.is_dir():
        return []
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = []
    for folder in sorted(base.iterdir()):
        if cutoff is None or folder.lstat().st_mtime < cutoff:
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            else:
                folder.unlink()
            removed.append(folder.name)
    return removed
