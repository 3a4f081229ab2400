"""What an OS or SQLite error means for the data dir. A full disk, a read-only file system, a
permission, a failing disk or a lock another process holds are not damage to the registry, and
restoring it would not help (on a full disk it would make things worse): each is told apart from
damage, with its own one-line message and fix."""

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from yollava_cli.errors import UserError

BUSY_TIMEOUT_S = 60  # how long a command waits on another's write lock
LOW_SPACE = 4 * 2**20  # an SQLite I/O error with less than this free is the disk filling up

ERRNOS = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EROFS: "read-only", errno.EACCES: "access",
          errno.EPERM: "access", errno.EIO: "io"}
SQLITE_CODES = {sqlite3.SQLITE_FULL: "full", sqlite3.SQLITE_READONLY: "read-only", sqlite3.SQLITE_PERM: "access",
                sqlite3.SQLITE_CANTOPEN: "access", sqlite3.SQLITE_IOERR: "io", sqlite3.SQLITE_BUSY: "locked",
                sqlite3.SQLITE_LOCKED: "locked"}


def free_bytes(path: Path) -> int | None:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def read_only_fs(path: Path) -> bool:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def failure_kind(e: BaseException, path: Path) -> str | None:
    """'full', 'read-only', 'access', 'io' or 'locked' when `e` (about `path`) is one of those
    troubles rather than damage; None otherwise."""
    if isinstance(e, sqlite3.Error):
        kind = SQLITE_CODES.get((getattr(e, "sqlite_errorcode", None) or 0) & 0xFF)
    elif isinstance(e, OSError):
        kind = ERRNOS.get(e.errno)
    else:
        return None
    free = free_bytes(path) if kind == "io" else None
    if free is not None and free < LOW_SPACE:
        return "full"  # SQLite says 'disk I/O error' when the disk fills while it grows a file
    if kind in ("access", "io") and read_only_fs(path):
        return "read-only"
    if kind == "read-only" and isinstance(e, sqlite3.Error) and not read_only_fs(path):
        return "access"  # SQLite says "readonly database" of a file the user may not write, too
    return kind


def explain(e: BaseException, path: Path) -> str | None:
    """One line naming `path`, what is wrong and the fix, when `e` is not damage; None otherwise."""
    kind = failure_kind(e, path)
    if kind == "full":
        free = free_bytes(path)
        left = f" ({free // 2**20} MB free)" if free is not None else ""
        return (f"{path}: the disk is full{left}; free some space, then try again "
                "(the registry is not damaged: do not restore it)")
    if kind == "read-only":
        return f"{path}: the file system is read-only; remount it read-write, or set YOLLAVA_HOME to a writable folder"
    if kind == "access":
        return f"{path}: permission denied; give your user read and write access to it (chown/chmod), or set YOLLAVA_HOME"
    if kind == "io":
        return (f"{path}: the disk reported an input/output error; check the disk (`dmesg`) and try again "
                "(this is not damage to the registry: do not restore it)")
    if kind == "locked":
        return (f"{path}: locked by another process for over {BUSY_TIMEOUT_S} s; "
                "let it finish (or stop it), then try again")
    return None


def require_free(path: Path, needed: int, doing: str) -> None:
    """Refuse to start `doing` when the disk of `path` lacks `needed` bytes."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise UserError(f"{path}: {doing} needs {needed // 2**20 + 1} MB free, the disk has {free // 2**20} MB; "
                        "free some space, then try again; nothing was changed")
