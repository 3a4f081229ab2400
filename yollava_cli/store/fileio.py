"""Atomic file writes: a reader never sees half a file, a crash never leaves one."""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING = "incoming"  # in the data dir: files written before the transaction that moves them into place


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600: bundles and reports are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def path_text(path: str | os.PathLike) -> str:
    """A path, or text that holds one, as valid UTF-8 for SQLite and the terminal. A Linux file
    name may hold any bytes; Python keeps those that are not UTF-8 as lone surrogates, which
    neither accepts, so they become \\xNN escapes here (b"\\xff.jpg" reads `\\xff.jpg`)."""
    text = os.fspath(path)
    if text.isascii():
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name gives (from JSON, say)
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def current_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: put it straight back
    os.umask(mask)
    return mask


@contextmanager
def staging_folder(root: Path) -> Iterator[Path]:
    """A private folder under root/incoming for files written before the transaction that moves
    them into the store, so a long intake holds neither the write lock nor the files in memory. It
    is flocked while in use (doctor leaves its files alone) and removed after, with whatever was
    not moved."""
    parent = root / STAGING
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=parent))
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)  # closing releases the flock; a killed process's is released by the OS


def staging_in_use(folder: Path) -> bool:
    """Whether a live process holds this staging folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def build_once(target: Path, build: Callable[[Path], None], on_wait: Callable[[], None] | None = None) -> Path:
    """The folder `target`, built once however many processes ask at the same time: the first
    builds it under a lock, into a temporary folder of its own renamed into place when complete;
    the others wait on the lock (`on_wait` says so), then use that result. A builder that was
    killed left only its temporary folder, which the next build removes."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # no live builder: this one holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            os.chmod(folder, 0o777 & ~current_umask())  # mkdtemp makes it private; a cache is not
            build(folder)
            os.rename(folder, target)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return target
