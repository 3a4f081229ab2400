import sqlite3

import pytest

from yollava_cli.errors import UserError
from yollava_cli.store.migrations import MIGRATIONS
from yollava_cli.store.registry import Registry

TABLES = {"concepts", "photos", "concept_photos", "pools", "pool_files", "embeddings", "negatives", "checkpoints", "runs"}


def test_migrates_an_empty_data_dir(tmp_path):
    registry = Registry(tmp_path / "new")
    tables = set(registry.db.table_names())
    assert TABLES <= tables
    assert registry.schema_version == len(MIGRATIONS)
    assert registry.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert registry.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    registry.close()


def test_reopening_applies_nothing_twice(tmp_path):
    Registry(tmp_path).close()
    registry = Registry(tmp_path)
    names = [r["name"] for r in registry.db.query("SELECT name FROM _migrations")]
    assert names == [fn.__name__ for fn in MIGRATIONS]


def test_refuses_a_registry_from_a_newer_version(tmp_path):
    Registry(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "registry.db")
    conn.execute("INSERT INTO _migrations VALUES ('m999_future', 'now')")
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="newer yollava"):
        Registry(tmp_path)


def test_transaction_rolls_back_everything_on_error(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(RuntimeError):
        with registry.transaction() as db:
            db.execute("INSERT INTO concepts (name, kind, created_at, updated_at) VALUES ('a', 'pet', 'x', 'x')")
            raise RuntimeError("boom")
    assert registry.concepts() == []


def test_deleting_a_concept_cascades_to_its_rows(tmp_path):
    registry = Registry(tmp_path)
    with registry.transaction() as db:
        db.execute("INSERT INTO concepts (name, kind, created_at, updated_at) VALUES ('a', 'pet', 'x', 'x')")
        registry.store_photo("ab" * 32, b"jpeg", 1, 1)
        db.execute("INSERT INTO concept_photos VALUES (1, ?, 'train', '/src', 'x')", ["ab" * 32])
        db.execute("DELETE FROM concepts WHERE id = 1")
    assert registry.db.execute("SELECT count(*) FROM concept_photos").fetchone()[0] == 0
