"""Photos: rows and their files in the content-addressed store."""

import hashlib
import os
from pathlib import Path

from yollava_cli.store.connection import now
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.photo_check import file_sha256, stored_damage
from yollava_cli.store.records import StoredPhoto
from yollava_cli.store.states import ConceptStatus
from yollava_cli.store.trash import move_to_trash, trash_folder


class PhotoRows:
    """The content-addressed photo store and its `photos` rows."""

    # -- photos -------------------------------------------------------------------------

    def photo_file(self, sha256: str) -> Path:
        return self.root / "photos" / sha256[:2] / f"{sha256}.jpg"

    def photo(self, sha256: str) -> StoredPhoto | None:
        row = next(self.db["photos"].rows_where("sha256 = ?", [sha256]), None)
        return StoredPhoto.from_row(row) if row else None

    def store_photo(self, sha256: str, jpeg: bytes | Path, width: int, height: int) -> bool:
        """Write the photo file (if new, or if its stored copy went missing or was damaged: adding
        the photo again restores it, the damaged copy moved to the trash) and its row; returns True
        when the photo is new. `jpeg` is the file's bytes, or a file staged in the data dir
        (fileio.staging_folder), moved into place. The stored file's size and SHA-256 are kept
        for doctor (photo_check)."""
        size = jpeg.stat().st_size if isinstance(jpeg, Path) else len(jpeg)
        digest = file_sha256(jpeg) if isinstance(jpeg, Path) else hashlib.sha256(jpeg).hexdigest()
        stored = self.photo(sha256)
        if stored:
            if self.photo_needs_restoring(sha256):
                if (self.root / stored.file).is_file():
                    move_to_trash(self.root, self.root / stored.file, trash_folder(self.root))
                place(self.root / stored.file, jpeg)
                self.db["photos"].update(sha256, {"bytes": size, "stored_sha256": digest})
            return False
        path = self.photo_file(sha256)
        if not path.exists():
            place(path, jpeg)
        self.db["photos"].insert({"sha256": sha256, "file": str(path.relative_to(self.root)), "width": width,
                                  "height": height, "bytes": size, "stored_sha256": digest, "created_at": now()})
        return True

    def photo_needs_restoring(self, sha256: str) -> bool:
        """The photo has a row but its stored copy is gone or damaged (checked deep where its hash
        was kept: a re-add reads only the photos it adds)."""
        stored = self.photo(sha256)
        return stored is not None and stored_damage(self.root, stored, deep=bool(stored.stored_sha256)) is not None

    def stored_photos(self) -> dict[str, str]:
        """{sha256: file} of every stored photo, the file relative to the data dir."""
        return {r["sha256"]: r["file"] for r in self.db["photos"].rows_where(select="sha256, file")}

    def stored_photo_rows(self) -> list[StoredPhoto]:
        """Every stored photo: what doctor checks."""
        return [StoredPhoto.from_row(r) for r in self.db["photos"].rows_where()]

    def forget_photo(self, sha256: str) -> None:
        """Drop every row of a photo whose file is lost or damaged; the concepts that had it have
        fewer photos than they were trained on, so they must be trained again."""
        with self.transaction() as db:
            concepts = [r[0] for r in db.execute("SELECT concept_id FROM concept_photos WHERE sha256 = ?", [sha256])]
            for table in ("concept_photos", "negatives", "photos"):
                db[table].delete_where("sha256 = ?", [sha256])
            for concept_id in concepts:
                self.set_concept_status(concept_id, ConceptStatus.ADDED)

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
                self.db["photos"].delete_where("sha256 = ?", [sha])
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


def place(path: Path, jpeg: bytes | Path) -> None:
    """Write `path` atomically from bytes, or move a staged file (written and synced already) there."""
    if isinstance(jpeg, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(jpeg, path)
    else:
        atomic_write_bytes(path, jpeg)
