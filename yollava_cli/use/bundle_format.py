"""What a bundle is, readable without torch: its manifest, its limits, writing one (export), and
reading its members back within their limits and checksums. A bundle is a concept snapshot
(snapshot.py: the format, its writer and reader) with the trained checkpoint in it. Export and an
import's refusals (a taken name, a damaged file) need no model and no torch, so they cost what
`list` costs; bundles.py checks the tensors and imports."""

import json
import stat
from pathlib import Path
from typing import Annotated

from pydantic import Field

from yollava_cli.errors import UserError
from yollava_cli.learning.train_config import RANGES
from yollava_cli.schema import Fraction, OpenSchema, Text
from yollava_cli.store.concepts import check_collisions, current_checkpoint_file, get_concept, parse_name
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.registry import Registry, now
from yollava_cli.store.schemas import Fingerprint
from yollava_cli.use.bundle_zip import check_directory, open_zip, read_member
from yollava_cli.use.snapshot import MANIFEST, Snapshot, check_manifest, concept_parts, pack, read_listed

MAX_BUNDLE_BYTES = 256 * 2**20
MAX_PHOTOS = 200
TENSORS = "concept.safetensors"


class Validation(OpenSchema):
    weighted: Fraction
    positive: Fraction
    negative: Fraction


class TrainMetrics(OpenSchema):
    """What training measured (`show` prints it): the best epoch's validation, the thresholds."""

    best_epoch: Annotated[int, Field(ge=1)]
    validation: Validation
    epochs_run: Annotated[int, Field(ge=1)] | None = None
    thresholds: dict[str, Fraction] | None = None
    train_accuracy: Fraction | None = None


class TrainSettings(OpenSchema):
    """The settings it was trained with (learning.train_config.TrainConfig), within what training takes."""

    k: Annotated[int, Field(ge=RANGES["k"][0], le=RANGES["k"][1])]
    epochs: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    batch_size: Annotated[int, Field(ge=1)]
    seed: int


class Manifest(Snapshot):
    """manifest.json of a bundle: a snapshot's, and the checkpoint's."""

    k: Annotated[int, Field(ge=RANGES["k"][0], le=RANGES["k"][1])]
    base_model: Text
    base_fingerprint: Fingerprint
    threshold: Fraction | None = None
    metrics: TrainMetrics | None = None
    config: TrainSettings | None = None
    data_hash: Text | None = None
    exported_at: Text | None = None


def export_concept(registry: Registry, raw_name: str, path: Path, with_photos: bool = False, force: bool = False) -> dict:
    """Write the concept's bundle to `path`: a new file, or with `force` over an existing regular file."""
    concept = get_concept(registry, raw_name)
    check_export_target(path, force)
    checkpoint = registry.current_checkpoint(concept.id)
    if checkpoint is None:
        raise UserError(f"<{concept.name}> is not trained yet: nothing to export (run `yollava train {concept.name}`)")
    tensors = current_checkpoint_file(registry, concept).read_bytes()
    manifest, photos = concept_parts(registry, concept, with_photos)
    manifest.update({
        "k": checkpoint.k, "base_model": checkpoint.base_model, "base_fingerprint": checkpoint.base_fingerprint,
        "metrics": json.loads(checkpoint.metrics or "null"),
        "config": json.loads(checkpoint.config or "null"), "data_hash": checkpoint.data_hash, "exported_at": now(),
    })
    data = pack(manifest, {TENSORS: tensors, **photos})
    atomic_write_bytes(path, data)
    return {"concept": concept.name, "file": str(path), "bytes": len(data), "photos": len(photos)}


def check_export_target(path: Path, force: bool) -> None:
    """Refuse to write over anything unasked, and over anything but a regular file ever (a FIFO
    would block, a device or a folder is not a bundle, a symlink would be replaced, not followed)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"{path}: cannot check the export target ({e.strerror or e}); pick another file") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: exists and is not a regular file; export to a new file name")
    if not force:
        raise UserError(f"{path}: exists already; pick another file name, or pass --force to replace it")


def read_bundle(path: Path) -> tuple[dict, bytes, dict[str, bytes]]:
    """The manifest, the tensors' bytes and the photos, each within its limit and matching its
    checksum (bundle_zip); a one-line error naming the problem otherwise. The tensors themselves
    are checked by bundles.check_bundle."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise UserError(f"{path}: over the {MAX_BUNDLE_BYTES // 2**20} MB bundle limit")
    with open_zip(path) as bundle:
        names = bundle.namelist()
        photo_names = [n for n in names if n.startswith("photos/")]
        unexpected = [n for n in names if n not in (MANIFEST, TENSORS) and n not in photo_names]
        if unexpected or len(photo_names) > MAX_PHOTOS:
            raise UserError(f"{path}: unexpected content in the bundle ({(unexpected or photo_names)[0]!r}); refusing it")
        check_directory(bundle, path)
        manifest = check_manifest(read_member(bundle, MANIFEST, path), path, Manifest)
        members = read_listed(bundle, [TENSORS, *photo_names], manifest, path)
    return manifest, members.pop(TENSORS), members


def new_concept_name(registry: Registry, raw_name: str) -> str:
    """The name the import would take, held to `add`'s rules: valid, free, and not a look-alike
    of another concept's (bo-cat beside bo_cat)."""
    name = parse_name(raw_name)
    if registry.concept(name):
        raise UserError(f"concept {name!r} exists already; import with --as NEWNAME or `yollava rm {name}` first")
    check_collisions(registry, name, None, replace=False)
    return name
