import sqlite3
from dataclasses import FrozenInstanceError, asdict, fields

import pytest
from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.store.migrations import MIGRATIONS
from yollava_cli.store.photos import jpeg_bytes
from yollava_cli.store.records import Checkpoint, Concept
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


def test_records_carry_every_column_of_their_table(tmp_path):
    """A migration that adds a column to a table must add it to its record too, or the rows
    crossing floors would silently lack it. A photo's record is its photos row, followed, where the
    registry hands it as a concept's photo or negative, by the row that ties it to the concept."""
    with Registry(tmp_path) as registry:
        columns = lambda table, *known: [c.name for c in registry.db[table].columns if c.name not in known]
        for record, table in ((Concept, "concepts"), (Checkpoint, "checkpoints")):
            assert [f.name for f in fields(record)] == columns(table)
        mo, sha = photographed(registry, "mo"), "ab" * 32
        registry.replace_negatives(mo.id, [(sha, "hard", 0.5, "/pool/a.jpg")], "color")
        for handed, ties in ((registry.stored_photo_rows()[0], None), (registry.photo(sha), None),
                             (registry.negative_photos(mo.id)[0], None),
                             (registry.concept_photos(mo.id)[0], "concept_photos"),
                             (registry.negative_rows(mo.id)[0], "negatives")):
            expected = columns("photos") + (columns(ties, "concept_id", "sha256") if ties else [])
            assert [f.name for f in fields(handed)] == expected, type(handed)
            with pytest.raises(FrozenInstanceError):
                handed.file = "elsewhere.jpg"
        concept = registry.create_concept("bo", "pet")
        registry.record_checkpoint(concept.id, tmp_path / "bo.safetensors", "tiny", "fp", 2, {"thresholds": {}}, {}, None)
        assert registry.concept("bo") == registry.concepts()[0] != concept  # trained since: a fresh record
        assert (registry.concept("bo").status, registry.current_checkpoint(concept.id).file) == ("trained", "bo.safetensors")
        assert registry.checkpoints() == [registry.current_checkpoint(concept.id)]
        with pytest.raises(FrozenInstanceError):
            concept.name = "mo"  # a record is read, never edited: a change goes through the registry


def test_photo_rows_come_as_records_in_the_registrys_order(tmp_path):
    """Each way the registry hands photos gives records holding what the rows hold, in the
    registry's order: a concept's photos by when they were added, its negatives by kind then most
    similar first, the other concepts' photos once each."""
    with Registry(tmp_path) as registry:
        bo = photographed(registry, "bo", photos=4)
        mo, zo = registry.create_concept("mo", "pet"), registry.create_concept("zo", "pet")
        ab, ac, ad, ae = ("ab" * 32, "ac" * 32, "ad" * 32, "ae" * 32)
        registry.add_concept_photo(mo.id, ac, "/photos/mo.jpg")
        stored = {p.sha256: p for p in registry.stored_photo_rows()}
        assert [(p.sha256, p.file, p.width, p.height, p.bytes) for p in stored.values()] == [
            (sha, f"photos/{sha[:2]}/{sha}.jpg", 8 + i, 6, (tmp_path / "photos" / sha[:2] / f"{sha}.jpg").stat().st_size)
            for i, sha in enumerate((ab, ac, ad, ae))]
        assert all(p.stored_sha256 and p.created_at for p in stored.values())
        assert registry.photo(ac) == stored[ac] and registry.photo("ff" * 32) is None
        assert [asdict(p) for p in registry.concept_photos(bo.id)] == [
            {**asdict(stored[sha]), "role": "train", "source_path": f"/photos/bo{i}.jpg", "added_at": f"2026-01-0{9 - i}"}
            for i, sha in ((3, ae), (2, ad), (1, ac), (0, ab))]
        assert registry.other_concepts_photos(zo.id) == [stored[ab], stored[ac], stored[ad], stored[ae]]
        registry.replace_negatives(mo.id, [(ab, "easy", 0.1, "/pool/b.jpg"), (ad, "hard", 0.4, "/pool/d.jpg"),
                                           (ae, "hard", 0.9, "/pool/e.jpg")], "color")
        assert [asdict(n) for n in registry.negative_rows(mo.id)] == [
            {**asdict(stored[sha]), "kind": kind, "score": score, "source_path": f"/pool/{sha[1]}.jpg", "embedder": "color"}
            for sha, kind, score in ((ab, "easy", 0.1), (ae, "hard", 0.9), (ad, "hard", 0.4))]
        assert sorted(registry.negative_photos(mo.id), key=lambda p: p.sha256) == [stored[ab], stored[ad], stored[ae]]


def test_facts_runs_and_hardest_negatives_come_as_records(tmp_path):
    """Facts numbered as `note` lists them, `show`'s hardest negatives, doctor's running runs and
    `eval --history`'s runs: records, read through the callers that hand them on."""
    from yollava_cli.evaluation.runs import history
    from yollava_cli.store.doctor import examine
    from yollava_cli.store.facts import list_facts, remove_fact

    with Registry(tmp_path) as registry:
        mo = photographed(registry, "mo", photos=3)
        registry.add_facts(mo.id, ["is 4 years old", "loves tennis balls"])
        assert [(f.number, f.text) for f in list_facts(registry, "mo")] == [(1, "is 4 years old"), (2, "loves tennis balls")]
        assert [(f.name, f.text) for f in registry.all_facts()] == [("mo", "is 4 years old"), ("mo", "loves tennis balls")]
        assert remove_fact(registry, "mo", 1).text == "is 4 years old"
        assert [(f.number, f.text) for f in list_facts(registry, "mo")] == [(1, "loves tennis balls")]
        registry.replace_negatives(mo.id, [("ab" * 32, "hard", 0.4, "/pool/b.jpg"), ("ac" * 32, "hard", 0.9, "/pool/c.jpg"),
                                           ("ad" * 32, "easy", 0.1, "/pool/d.jpg")], "color")
        assert [(n.source_path, n.score) for n in registry.hardest_negatives(mo.id, 5)] == [("/pool/c.jpg", 0.9), ("/pool/b.jpg", 0.4)]
        run = registry.start_run("train", mo.id, {})  # no process holds mo's training lock: left by one that died
        assert [(r.id, r.name) for r in registry.running_runs()] == [(run, "mo")]
        fixed = examine(registry, fix=True)["problems"]
        assert [(p["kind"], p["fixed"]) for p in fixed] == [("run", True)] and not registry.running_runs()
        results = {"model": "tiny", "dataset": "d", "wall_s": 1.0, "methods": {"fused": {"recognition": {"weighted": 0.9}}}}
        eval_run = registry.record_eval_run({}, results, "2026-12-07T00:00:00")
        assert [r.to_json() for r in history(registry)] == [{"id": eval_run, "finished_at": "2026-12-07T00:00:00", "model": "tiny",
                                                             "dataset": "d", "wall_s": 1.0, "weighted": {"fused": 0.9}}]


def photographed(registry: Registry, name: str, photos: int = 1):
    """A concept holding `photos` stored photos, real JPEGs named "ab"*32, "ac"*32, ..., photo i
    added on 2026-01-0(9 - i)."""
    concept = registry.create_concept(name, "pet")
    for i in range(photos):
        sha = f"a{'bcdef'[i]}" * 32
        registry.store_photo(sha, jpeg_bytes(Image.new("RGB", (8 + i, 6), (40 * i, 90, 200))), 8 + i, 6)
        registry.add_concept_photo(concept.id, sha, f"/photos/{name}{i}.jpg", f"2026-01-0{9 - i}")
    return concept


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


def test_m004_keeps_the_cuts_once_with_the_checkpoint(tmp_path):
    """A registry written before m004: the concept row held the tokens' cut and a copy of the
    metrics. Opening it moves the cut into the current checkpoint's metrics where those have none,
    keeps cuts the metrics have already, and drops the copies."""
    import json

    import sqlite_utils

    db = sqlite_utils.Database(tmp_path / "registry.db")
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for fn in MIGRATIONS[:3]:
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, 'then')", [fn.__name__])
    cuts = {"tokens": 0.4, "head": 0.6, "fused": 0.5}
    for concept_id, name, threshold, metrics in ((1, "old", 0.3, {"best_epoch": 2}), (2, "new", 0.4, {"thresholds": cuts}),
                                                 (3, "added", None, None)):
        db.execute("INSERT INTO concepts (id, name, kind, threshold, metrics, created_at, updated_at) "
                   "VALUES (?, ?, 'pet', ?, ?, 'then', 'then')", [concept_id, name, threshold, json.dumps(metrics)])
    for concept_id, current, metrics in ((1, 0, {"best_epoch": 1}), (1, 1, {"best_epoch": 2}), (2, 1, {"thresholds": cuts})):
        db.execute("INSERT INTO checkpoints (concept_id, file, base_model, base_fingerprint, k, metrics, is_current, created_at) "
                   "VALUES (?, 'f', 'm', 'fp', 2, ?, ?, 'then')", [concept_id, json.dumps(metrics), current])
    db.conn.commit()
    db.close()

    registry = Registry(tmp_path)
    assert "threshold" not in registry.db["concepts"].columns_dict and "metrics" not in registry.db["concepts"].columns_dict
    assert registry.thresholds(1) == {"tokens": 0.3}
    assert json.loads(registry.current_checkpoint(1).metrics) == {"best_epoch": 2, "thresholds": {"tokens": 0.3}}
    assert registry.thresholds(2) == cuts and registry.thresholds(3) == {}
    old = registry.db.execute("SELECT metrics FROM checkpoints WHERE concept_id = 1 AND is_current = 0").fetchone()[0]
    assert json.loads(old) == {"best_epoch": 1}  # a past checkpoint's record stays as it was


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


def test_a_registry_closes_and_backs_up_once_when_its_block_ends(tmp_path):
    """`with Registry(root) as registry:` refreshes the backup at the end of a block that wrote (not
    at process exit, not per write), leaves it alone after a block that only read, and closes."""
    backup = tmp_path / "registry.db.backup"
    with Registry(tmp_path) as registry:
        registry.create_concept("bo", "pet")
        registry.create_concept("mo", "pet")
        assert not backup.exists()
    assert backup.is_file()
    with pytest.raises(sqlite3.ProgrammingError):
        registry.concepts()  # closed
    written = backup.stat().st_mtime_ns
    with Registry(tmp_path) as registry:
        assert [c.name for c in registry.concepts()] == ["bo", "mo"]
    assert backup.stat().st_mtime_ns == written


def test_a_command_uses_one_registry_and_backs_it_up_once_before_it_returns(tmp_path, monkeypatch):
    """`mine` opens the registry in two places; both get the command's one registry,
    whose backup is refreshed once, as the command ends (not when the process exits)."""
    from conftest import invoke, shared_data

    import yollava_cli.store.connection as connection

    opened, backups = [], []
    real_init, real_backup = connection.Connection.__init__, connection.write_backup
    monkeypatch.setattr(connection.Connection, "__init__", lambda self, root: (opened.append(root), real_init(self, root))[1])
    monkeypatch.setattr(connection, "write_backup", lambda root: (backups.append(root), real_backup(root))[1])
    home = tmp_path / "home"
    photos = shared_data() / "concepts"
    assert invoke("add", "bo", photos / "dog" / "train", "--no-train", home=home).returncode == 0
    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted((shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))[:8]:
        (pool / photo.name).symlink_to(photo)
    assert invoke("pool", "add", "p", pool, "--embedder", "efficientnet-lite0", home=home).returncode == 0
    opened.clear(), backups.clear()
    mined = invoke("mine", "bo", "--embedder", "efficientnet-lite0", home=home)
    assert mined.returncode == 0, mined.stderr
    assert len(opened) == 1 and backups == [home]
