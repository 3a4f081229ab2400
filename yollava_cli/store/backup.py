"""The registry's own backup (registry.db.backup): every table but the embedding cache, which is
recomputed from the photos, copied after each command that changed the registry. A registry that
is emptied or damaged on disk is brought back from it by `doctor --restore`."""

import os
import sqlite3
from pathlib import Path

FILE = "registry.db.backup"
SKIPPED = {"embeddings"}  # a cache: large, and rebuilt by re-embedding the photos


def write_backup(root: Path) -> None:
    """Copy the registry's schema and rows into a new file, then rename it over the old backup: a
    crash mid-copy leaves the previous backup whole."""
    tmp = root / f".{FILE}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS src", [str(root / "registry.db")])
        conn.execute("BEGIN")  # one read snapshot of the registry for schema and rows alike
        schema = conn.execute(
            "SELECT type, name, sql FROM src.sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY type = 'index'"  # tables first
        ).fetchall()
        for _, _, sql in schema:
            conn.execute(sql)
        for kind, table, _ in schema:
            if kind == "table" and table not in SKIPPED:
                conn.execute(f'INSERT INTO main."{table}" SELECT * FROM src."{table}"')
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, root / FILE)


def backup_is_usable(root: Path) -> bool:
    path = root / FILE
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
