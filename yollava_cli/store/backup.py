"""The registry's own backup (registry.db.backup): every table but the embedding cache, which is
recomputed from the photos, copied after each command that changed the registry. A registry that
is emptied or damaged on disk is brought back from it by `doctor --restore`."""

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

FILE = "registry.db.backup"
SKIPPED = {"embeddings"}  # a cache: large, and rebuilt by re-embedding the photos


def write_backup(root: Path) -> None:
    """Copy the registry's schema and rows into a new file, then rename it over the old backup: a
    crash mid-copy leaves the previous backup whole."""
    tmp = root / f".{FILE}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(uri(tmp), isolation_level=None, uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS src", [uri(root / "registry.db")])
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
        conn = sqlite3.connect(uri(path, "ro"), uri=True)
        try:
            return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def uri(path: Path, mode: str = "rwc") -> str:
    """An SQLite file URI for `path`, its bytes percent-encoded: a plain file name given to SQLite
    as text must be valid UTF-8, which a data dir's path need not be."""
    return f"file:{quote(os.fsencode(path))}?mode={mode}"


def backup_lacks(root: Path) -> dict[str, int | None] | None:
    """Per table, the rows of registry.db the backup does not hold (None: the table cannot be
    read; tables it lacks nothing of are left out, and the embedding cache, which is not backed
    up); None when either file cannot be read at all."""
    path = root / FILE
    if not path.is_file() or not (root / "registry.db").is_file():
        return None
    try:
        conn = sqlite3.connect(uri(path, "ro"), uri=True)
    except sqlite3.Error:
        return None
    try:
        conn.execute("ATTACH DATABASE ? AS registry", [uri(root / "registry.db", "ro")])
        backed_up = {r[0]: columns(conn, "main", r[0]) for r in conn.execute(TABLES.format(schema="main"))}
        lacks = {}
        for (table,) in conn.execute(TABLES.format(schema="registry")).fetchall():
            if table in SKIPPED:
                continue
            same = backed_up.get(table) == columns(conn, "registry", table)
            query = (f'SELECT count(*) FROM (SELECT * FROM registry."{table}" EXCEPT SELECT * FROM main."{table}")'
                     if same else f'SELECT count(*) FROM registry."{table}"')
            try:
                count = conn.execute(query).fetchone()[0]
            except sqlite3.DatabaseError:  # a damaged table: how much of it is newer is not known
                count = None
            if count != 0:
                lacks[table] = count
        return lacks
    except sqlite3.Error:
        return None
    finally:
        conn.close()


TABLES = "SELECT name FROM {schema}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"


def columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA {schema}.table_info("{table}")')]


def backup_state(root: Path) -> dict:
    """What `doctor` says of the backup: when it was saved, and what of the registry it lacks."""
    path = root / FILE
    if not backup_is_usable(root):
        return {"file": str(path), "usable": False}
    saved = path.stat().st_mtime
    lacks = backup_lacks(root)
    return {"file": str(path), "usable": True, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(saved)),
            "age_s": round(time.time() - saved), "lacks": lacks, "behind": bool(lacks)}


def describe_lacks(lacks: dict[str, int | None]) -> str:
    return ", ".join(f"{count} {table} row{'s' if count > 1 else ''}" if count is not None
                     else f"an unknown number of {table} rows (unreadable)" for table, count in lacks.items())
