"""Whether a stored photo is still the file the store wrote. Always: its size and its JPEG
framing (a stat and 5 bytes read: fast enough for `doctor` over 100k photos, and it catches a
truncated, overwritten or zeroed copy); with `deep`, its SHA-256 too (the whole file read:
`doctor --deep`, and a re-add before it trusts the copy). bench/bench_photo_check.py measures both."""

import hashlib
import shlex
from pathlib import Path
from stat import S_ISREG

from PIL import Image

from yollava_cli.store.records import StoredPhoto

HASH_CHUNK = 1 << 20
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stored_damage(root: Path, photo: StoredPhoto, deep: bool = False) -> str | None:
    """None for a sound stored copy of `photo`, else what is wrong, in a few words."""
    path = root / photo.file
    try:
        stat = path.stat()
        if not S_ISREG(stat.st_mode):
            return "is not a regular file"
        if stat.st_size != photo.bytes:
            return f"is {stat.st_size} bytes where the store wrote {photo.bytes} (truncated or overwritten)"
        if not jpeg_framed(path, stat.st_size):
            return "is not a whole JPEG any more (its first or last bytes changed)"
        if not deep:
            return None
        if photo.stored_sha256:
            return None if file_sha256(path) == photo.stored_sha256 else "has changed since it was stored (its SHA-256 differs)"
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None if decodes(path) else "does not decode"  # stored before hashes were kept


def jpeg_framed(path: Path, size: int) -> bool:
    """Starts with a JPEG's start-of-image marker and ends with its end-of-image marker, as every
    file the store writes (store.photos.jpeg_bytes) does."""
    with open(path, "rb") as f:
        head = f.read(3)
        f.seek(max(size - 2, 0))
        return head == JPEG_START and f.read(2) == JPEG_END


def decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means the stored file is damaged
        return False


def photo_problems(registry, deep: bool) -> list[dict]:
    """doctor's problems with stored photos: one per missing or damaged copy, saying whose photo
    it is and the two ways forward."""
    found = []
    for photo in registry.stored_photo_rows():
        damage = stored_damage(registry.root, photo, deep)
        if damage:
            found.append({"kind": "photo", "detail": photo_detail(registry, photo, damage), "fixed": False,
                          "sha": photo.sha256, "deep": deep})
    return found


def photo_detail(registry, photo: StoredPhoto, damage: str) -> str:
    uses = registry.db.execute(
        "SELECT c.name, cp.source_path FROM concept_photos cp JOIN concepts c ON c.id = cp.concept_id "
        "WHERE cp.sha256 = ? ORDER BY c.name LIMIT 1", [photo.sha256]).fetchone()
    fix = f"re-add the original to restore it (`yollava add {uses[0]} {shlex.quote(uses[1])}`), or " if uses else ""
    return (f"stored photo {photo.sha256[:12]} ({photo.file}) {damage}; "
            f"{fix}`yollava doctor --fix` moves it to the trash and forgets it")


def still_damaged(registry, item: dict) -> bool:
    """Checked again under the write lock before a repair: a re-add may have restored it meanwhile."""
    photo = registry.photo(item["sha"])
    return photo is not None and stored_damage(registry.root, photo, item.get("deep", False)) is not None
