"""A concept's rows: the concept, its photos, negatives, checkpoints and facts."""

import json
from pathlib import Path

from yollava_cli.store.connection import now
from yollava_cli.store.records import (Checkpoint, Concept, ConceptFact, ConceptPhoto, Fact, MinedNegative, NegativePhoto,
                                       StoredPhoto)
from yollava_cli.store.states import ConceptStatus


class ConceptRows:
    """Concepts and what belongs to each: its photos, negatives, checkpoints and facts."""

    # -- concepts -----------------------------------------------------------------------

    def concept(self, name: str) -> Concept | None:
        row = next(self.db["concepts"].rows_where("name = ?", [name]), None)
        return Concept.from_row(row) if row else None

    def concepts(self) -> list[Concept]:
        return [Concept.from_row(row) for row in self.db["concepts"].rows_where(order_by="name")]

    def concept_summaries(self) -> list[dict]:
        """Every concept with its photo count, by name (what `list` shows)."""
        return [dict(r) for r in self.db.query(
            "SELECT c.name, c.kind, c.status, c.base_model, count(cp.sha256) AS photos, c.updated_at "
            "FROM concepts c LEFT JOIN concept_photos cp ON cp.concept_id = c.id "
            "GROUP BY c.id ORDER BY c.name"
        )]

    def create_concept(self, name: str, kind: str) -> Concept:
        stamp = now()
        with self.transaction() as db:
            db["concepts"].insert({"name": name, "kind": kind, "created_at": stamp, "updated_at": stamp})
            return self.concept(name)

    def set_concept_status(self, concept_id: int, status: ConceptStatus) -> None:
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
            db["concepts"].delete_where("id = ?", [concept_id])
        return shas

    def add_concept_photo(self, concept_id: int, sha256: str, source_path: str, added_at: str | None = None) -> bool:
        """Add a stored photo to the concept's training photos (added now, unless a copy keeps the
        original's time, and with it the photos' order); False when it has it already."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO concept_photos (concept_id, sha256, role, source_path, added_at) "
                "VALUES (?, ?, 'train', ?, ?)",
                [concept_id, sha256, source_path, added_at or now()],
            )
        return cursor.rowcount == 1

    def concept_photo_count(self, concept_id: int) -> int:
        return self.db["concept_photos"].count_where("concept_id = ?", [concept_id])

    def other_concepts_photos(self, concept_id: int) -> list[StoredPhoto]:
        """Every photo of the other concepts: a pool to mine when none is registered."""
        return [StoredPhoto.from_row(r) for r in self.db.query(
            "SELECT DISTINCT p.* FROM concept_photos cp JOIN photos p USING (sha256) WHERE cp.concept_id != ?",
            [concept_id],
        )]

    def other_concepts_photo_shas(self, concept_id: int) -> list[str]:
        """The other concepts' photos in hash order: more negatives for the concept's head."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT sha256 FROM concept_photos WHERE concept_id != ?", [concept_id])]

    def other_concepts_photo_sources(self, concept_id: int) -> list[tuple[str, str, str]]:
        """(sha256, concept name, source path) of the other concepts' photos: `find --explain` names them."""
        return [tuple(r) for r in self.db.execute(
            "SELECT cp.sha256, c.name, cp.source_path FROM concept_photos cp JOIN concepts c ON c.id = cp.concept_id "
            "WHERE cp.concept_id != ?", [concept_id])]

    def negative_sources(self, concept_id: int) -> list[tuple[str, str, str]]:
        """(sha256, hard|easy, where it was mined from) of the concept's negatives."""
        return [tuple(r) for r in self.db.execute(
            "SELECT sha256, kind, source_path FROM negatives WHERE concept_id = ?", [concept_id])]

    def concept_photos(self, concept_id: int) -> list[ConceptPhoto]:
        """The concept's photos in the order they were added."""
        return [ConceptPhoto.from_row(r) for r in self.db.query(
            "SELECT p.*, cp.role, cp.source_path, cp.added_at FROM concept_photos cp JOIN photos p USING (sha256) "
            "WHERE cp.concept_id = ? ORDER BY cp.added_at, cp.source_path",
            [concept_id],
        )]

    # -- negatives ----------------------------------------------------------------------

    def negatives(self, concept_id: int) -> list[tuple[str, str]]:
        """(sha256, easy|hard), by kind, then most similar first."""
        return [(r["sha256"], r["kind"]) for r in self.db.query(
            "SELECT sha256, kind FROM negatives WHERE concept_id = ? ORDER BY kind, score DESC", [concept_id]
        )]

    def negative_files(self, concept_id: int) -> list[str]:
        """The stored files of the concept's negatives (relative to the data dir)."""
        return [photo.file for photo in self.negative_photos(concept_id)]

    def negative_photos(self, concept_id: int) -> list[StoredPhoto]:
        """The stored photos of the concept's negatives."""
        return [StoredPhoto.from_row(r) for r in self.db.query(
            "SELECT p.* FROM negatives n JOIN photos p USING (sha256) WHERE n.concept_id = ?", [concept_id])]

    def negative_rows(self, concept_id: int) -> list[NegativePhoto]:
        """Every negative with its photo, by kind, then most similar first (what a copy of the
        concept needs)."""
        return [NegativePhoto.from_row(r) for r in self.db.query(
            "SELECT p.*, n.kind, n.score, n.source_path, n.embedder FROM negatives n "
            "JOIN photos p USING (sha256) WHERE n.concept_id = ? ORDER BY n.kind, n.score DESC", [concept_id])]

    def negatives_embedder(self, concept_id: int) -> str | None:
        """The embedder the concept's negatives were mined with; None before mining."""
        row = self.db.execute("SELECT embedder FROM negatives WHERE concept_id = ? LIMIT 1", [concept_id]).fetchone()
        return row[0] if row else None

    def replace_negatives(self, concept_id: int, negatives: list[tuple], embedder: str) -> list[str]:
        """Make (sha256, kind, score, source_path) of stored photos the concept's negatives, mined with
        `embedder`. Returns the photos the old ones used, for `delete_unused_photos`."""
        with self.transaction() as db:
            old = [r[0] for r in db.execute("SELECT sha256 FROM negatives WHERE concept_id = ?", [concept_id])]
            db["negatives"].delete_where("concept_id = ?", [concept_id])
            db["negatives"].insert_all(({"concept_id": concept_id, "sha256": sha, "kind": kind, "score": score,
                                         "source_path": source, "embedder": embedder}
                                        for sha, kind, score, source in negatives), ignore=True)
        return old

    def negative_counts(self, concept_id: int) -> dict[str, int]:
        """{hard|easy: how many}; a kind the concept has none of is absent."""
        return dict(self.db.execute(
            "SELECT kind, count(*) FROM negatives WHERE concept_id = ? GROUP BY kind", [concept_id]
        ).fetchall())

    def hardest_negatives(self, concept_id: int, limit: int) -> list[MinedNegative]:
        """The hard negatives most similar to the concept, most similar first."""
        return [MinedNegative.from_row(row) for row in self.db.query(
            "SELECT source_path, score FROM negatives WHERE concept_id = ? AND kind = 'hard' ORDER BY score DESC LIMIT ?",
            [concept_id, limit],
        )]

    # -- checkpoints --------------------------------------------------------------------

    def current_checkpoint(self, concept_id: int) -> Checkpoint | None:
        row = next(self.db["checkpoints"].rows_where("concept_id = ? AND is_current = 1", [concept_id]), None)
        return Checkpoint.from_row(row) if row else None

    def record_checkpoint(self, concept_id: int, file: Path, base_model: str, base_fingerprint: str, k: int,
                          metrics, config, data_hash: str | None) -> None:
        """Make `file` (under the data dir) the concept's current checkpoint, with what training
        measured on it (its metrics, the calibrated cuts among them), and mark the concept trained
        on it: how training and importing a bundle end."""
        stamp = now()
        with self.transaction() as db:
            db.execute("UPDATE checkpoints SET is_current = 0 WHERE concept_id = ?", [concept_id])
            db["checkpoints"].insert({"concept_id": concept_id, "file": str(file.relative_to(self.root)),
                                      "base_model": base_model, "base_fingerprint": base_fingerprint, "k": k,
                                      "metrics": json.dumps(metrics), "config": json.dumps(config),
                                      "data_hash": data_hash, "is_current": 1, "created_at": stamp})
            db["concepts"].update(concept_id, {"status": ConceptStatus.TRAINED, "base_model": base_model,
                                               "base_fingerprint": base_fingerprint, "updated_at": stamp})

    def thresholds(self, concept_id: int) -> dict[str, float]:
        """The cuts calibrated with the current checkpoint (tokens, head, fused; the head's two only
        when it has a concept head), or {} when the concept is not trained."""
        checkpoint = self.current_checkpoint(concept_id)
        metrics = json.loads(checkpoint.metrics or "null") if checkpoint else None
        return dict((metrics or {}).get("thresholds") or {})

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, current or not."""
        return [Checkpoint.from_row(row) for row in self.db["checkpoints"].rows_where()]

    def forget_checkpoint(self, checkpoint_id: int, concept_id: int) -> None:
        """Drop the row of a checkpoint whose file is lost; a concept left with no current
        checkpoint must be trained again."""
        with self.transaction() as db:
            db["checkpoints"].delete_where("id = ?", [checkpoint_id])
            db.execute(
                "UPDATE concepts SET status = ?, updated_at = ? WHERE id = ? AND NOT EXISTS "
                "(SELECT 1 FROM checkpoints WHERE concept_id = ? AND is_current = 1)",
                [ConceptStatus.ADDED, now(), concept_id, concept_id],
            )

    def checkpoint_files(self, concept_id: int) -> list[str]:
        """Every checkpoint file of the concept, current or not (relative to the data dir)."""
        return [r["file"] for r in self.db["checkpoints"].rows_where("concept_id = ?", [concept_id], select="file")]

    # -- facts --------------------------------------------------------------------------

    def facts(self, concept_id: int) -> list[Fact]:
        """The concept's facts in the order they were noted (`note` numbers them from 1)."""
        rows = self.db["facts"].rows_where("concept_id = ?", [concept_id], select="text, created_at", order_by="id")
        return [Fact(i, r["text"], r["created_at"]) for i, r in enumerate(rows, 1)]

    def all_facts(self) -> list[ConceptFact]:
        """Every concept's facts, in the order they were noted."""
        return [ConceptFact.from_row(row) for row in
                self.db.query("SELECT f.text, c.name FROM facts f JOIN concepts c ON c.id = f.concept_id ORDER BY f.id")]

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
