"""The registry: a SQLite database (registry.db) plus a content-addressed photo store.

Every change goes through `Registry.transaction()` (BEGIN IMMEDIATE, so concurrent writers
queue on the busy timeout instead of failing) and files are written atomically before the
rows that point at them, so a crash leaves at worst an unreferenced file, never a row that
points at nothing.
"""

import fcntl
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.store.backup import FILE as BACKUP_FILE
from yollava_cli.store.backup import backup_is_usable, write_backup
from yollava_cli.store.failures import BUSY_TIMEOUT_S, explain
from yollava_cli.store.migrations import MIGRATIONS
from yollava_cli.store.sqlite_utils_lean import sqlite_utils

def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DamagedRegistry(UserError):
    """registry.db is empty, missing or unreadable while the data dir holds what it described."""


def stored_content(root: Path) -> dict[str, int]:
    """What a data dir holds besides its registry: photos, checkpoints, a write-ahead log."""
    return {
        "photos": sum(1 for p in (root / "photos").rglob("*.jpg") if p.is_file()),
        "checkpoints": sum(1 for p in (root / "checkpoints").rglob("*.safetensors") if p.is_file()),
        "log": int((root / "registry.db-wal").is_file() and (root / "registry.db-wal").stat().st_size > 0),
    }


def refuse_damaged(root: Path) -> None:
    """A missing or empty registry is a new install only in an empty data dir: beside stored photos
    or checkpoints it is damage, and opening it as new would make every stored file an orphan."""
    db = root / "registry.db"
    if db.is_file() and db.stat().st_size > 0:
        return
    content = stored_content(root)
    if any(content.values()):
        state = "is empty (0 bytes)" if db.is_file() else "is missing"
        raise DamagedRegistry(damaged_message(root, state, content))


def damaged_message(root: Path, state: str, content: dict | None = None) -> str:
    content = content or stored_content(root)
    held = f"{content['photos']} stored photos and {content['checkpoints']} checkpoints"
    way_back = (f"`yollava doctor --restore` brings back {BACKUP_FILE} "
                f"(saved {datetime.fromtimestamp((root / BACKUP_FILE).stat().st_mtime).isoformat(timespec='minutes')})"
                if backup_is_usable(root) else
                f"no backup ({BACKUP_FILE}) is there to restore: restore registry.db from your own backup")
    return f"{root / 'registry.db'} {state} but the data dir holds {held}: the registry is damaged; nothing was changed; {way_back}"


class Connection:
    """The registry's database under `root`, opened (created and migrated if needed), with its
    transactions and locks; `Registry` adds the tables. `with Registry(root) as registry:` closes it
    at the end, refreshing the backup once if anything was written."""

    def __init__(self, root: Path):
        self.root = root
        self.changed = False  # set by a committed write; the backup is refreshed at exit
        try:
            root.mkdir(parents=True, exist_ok=True)
            # Switching a new database to WAL fails at once, without waiting on the busy
            # timeout, while another process is doing the same; so opening is serialised.
            with open(root / "registry.open-lock", "a") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)
                refuse_damaged(root)
                conn = sqlite3.connect(
                    root / "registry.db", timeout=BUSY_TIMEOUT_S, isolation_level=None
                )
                conn.row_factory = sqlite3.Row
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                except sqlite3.DatabaseError as e:
                    conn.close()
                    if explain(e, root / "registry.db"):
                        raise  # a full disk, a lock, a permission: said below, not damage
                    raise DamagedRegistry(damaged_message(root, f"is not a readable SQLite database ({e})")) from None
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
                conn.execute("PRAGMA foreign_keys=ON")
                self.db = sqlite_utils.Database(conn, execute_plugins=False)
                self._migrate()
                self.changed = False  # a schema change alone is backed up with the next write
        except (OSError, sqlite3.OperationalError) as e:
            raise UserError(
                explain(e, root / "registry.db") or f"{root}: cannot open the data dir ({e}); make it writable or set YOLLAVA_HOME"
            ) from None

    @property
    def path(self) -> Path:
        """The database file (an SQLite error carries no file name: errors name this one)."""
        return self.root / "registry.db"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.back_up_if_changed()  # what was committed is kept, even when the command then failed
        finally:
            self.close()

    def back_up_if_changed(self) -> None:
        """Refresh registry.db.backup when this process committed a change to the registry; a
        refresh that fails is said, since the backup now lacks this change."""
        if self.changed:
            self.changed = False
            try:
                write_backup(self.root)
            except Exception as e:  # an exit hook's exception would be swallowed by Python: say it instead
                reason = explain(e, self.root / BACKUP_FILE) or f"{self.root / BACKUP_FILE}: {e}"
                print(f"warning: the registry's backup was not refreshed, so it lacks this change: {reason}",
                      file=sys.stderr)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction; nested calls join the outer one."""
        conn = self.db.conn
        if conn.in_transaction:
            yield self.db
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.changed = True

    def _migrate(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        known = {fn.__name__ for fn in MIGRATIONS}
        with self.transaction() as db:  # holds the write lock: two processes never both migrate
            applied = {r["name"] for r in db.query("SELECT name FROM _migrations")}
            if applied - known:
                raise UserError(
                    f"{self.root / 'registry.db'} was written by a newer yollava "
                    f"(unknown migrations {sorted(applied - known)}); upgrade yollava"
                )
            for fn in MIGRATIONS:
                if fn.__name__ not in applied:
                    fn(db)
                    db.execute("INSERT INTO _migrations VALUES (?, ?)", [fn.__name__, now()])

    @contextmanager
    def lock(self, name: str, doing: str) -> Iterator[None]:
        """An exclusive per-name lock for long work (training a concept). It is an flock, which the
        OS releases when its process dies, so a killed run never leaves a stale lock behind."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise UserError(f"another yollava process (pid {holder}) is {doing}; wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    @property
    def schema_version(self) -> int:
        return self.db.execute("SELECT count(*) FROM _migrations").fetchone()[0]

    def integrity_check(self) -> str:
        """SQLite's check of the database file: 'ok', or what is damaged."""
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]
