"""Portable concept bundles: one zip with the token rows (safetensors) and a JSON manifest,
optionally the training photos. Import trusts nothing in the file: members are read by fixed
names only (never used as paths), sizes are capped, checksums, shapes, dtypes and finiteness are
verified, and no pickle is ever loaded."""

import hashlib
import io
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from yollava_cli.errors import UserError
from yollava_cli.learning.recognition import HEAD_TENSORS
from yollava_cli.learning.train_config import RANGES
from yollava_cli.models.loading import load_vlm
from yollava_cli.models.tensor_file import META_KEY, CheckpointMeta, Fingerprint, RecognizerMeta, write_tensors
from yollava_cli.schema import Fraction, OpenSchema, Text, parse_json, validate
from yollava_cli.store.concepts import check_collisions, current_checkpoint_file, get_concept, parse_name
from yollava_cli.store.facts import MAX_FACTS
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.photos import BadPhoto, decode, jpeg_bytes
from yollava_cli.store.registry import Registry, now
from yollava_cli.store.schemas import ConceptName, Fact, Kind, Sha256

FORMAT = "yollava-concept-bundle/1"
MAX_BUNDLE_BYTES = 256 * 2**20
MAX_MEMBER_BYTES = 64 * 2**20
MAX_PHOTOS = 200
TENSORS, MANIFEST = "concept.safetensors", "manifest.json"


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


class BundledHead(OpenSchema):
    """What import reads of the bundled checkpoint's own metadata: the concept head's settings."""

    recognizer: RecognizerMeta


class Manifest(OpenSchema):
    """manifest.json of a bundle; keys a newer yollava adds are kept, not refused."""

    format: Literal[FORMAT]
    name: ConceptName
    kind: Kind = "object"
    k: Annotated[int, Field(ge=RANGES["k"][0], le=RANGES["k"][1])]
    base_model: Text
    base_fingerprint: Fingerprint
    threshold: Fraction | None = None
    metrics: TrainMetrics | None = None
    config: TrainSettings | None = None
    data_hash: Text | None = None
    exported_at: Text | None = None
    facts: Annotated[list[Fact], Field(max_length=MAX_FACTS)] = []
    checksums: dict[str, Sha256]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_concept(registry: Registry, raw_name: str, path: Path, with_photos: bool = False, force: bool = False) -> dict:
    """Write the concept's bundle to `path`: a new file, or with `force` over an existing regular file."""
    concept = get_concept(registry, raw_name)
    check_export_target(path, force)
    row = registry.current_checkpoint(concept["id"])
    if row is None:
        raise UserError(f"<{concept['name']}> is not trained yet: nothing to export (run `yollava train {concept['name']}`)")
    tensors = current_checkpoint_file(registry, concept).read_bytes()
    photos = {}
    if with_photos:
        for photo in registry.concept_photos(concept["id"]):
            photos[f"photos/{photo['sha256']}.jpg"] = (registry.root / photo["file"]).read_bytes()
    manifest = {
        "format": FORMAT, "name": concept["name"], "kind": concept["kind"], "k": row["k"],
        "base_model": row["base_model"], "base_fingerprint": row["base_fingerprint"],
        "metrics": json.loads(row["metrics"] or "null"),
        "config": json.loads(row["config"] or "null"), "data_hash": row["data_hash"], "exported_at": now(),
        "facts": [f["text"] for f in registry.facts(concept["id"])],
        "checksums": {TENSORS: sha256(tensors), **{name: sha256(data) for name, data in photos.items()}},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(MANIFEST, json.dumps(manifest, indent=2))
        bundle.writestr(TENSORS, tensors)
        for name, data in photos.items():
            bundle.writestr(name, data)
    atomic_write_bytes(path, buffer.getvalue())
    return {"concept": concept["name"], "file": str(path), "bytes": len(buffer.getvalue()), "photos": len(photos)}


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


def read_member(bundle: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        info = bundle.getinfo(name)
    except KeyError:
        raise UserError(f"{path}: not a yollava bundle (no {name})") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise UserError(f"{path}: {name} is {info.file_size} bytes, over the {MAX_MEMBER_BYTES // 2**20} MB limit")
    return bundle.read(name)


def check_bundle(path: Path) -> tuple[dict, bytes, dict[str, bytes], dict[str, torch.Tensor]]:
    """Everything import needs, verified; a one-line error naming the problem otherwise."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise UserError(f"{path}: over the {MAX_BUNDLE_BYTES // 2**20} MB bundle limit")
    try:
        bundle = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a yollava bundle ({e})") from None
    with bundle:
        names = bundle.namelist()
        photo_names = [n for n in names if n.startswith("photos/")]
        unexpected = [n for n in names if n not in (MANIFEST, TENSORS) and n not in photo_names]
        if unexpected or len(photo_names) > MAX_PHOTOS:
            raise UserError(f"{path}: unexpected content in the bundle ({(unexpected or photo_names)[0]!r}); refusing it")
        manifest = check_manifest(read_member(bundle, MANIFEST, path), path)
        tensors_bytes = read_member(bundle, TENSORS, path)
        photos = {n: read_member(bundle, n, path) for n in photo_names}
    for name, data in {TENSORS: tensors_bytes, **photos}.items():
        if manifest["checksums"].get(name) != sha256(data):
            raise UserError(f"{path}: checksum mismatch for {name}: the bundle was altered or damaged")
    try:
        tensors = load_safetensors(tensors_bytes)
    except SafetensorError as e:
        raise UserError(f"{path}: malformed bundle ({e})") from None
    k = manifest["k"]
    rows, head = tensors.get("input_rows"), tensors.get("output_row")
    if rows is None or head is None or set(tensors) - {"input_rows", "output_row"} not in (set(), set(HEAD_TENSORS)):
        raise UserError(f"{path}: the tensors are not a concept's token rows (and concept head)")
    if rows.dtype != torch.float32 or head.dtype != torch.float32:
        raise UserError(f"{path}: token rows must be float32, got {rows.dtype} / {head.dtype}")
    if rows.ndim != 2 or rows.shape[0] != k + 1 or head.shape != (rows.shape[1],):
        raise UserError(f"{path}: token rows have shapes {tuple(rows.shape)} / {tuple(head.shape)}, expected ({k + 1}, H) / (H,)")
    if not (torch.isfinite(rows).all() and torch.isfinite(head).all()):
        raise UserError(f"{path}: token rows hold NaN or infinite values")
    manifest["recognizer"] = check_recognizer(tensors, tensors_bytes, path)
    return manifest, tensors_bytes, photos, tensors


def check_manifest(data: bytes, path: Path) -> dict:
    """The manifest, checked against `Manifest`: first that it is one (its format), then every key."""
    where = f"{path}: {MANIFEST}"
    manifest = parse_json(data, Any, where)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} bundle")
    return validate(manifest, Manifest, where).model_dump()


def check_recognizer(tensors: dict[str, torch.Tensor], tensors_bytes: bytes, path: Path) -> dict | None:
    """The concept head's tensors (float32, finite, one embedding width) and its settings
    (RecognizerMeta), or None when the bundle has no head."""
    if "head.weights" not in tensors:
        return None
    positives, negatives, weights = (tensors[k] for k in HEAD_TENSORS)
    if any(t.dtype != torch.float32 or not torch.isfinite(t).all() for t in (positives, negatives, weights)):
        raise UserError(f"{path}: the concept head's tensors must be finite float32 values")
    if positives.ndim != 2 or negatives.ndim != 2 or positives.shape[1] != negatives.shape[1] or weights.shape != (3,):
        raise UserError(f"{path}: the concept head's tensors have the wrong shapes")
    where = f"{path}: {TENSORS} metadata"
    meta = parse_json(safe_metadata(tensors_bytes).get(META_KEY, "{}").encode(), Any, where)
    info = validate(meta, BundledHead, where).recognizer
    return {"embedder": info.embedder, "fusion": info.fusion, "fusion_version": info.fusion_version}


def safe_metadata(data: bytes) -> dict:
    """The JSON header's __metadata__ of a safetensors blob (format: 8-byte length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def import_concept(registry: Registry, path: Path, new_name: str | None = None, base_fingerprint: str | None = None) -> dict:
    """Add the bundle's concept as trained (under `new_name` if given); `base_fingerprint`, when
    known, must match the bundle's."""
    manifest, tensors_bytes, photos, rows = check_bundle(path)
    name = new_concept_name(registry, new_name or manifest["name"])
    if base_fingerprint is not None and base_fingerprint != manifest["base_fingerprint"]:
        raise UserError(
            f"{path}: <{manifest['name']}> was trained on {manifest['base_model']!r} ({manifest['base_fingerprint']}), "
            f"not on this base model ({base_fingerprint}); use --model {manifest['base_model']}"
        )
    decoded = []
    for member, data in photos.items():
        stored = registry.photo(member.removeprefix("photos/").removesuffix(".jpg"))
        if stored and (registry.root / stored["file"]).read_bytes() == data:  # exported from here: the same photo
            decoded.append((stored["sha256"], data, (stored["width"], stored["height"])))
            continue
        try:
            image = decode(data, 1024)
        except BadPhoto as e:
            raise UserError(f"{path}: {member} is not a usable photo ({e})") from None
        decoded.append((sha256(data), jpeg_bytes(image), image.size))
    checkpoint = registry.root / "checkpoints" / name / f"imported-{sha256(tensors_bytes)[:12]}.safetensors"
    extra = {"imported_from": path.name} | ({"recognizer": manifest["recognizer"]} if manifest["recognizer"] else {})
    meta = CheckpointMeta(name, manifest["k"], manifest["base_model"], manifest["base_fingerprint"], extra)
    # Written under this writer's own name and published inside the transaction: another import of
    # the same bundle names the same checkpoint, and a rollback must never remove the winner's file.
    staged = checkpoint.with_name(f".{checkpoint.name}.{os.getpid()}.tmp")
    with registry.lock(f"train-{name}", f"writing <{name}>"):  # doctor leaves the file alone until it is recorded
        write_tensors(staged, rows, meta.to_json())
        try:
            record_import(registry, name, manifest, decoded, (staged, checkpoint), path)
        finally:
            staged.unlink(missing_ok=True)  # published by now, or never seen by the registry
    return {"concept": name, "base_model": manifest["base_model"], "k": manifest["k"], "photos": len(decoded)}


def new_concept_name(registry: Registry, raw_name: str) -> str:
    """The name the import would take, held to `add`'s rules: valid, free, and not a look-alike
    of another concept's (bo-cat beside bo_cat)."""
    name = parse_name(raw_name)
    if registry.concept(name):
        raise UserError(f"concept {name!r} exists already; import with --as NEWNAME or `yollava rm {name}` first")
    check_collisions(registry, name, None, replace=False)
    return name


def import_on_its_model(registry: Registry, path: Path, new_name: str | None = None, model: str | None = None,
                        quantize: str | None = None, check_model: bool = True, on_status=None) -> dict:
    """import_concept, after loading the base model the bundle names (or `model`) to compare its
    fingerprint; a bad bundle fails before the model loads."""
    fingerprint = None
    if check_model:
        manifest = check_bundle(path)[0]
        new_concept_name(registry, new_name or manifest["name"])  # a taken name fails before the model loads
        fingerprint = load_vlm(model or manifest["base_model"], on_status=on_status, quantize=quantize).fingerprint
    return import_concept(registry, path, new_name, fingerprint)


def record_import(registry: Registry, name: str, manifest: dict, decoded: list, files: tuple[Path, Path], path: Path) -> None:
    """The concept's rows, and the staged checkpoint renamed to its place (files: staged, final)
    under the write lock, once no earlier import can have taken the name."""
    staged, checkpoint = files
    with registry.transaction():
        if registry.concept(name):
            raise UserError(f"concept {name!r} exists already (imported meanwhile by another process); "
                            f"import with --as NEWNAME")
        concept_id = registry.create_concept(name, manifest.get("kind") or "object")["id"]
        for sha, jpeg, size in decoded:
            registry.store_photo(sha, jpeg, *size)
            registry.add_concept_photo(concept_id, sha, f"bundle:{path.name}")
        registry.add_facts(concept_id, [fact.strip() for fact in manifest.get("facts", [])])
        registry.record_checkpoint(concept_id, checkpoint, manifest["base_model"], manifest["base_fingerprint"], manifest["k"],
                                   imported_metrics(manifest), manifest.get("config"), manifest.get("data_hash"))
        os.replace(staged, checkpoint)


def imported_metrics(manifest: dict) -> dict | None:
    """The bundle's metrics, with the cuts in them; a bundle written before they moved there has
    the tokens' cut beside them as `threshold`."""
    metrics = manifest.get("metrics")
    if manifest.get("threshold") is not None and not (metrics or {}).get("thresholds"):
        metrics = {**(metrics or {}), "thresholds": {"tokens": manifest["threshold"]}}
    return metrics
