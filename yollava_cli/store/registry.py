"""The registry: a SQLite database (registry.db) plus a content-addressed photo store.

Every change goes through `Registry.transaction()` (BEGIN IMMEDIATE, so concurrent writers
queue on the busy timeout instead of failing) and files are written atomically before the
rows that point at them, so a crash leaves at worst an unreferenced file, never a row that
points at nothing.
"""

import atexit
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from yollava_cli.store.backup import FILE as BACKUP_FILE
from yollava_cli.store.backup import backup_is_usable, write_backup
from yollava_cli.errors import UserError
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.migrations import MIGRATIONS

BUSY_TIMEOUT_S = 60


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


class Registry:
    """Open (creating and migrating if needed) the registry under `root`."""

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
                    if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                        raise
                    conn.close()
                    raise DamagedRegistry(damaged_message(root, f"is not a readable SQLite database ({e})")) from None
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
                conn.execute("PRAGMA foreign_keys=ON")
                self.db = sqlite_utils.Database(conn, execute_plugins=False)
                self._migrate()
                self.changed = False  # a schema change alone is backed up with the next write
        except (OSError, sqlite3.OperationalError) as e:
            raise UserError(
                f"{root}: cannot open the data dir ({e}); make it writable or set YOLLAVA_HOME"
            ) from None
        atexit.register(self.back_up_if_changed)

    def back_up_if_changed(self) -> None:
        """Refresh registry.db.backup when this process committed a change to the registry."""
        if self.changed:
            self.changed = False
            try:
                write_backup(self.root)
            except (OSError, sqlite3.Error):
                pass  # the registry itself is intact; the previous backup stays

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

    # -- photos -------------------------------------------------------------------------

    def photo_file(self, sha256: str) -> Path:
        return self.root / "photos" / sha256[:2] / f"{sha256}.jpg"

    def photo(self, sha256: str) -> dict | None:
        row = self.db.execute("SELECT * FROM photos WHERE sha256 = ?", [sha256]).fetchone()
        return dict(row) if row else None

    def store_photo(self, sha256: str, jpeg: bytes, width: int, height: int) -> bool:
        """Write the photo file (if new) and its row; returns True when the photo is new."""
        if self.photo(sha256):
            return False
        path = self.photo_file(sha256)
        if not path.exists():
            atomic_write_bytes(path, jpeg)
        self.db.execute(
            "INSERT INTO photos (sha256, file, width, height, bytes, created_at) VALUES (?,?,?,?,?,?)",
            [sha256, str(path.relative_to(self.root)), width, height, len(jpeg), now()],
        )
        return True

    def stored_photos(self) -> dict[str, str]:
        """{sha256: file} of every stored photo, the file relative to the data dir."""
        return {r["sha256"]: r["file"] for r in self.db.query("SELECT sha256, file FROM photos")}

    def forget_photo(self, sha256: str) -> None:
        """Drop every row of a photo whose file is lost or damaged; the concepts that had it have
        fewer photos than they were trained on, so they must be trained again."""
        with self.transaction() as db:
            concepts = [r[0] for r in db.execute("SELECT concept_id FROM concept_photos WHERE sha256 = ?", [sha256])]
            db.execute("DELETE FROM concept_photos WHERE sha256 = ?", [sha256])
            db.execute("DELETE FROM negatives WHERE sha256 = ?", [sha256])
            db.execute("DELETE FROM photos WHERE sha256 = ?", [sha256])
            for concept_id in concepts:
                self.set_concept_status(concept_id, "added")

    def delete_unused_photos(self, candidates: list[str]) -> list[str]:
        """Drop rows and files of the given photos that nothing references any more."""
        removed = []
        for sha in candidates:
            used = self.db.execute(
                "SELECT 1 FROM concept_photos WHERE sha256 = ? UNION ALL "
                "SELECT 1 FROM negatives WHERE sha256 = ? LIMIT 1",
                [sha, sha],
            ).fetchone()
            if not used:
                self.db.execute("DELETE FROM photos WHERE sha256 = ?", [sha])
                removed.append(sha)
        return removed

    def unlink_photo_files(self, shas: list[str]) -> None:
        """Remove files after the transaction that dropped their rows has committed, each only if no
        row came back for it meanwhile (another `add` of the same photo reuses the file it finds)."""
        if not shas:
            return
        with self.transaction():
            for sha in shas:
                if self.photo(sha) is None:
                    self.photo_file(sha).unlink(missing_ok=True)

    # -- concepts -----------------------------------------------------------------------

    def concept(self, name: str) -> dict | None:
        row = self.db.execute("SELECT * FROM concepts WHERE name = ?", [name]).fetchone()
        return dict(row) if row else None

    def concepts(self) -> list[dict]:
        return [dict(r) for r in self.db.query("SELECT * FROM concepts ORDER BY name")]

    def concept_summaries(self) -> list[dict]:
        """Every concept with its photo count, by name (what `list` shows)."""
        return [dict(r) for r in self.db.query(
            "SELECT c.name, c.kind, c.status, c.base_model, count(cp.sha256) AS photos, c.updated_at "
            "FROM concepts c LEFT JOIN concept_photos cp ON cp.concept_id = c.id "
            "GROUP BY c.id ORDER BY c.name"
        )]

    def create_concept(self, name: str, kind: str) -> dict:
        with self.transaction() as db:
            db.execute("INSERT INTO concepts (name, kind, created_at, updated_at) VALUES (?, ?, ?, ?)", [name, kind, now(), now()])
            return self.concept(name)

    def set_concept_status(self, concept_id: int, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE concepts SET status = ?, updated_at = ? WHERE id = ?", [status, now(), concept_id])

    def delete_concept(self, concept_id: int) -> list[str]:
        """Delete the concept; its photo links, negatives, facts and checkpoint rows cascade. Returns
        the photos it used, for `delete_unused_photos`."""
        with self.transaction() as db:
            shas = [r[0] for r in db.execute(
                "SELECT sha256 FROM concept_photos WHERE concept_id = ? UNION "
                "SELECT sha256 FROM negatives WHERE concept_id = ?",
                [concept_id, concept_id],
            ).fetchall()]
            db.execute("DELETE FROM concepts WHERE id = ?", [concept_id])
        return shas

    def add_concept_photo(self, concept_id: int, sha256: str, source_path: str) -> bool:
        """Add a stored photo to the concept's training photos; False when it has it already."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO concept_photos (concept_id, sha256, role, source_path, added_at) "
                "VALUES (?, ?, 'train', ?, ?)",
                [concept_id, sha256, source_path, now()],
            )
        return cursor.rowcount == 1

    def concept_photo_count(self, concept_id: int) -> int:
        return self.db["concept_photos"].count_where("concept_id = ?", [concept_id])

    def other_concepts_photos(self, concept_id: int) -> list[dict]:
        """{sha256, file} of every photo of the other concepts: a pool to mine when none is registered."""
        return list(self.db.query(
            "SELECT DISTINCT p.sha256, p.file FROM concept_photos cp JOIN photos p USING (sha256) WHERE cp.concept_id != ?",
            [concept_id],
        ))

    def other_concepts_photo_shas(self, concept_id: int) -> list[str]:
        """The other concepts' photos in hash order: more negatives for the concept's head."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT sha256 FROM concept_photos WHERE concept_id != ?", [concept_id])]

    def concept_photos(self, concept_id: int) -> list[dict]:
        return list(
            self.db.query(
                "SELECT cp.sha256, cp.role, cp.source_path, cp.added_at, p.file, p.width, p.height "
                "FROM concept_photos cp JOIN photos p USING (sha256) "
                "WHERE cp.concept_id = ? ORDER BY cp.added_at, cp.source_path",
                [concept_id],
            )
        )

    # -- negatives ----------------------------------------------------------------------

    def negatives(self, concept_id: int) -> list[tuple[str, str]]:
        """(sha256, easy|hard), by kind, then most similar first."""
        return [(r["sha256"], r["kind"]) for r in self.db.query(
            "SELECT sha256, kind FROM negatives WHERE concept_id = ? ORDER BY kind, score DESC", [concept_id]
        )]

    def negative_files(self, concept_id: int) -> list[str]:
        """The stored files of the concept's negatives (relative to the data dir)."""
        return [r[0] for r in self.db.execute(
            "SELECT p.file FROM negatives n JOIN photos p USING (sha256) WHERE n.concept_id = ?", [concept_id])]

    def replace_negatives(self, concept_id: int, negatives: list[tuple], embedder: str) -> list[str]:
        """Make (sha256, kind, score, source_path) of stored photos the concept's negatives, mined with
        `embedder`. Returns the photos the old ones used, for `delete_unused_photos`."""
        with self.transaction() as db:
            old = [r[0] for r in db.execute("SELECT sha256 FROM negatives WHERE concept_id = ?", [concept_id])]
            db.execute("DELETE FROM negatives WHERE concept_id = ?", [concept_id])
            for sha, kind, score, source in negatives:
                db.execute(
                    "INSERT OR IGNORE INTO negatives (concept_id, sha256, kind, score, source_path, embedder) VALUES (?,?,?,?,?,?)",
                    [concept_id, sha, kind, score, source, embedder],
                )
        return old

    def negative_counts(self, concept_id: int) -> dict[str, int]:
        """{hard|easy: how many}; a kind the concept has none of is absent."""
        return dict(self.db.execute(
            "SELECT kind, count(*) FROM negatives WHERE concept_id = ? GROUP BY kind", [concept_id]
        ).fetchall())

    def hardest_negatives(self, concept_id: int, limit: int) -> list[dict]:
        """The hard negatives most similar to the concept: {source_path, score}, most similar first."""
        return list(self.db.query(
            "SELECT source_path, score FROM negatives WHERE concept_id = ? AND kind = 'hard' ORDER BY score DESC LIMIT ?",
            [concept_id, limit],
        ))

    # -- checkpoints --------------------------------------------------------------------

    def current_checkpoint(self, concept_id: int) -> dict | None:
        row = self.db.execute(
            "SELECT * FROM checkpoints WHERE concept_id = ? AND is_current = 1", [concept_id]
        ).fetchone()
        return dict(row) if row else None

    def record_checkpoint(self, concept_id: int, file: Path, base_model: str, base_fingerprint: str, k: int,
                          threshold: float | None, metrics, config, data_hash: str | None) -> None:
        """Make `file` (under the data dir) the concept's current checkpoint and mark the concept
        trained on it, with its threshold and metrics: how training and importing a bundle end."""
        stamp = now()
        with self.transaction() as db:
            db.execute("UPDATE checkpoints SET is_current = 0 WHERE concept_id = ?", [concept_id])
            db.execute(
                "INSERT INTO checkpoints (concept_id, file, base_model, base_fingerprint, k, metrics, config, data_hash, is_current, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                [concept_id, str(file.relative_to(self.root)), base_model, base_fingerprint, k, json.dumps(metrics),
                 json.dumps(config), data_hash, stamp],
            )
            db.execute(
                "UPDATE concepts SET status = 'trained', base_model = ?, base_fingerprint = ?, threshold = ?, metrics = ?, updated_at = ? WHERE id = ?",
                [base_model, base_fingerprint, threshold, json.dumps(metrics), stamp, concept_id],
            )

    def checkpoints(self) -> list[dict]:
        """{id, concept_id, file} of every checkpoint, the file relative to the data dir."""
        return list(self.db.query("SELECT id, concept_id, file FROM checkpoints"))

    def forget_checkpoint(self, checkpoint_id: int, concept_id: int) -> None:
        """Drop the row of a checkpoint whose file is lost; a concept left with no current
        checkpoint must be trained again."""
        with self.transaction() as db:
            db.execute("DELETE FROM checkpoints WHERE id = ?", [checkpoint_id])
            db.execute(
                "UPDATE concepts SET status = 'added', threshold = NULL, updated_at = ? WHERE id = ? AND NOT EXISTS "
                "(SELECT 1 FROM checkpoints WHERE concept_id = ? AND is_current = 1)",
                [now(), concept_id, concept_id],
            )

    def checkpoint_files(self, concept_id: int) -> list[str]:
        """Every checkpoint file of the concept, current or not (relative to the data dir)."""
        return [r["file"] for r in self.db.query("SELECT file FROM checkpoints WHERE concept_id = ?", [concept_id])]

    # -- pools --------------------------------------------------------------------------

    def pool(self, name: str) -> dict | None:
        row = self.db.execute("SELECT * FROM pools WHERE name = ?", [name]).fetchone()
        return dict(row) if row else None

    def pool_names(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM pools")]

    def pool_summaries(self) -> list[dict]:
        """Every pool with its photo count, by name (what `pool list` shows)."""
        return [dict(r) for r in self.db.query(
            "SELECT p.name, p.path, count(f.path) AS photos, p.created_at FROM pools p "
            "LEFT JOIN pool_files f ON f.pool_id = p.id GROUP BY p.id ORDER BY p.name"
        )]

    def create_pool(self, name: str, path: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO pools (name, path, created_at) VALUES (?, ?, ?)", [name, path, now()])

    def delete_pool(self, pool_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM pools WHERE id = ?", [pool_id])  # cascades to its files

    def pool_files(self, pool_id: int) -> list[dict]:
        return list(self.db.query("SELECT * FROM pool_files WHERE pool_id = ?", [pool_id]))

    def update_pool_files(self, pool_id: int, vanished: Iterable[str], changed: list[dict]) -> None:
        """Drop the files gone from the pool's folder; store ({path, sha256, size, mtime}) new or changed ones."""
        with self.transaction() as db:
            for path in vanished:
                db.execute("DELETE FROM pool_files WHERE pool_id = ? AND path = ?", [pool_id, path])
            db["pool_files"].insert_all(({**row, "pool_id": pool_id} for row in changed), replace=True)

    # -- facts --------------------------------------------------------------------------

    def facts(self, concept_id: int) -> list[dict]:
        """The concept's facts in the order they were noted (`note` numbers them from 1)."""
        rows = self.db.execute("SELECT id, text, created_at FROM facts WHERE concept_id = ? ORDER BY id", [concept_id])
        return [{"number": i, "text": r["text"], "created_at": r["created_at"]} for i, r in enumerate(rows, 1)]

    def all_facts(self) -> list[dict]:
        """Every concept's facts as {text, name}, in the order they were noted."""
        return list(self.db.query("SELECT f.text, c.name FROM facts f JOIN concepts c ON c.id = f.concept_id ORDER BY f.id"))

    def add_facts(self, concept_id: int, texts: list[str]) -> None:
        with self.transaction() as db:
            db["facts"].insert_all({"concept_id": concept_id, "text": text, "created_at": now()} for text in texts)

    def replace_facts(self, concept_id: int, texts: list[str]) -> None:
        with self.transaction() as db:
            db["facts"].delete_where("concept_id = ?", [concept_id])
            self.add_facts(concept_id, texts)

    def remove_fact(self, concept_id: int, number: int) -> None:
        """Delete fact `number` as `facts` numbers it."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM facts WHERE id = (SELECT id FROM facts WHERE concept_id = ? ORDER BY id LIMIT 1 OFFSET ?)",
                [concept_id, number - 1],
            )

    # -- answers ------------------------------------------------------------------------

    def cached_answer(self, sha256: str, model: str, prompt: str) -> str | None:
        row = self.db.execute(
            "SELECT answer FROM answers WHERE sha256 = ? AND model = ? AND prompt = ?", [sha256, model, prompt]
        ).fetchone()
        return row[0] if row else None

    def store_answer(self, sha256: str, model: str, prompt: str, answer: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)", [sha256, model, prompt, answer])

    def answer_count(self, concept_id: int, model: str, prompts: list[str]) -> int:
        """How many non-empty answers `model` has given to `prompts` about the concept's photos."""
        marks = ",".join("?" * len(prompts))
        return self.db.execute(
            f"SELECT count(*) FROM answers a JOIN concept_photos cp ON cp.sha256 = a.sha256 WHERE cp.concept_id = ? "
            f"AND a.model = ? AND a.answer != '' AND a.prompt IN ({marks})",
            [concept_id, model, *prompts],
        ).fetchone()[0]

    # -- embeddings ---------------------------------------------------------------------

    def embeddings(self, embedder: str, shas: list[str]) -> dict[str, bytes]:
        """The cached vectors (float32, little endian) of those photos that have one, read 500 at a
        time to stay under SQLite's limit on query parameters."""
        found = {}
        for start in range(0, len(shas), 500):
            chunk = shas[start : start + 500]
            rows = self.db.execute(
                f"SELECT sha256, vector FROM embeddings WHERE embedder = ? AND sha256 IN ({','.join('?' * len(chunk))})",
                [embedder, *chunk],
            )
            found.update({sha: blob for sha, blob in rows})
        return found

    def store_embeddings(self, embedder: str, vectors: dict[str, bytes]) -> None:
        """Cache {sha256: float32 little-endian vector}, replacing earlier ones."""
        with self.transaction() as db:
            db["embeddings"].insert_all(
                ({"sha256": sha, "embedder": embedder, "dim": len(blob) // 4, "vector": blob} for sha, blob in vectors.items()),
                replace=True,
            )

    # -- runs ---------------------------------------------------------------------------

    def start_run(self, kind: str, concept_id: int, params: dict) -> int:
        """Record a run as 'running'; `finish_run` ends it (doctor repairs one a killed process left)."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, concept_id, status, params, started_at) VALUES (?, ?, 'running', ?, ?)",
                [kind, concept_id, json.dumps(params), now()],
            )
        return cursor.lastrowid

    def finish_run(self, run_id: int, status: str, results: dict) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ?, results = ?, finished_at = ? WHERE id = ?",
                       [status, json.dumps(results), now(), run_id])

    def running_runs(self) -> list[dict]:
        """{id, name} of the runs marked running; name is the concept's, None for a run without one."""
        return list(self.db.query(
            "SELECT r.id, c.name FROM runs r LEFT JOIN concepts c ON c.id = r.concept_id WHERE r.status = 'running'"
        ))

    def interrupt_run(self, run_id: int) -> None:
        """Mark a run that its dead process left running as interrupted."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = 'interrupted', finished_at = ? WHERE id = ?", [now(), run_id])

    def record_eval_run(self, params: dict, results: dict, finished_at: str) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, status, params, results, started_at, finished_at) VALUES ('eval', 'done', ?, ?, ?, ?)",
                [json.dumps(params), json.dumps(results), finished_at, finished_at],
            )
        return cursor.lastrowid

    def eval_runs(self) -> list[dict]:
        """Every eval run's id, results (JSON) and finish time, oldest first."""
        return list(self.db.query("SELECT id, results, finished_at FROM runs WHERE kind = 'eval' ORDER BY id"))
