"""Portable concept bundles: one zip with the token rows (safetensors) and a JSON manifest,
optionally the training photos. Import trusts nothing in the file: members are read by fixed
names only (never used as paths), sizes are capped, checksums, shapes, dtypes and finiteness are
verified, and no pickle is ever loaded. The manifest, the limits and export are in bundle_format
(no torch); this module checks the tensors and imports."""

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import embedder_width
from yollava_cli.learning.recognition import HEAD_TENSORS
from yollava_cli.models.loading import load_vlm
from yollava_cli.models.tensor_file import META_KEY, CheckpointMeta, RecognizerMeta, write_tensors
from yollava_cli.schema import OpenSchema, parse_json, validate
from yollava_cli.store.photos import BadPhoto, decode, jpeg_bytes
from yollava_cli.store.registry import Registry
from yollava_cli.use.bundle_format import TENSORS, new_concept_name, read_bundle
from yollava_cli.use.snapshot import sha256


class BundledHead(OpenSchema):
    """What import reads of the bundled checkpoint's own metadata: the concept head's settings."""

    recognizer: RecognizerMeta


def check_bundle(path: Path) -> tuple[dict, bytes, dict[str, bytes], dict[str, torch.Tensor]]:
    """Everything import needs, verified; a one-line error naming the problem otherwise."""
    manifest, tensors_bytes, photos = read_bundle(path)
    try:
        tensors = load_safetensors(tensors_bytes)
    except SafetensorError as e:
        raise UserError(f"{path}: malformed bundle ({e})") from None
    check_rows(tensors, manifest["k"], path)
    manifest["recognizer"] = check_recognizer(tensors, tensors_bytes, path)
    return manifest, tensors_bytes, photos, tensors


def check_rows(tensors: dict[str, torch.Tensor], k: int, path: Path) -> None:
    """The concept's token rows: the two tensors (with or without a head's), float32, (k+1, H) and (H,), finite."""
    rows, head = tensors.get("input_rows"), tensors.get("output_row")
    if rows is None or head is None or set(tensors) - {"input_rows", "output_row"} not in (set(), set(HEAD_TENSORS)):
        raise UserError(f"{path}: the tensors are not a concept's token rows (and concept head)")
    if rows.dtype != torch.float32 or head.dtype != torch.float32:
        raise UserError(f"{path}: token rows must be float32, got {rows.dtype} / {head.dtype}")
    if rows.ndim != 2 or rows.shape[0] != k + 1 or head.shape != (rows.shape[1],):
        raise UserError(f"{path}: token rows have shapes {tuple(rows.shape)} / {tuple(head.shape)}, expected ({k + 1}, H) / (H,)")
    if not (torch.isfinite(rows).all() and torch.isfinite(head).all()):
        raise UserError(f"{path}: token rows hold NaN or infinite values")


def check_recognizer(tensors: dict[str, torch.Tensor], tensors_bytes: bytes, path: Path) -> dict | None:
    """The concept head's tensors (float32, finite, one embedding width) and its settings
    (RecognizerMeta), or None when the bundle has no head."""
    if "head.weights" not in tensors:
        return None
    positives, negatives, weights = (tensors[k] for k in HEAD_TENSORS)
    if any(t.dtype != torch.float32 or not torch.isfinite(t).all() for t in (positives, negatives, weights)):
        raise UserError(f"{path}: the concept head's tensors must be finite float32 values")
    if positives.ndim != 2 or negatives.ndim != 2 or positives.shape[1] != negatives.shape[1] or weights.shape != (3,) \
            or not len(positives):
        raise UserError(f"{path}: the concept head's tensors have the wrong shapes")
    where = f"{path}: {TENSORS} metadata"
    meta = parse_json(safe_metadata(tensors_bytes).get(META_KEY, "{}").encode(), Any, where)
    info = validate(meta, BundledHead, where).recognizer
    try:
        width = embedder_width(info.embedder)
    except UserError as e:
        raise UserError(f"{path}: the concept head's {e}") from None
    if width is not None and positives.shape[1] != width:
        raise UserError(f"{path}: the concept head holds {positives.shape[1]}-wide embeddings, but {info.embedder} "
                        f"gives {width}-wide ones: the bundle is damaged or was altered")
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
        if stored and (registry.root / stored.file).read_bytes() == data:  # exported from here: the same photo
            decoded.append((stored.sha256, data, (stored.width, stored.height)))
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


def import_on_its_model(registry: Registry, path: Path, new_name: str | None = None, model: str | None = None,
                        quantize: str | None = None, check_model: bool = True) -> dict:
    """import_concept, after loading the user's base model (`model`, else the configured one) to
    compare its fingerprint with the bundle's; a bad bundle fails before the model loads. The
    bundle's `base_model` is only a name to show: a file someone sent never picks what is loaded."""
    fingerprint = None
    if check_model:
        manifest, _, _, tensors = check_bundle(path)
        new_concept_name(registry, new_name or manifest["name"])  # a taken name fails before the model loads
        vlm = load_vlm(model, quantize=quantize)
        fingerprint, width = vlm.fingerprint, vlm.tokens.embedding.base.weight.shape[1]
        if fingerprint == manifest["base_fingerprint"] and tensors["input_rows"].shape[1] != width:
            raise UserError(f"{path}: its token rows are {tensors['input_rows'].shape[1]} wide, but {vlm.ref} reads "
                            f"{width}-wide ones: the bundle is damaged or was altered")
    return import_concept(registry, path, new_name, fingerprint)


def record_import(registry: Registry, name: str, manifest: dict, decoded: list, files: tuple[Path, Path], path: Path) -> None:
    """The concept's rows, and the staged checkpoint renamed to its place (files: staged, final)
    under the write lock, once no earlier import can have taken the name."""
    staged, checkpoint = files
    with registry.transaction():
        if registry.concept(name):
            raise UserError(f"concept {name!r} exists already (imported meanwhile by another process); "
                            f"import with --as NEWNAME")
        concept_id = registry.create_concept(name, manifest.get("kind") or "object").id
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
