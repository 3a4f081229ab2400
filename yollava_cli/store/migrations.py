"""Registry schema as small named migrations, each applied once, in order.

Add a new function at the end to change the schema; never edit one that has shipped.
The schema version is the number of migrations applied.
"""

from collections.abc import Callable

from yollava_cli.store.sqlite_utils_lean import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    statements = [
        """CREATE TABLE concepts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'added',   -- added | mined | trained
            base_model TEXT,
            base_fingerprint TEXT,
            threshold REAL,                          -- calibrated yes-probability cut
            metrics TEXT,                            -- JSON
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        # Content-addressed store: one row per distinct photo file (sha256 of the source bytes).
        """CREATE TABLE photos (
            sha256 TEXT PRIMARY KEY,
            file TEXT NOT NULL,                      -- path relative to the data dir
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE concept_photos (
            concept_id INTEGER NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL REFERENCES photos(sha256),
            role TEXT NOT NULL DEFAULT 'train',      -- train | validation
            source_path TEXT NOT NULL,
            added_at TEXT NOT NULL,
            PRIMARY KEY (concept_id, sha256))""",
        """CREATE TABLE pools (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE pool_files (
            pool_id INTEGER NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
            path TEXT NOT NULL,                      -- relative to the pool's folder
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            PRIMARY KEY (pool_id, path))""",
        """CREATE TABLE embeddings (
            sha256 TEXT NOT NULL,
            embedder TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,                    -- float32, little endian
            PRIMARY KEY (sha256, embedder))""",
        """CREATE TABLE negatives (
            concept_id INTEGER NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL REFERENCES photos(sha256),
            kind TEXT NOT NULL,                      -- hard | easy
            score REAL,
            source_path TEXT NOT NULL,
            embedder TEXT,
            PRIMARY KEY (concept_id, sha256))""",
        """CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            concept_id INTEGER NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
            file TEXT NOT NULL,                      -- safetensors, relative to the data dir
            base_model TEXT NOT NULL,
            base_fingerprint TEXT NOT NULL,
            k INTEGER NOT NULL,
            metrics TEXT,                            -- JSON
            config TEXT,                             -- JSON
            data_hash TEXT,
            is_current INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,                      -- mine | train | eval
            concept_id INTEGER REFERENCES concepts(id) ON DELETE SET NULL,
            status TEXT NOT NULL,                    -- running | done | failed | interrupted
            params TEXT,                             -- JSON
            results TEXT,                            -- JSON
            started_at TEXT NOT NULL,
            finished_at TEXT)""",
        "CREATE INDEX concept_photos_by_sha ON concept_photos(sha256)",
        "CREATE INDEX negatives_by_sha ON negatives(sha256)",
        "CREATE INDEX checkpoints_by_concept ON checkpoints(concept_id)",
    ]
    for sql in statements:
        db.execute(sql)


@migration
def m002_answers(db: sqlite_utils.Database) -> None:
    # The base model's answers about a photo (attribute conversations, captions), keyed by
    # photo, base-model fingerprint and prompt: generated once, reused by every retrain.
    db.execute(
        """CREATE TABLE answers (
            sha256 TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt TEXT NOT NULL,
            answer TEXT NOT NULL,
            PRIMARY KEY (sha256, model, prompt))"""
    )


@migration
def m003_facts(db: sqlite_utils.Database) -> None:
    # What the owner knows and photos cannot show ("is scared of the vacuum cleaner"), in the
    # owner's own words, numbered by insertion order.
    db.execute(
        """CREATE TABLE facts (
            id INTEGER PRIMARY KEY,
            concept_id INTEGER NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX facts_by_concept ON facts(concept_id)")


@migration
def m004_thresholds_with_checkpoint(db: sqlite_utils.Database) -> None:
    # A concept's metrics and calibrated cuts belong to the checkpoint they were measured on, and
    # are kept once, in its row: the concept row's copies go, the tokens' cut moving into the
    # current checkpoint's metrics where those lack cuts.
    db.execute(
        """UPDATE checkpoints SET metrics = json_set(coalesce(nullif(metrics, 'null'), '{}'), '$.thresholds',
               json_object('tokens', (SELECT threshold FROM concepts WHERE concepts.id = checkpoints.concept_id)))
           WHERE is_current = 1 AND json_type(coalesce(nullif(metrics, 'null'), '{}'), '$.thresholds') IS NULL
             AND (SELECT threshold FROM concepts WHERE concepts.id = checkpoints.concept_id) IS NOT NULL"""
    )
    db.execute("ALTER TABLE concepts DROP COLUMN threshold")
    db.execute("ALTER TABLE concepts DROP COLUMN metrics")


@migration
def m005_stored_photo_hashes(db: sqlite_utils.Database) -> None:
    # The SHA-256 of each stored file as the store wrote it (a photo is named by its source's hash,
    # and its stored file is a re-encoding): `doctor --deep` compares it to find a damaged copy.
    # NULL for photos stored before: those are checked by size, and by decoding them.
    db.execute("ALTER TABLE photos ADD COLUMN stored_sha256 TEXT")
