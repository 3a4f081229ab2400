"""A concept as one zip, the format bundles have: manifest.json (what the concept is, and a checksum
per member) and members under fixed names. A bundle (`export`, `import`; bundle_format) is a
snapshot with the trained checkpoint in it. `train --ray` sends a worker a snapshot with what
training reads instead: the photos with their registry rows, the negatives, the cached answers and
vectors, and the other concepts' photos; the worker restores it into a scratch registry, so the
concept trains there as it would here. One writer and one reader for both, so they cannot drift."""

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from yollava_cli.errors import UserError
from yollava_cli.schema import OpenSchema, parse_json, validate
from yollava_cli.store.facts import MAX_FACTS
from yollava_cli.store.records import Concept
from yollava_cli.store.registry import Registry
from yollava_cli.store.schemas import ConceptName, Fact, Kind, Sha256
from yollava_cli.store.states import ConceptStatus, NegativeKind
from yollava_cli.use.bundle_zip import read_member

FORMAT = "yollava-concept-bundle/1"
MANIFEST = "manifest.json"
ANSWER = ("sha256", "model", "prompt", "answer")  # a cached answer's row (Registry.answers)


class PhotoRow(OpenSchema):
    """One of the concept's photos as the registry holds it (member photos/SHA.jpg)."""

    sha256: Sha256
    width: int
    height: int
    source: str
    added_at: str


class NegativeRow(OpenSchema):
    """One of its negatives (member negatives/SHA.jpg)."""

    sha256: Sha256
    kind: Literal[tuple(k.value for k in NegativeKind)]
    score: float | None
    source: str
    width: int
    height: int


class OtherPhoto(OpenSchema):
    """A photo of another concept, which the concept head learns as a negative (member others/SHA.jpg)."""

    sha256: Sha256
    width: int
    height: int


class Vector(OpenSchema):
    sha256: Sha256
    bytes: int


class Vectors(OpenSchema):
    """An embedder's cached vectors of those photos (member embeddings/N.f32: the vectors one after another)."""

    embedder: str
    photos: list[Vector]


class Answer(OpenSchema):
    """A cached answer of the base model about one of the photos."""

    sha256: Sha256
    model: str
    prompt: str
    answer: str


class TrainingParts(OpenSchema):
    """What training reads beyond the concept itself, so a copy trains as the registry would."""

    photos: list[PhotoRow]
    negatives: list[NegativeRow]
    negatives_embedder: str | None
    others: list[OtherPhoto]
    answers: list[Answer]
    embeddings: list[Vectors]


class Snapshot(OpenSchema):
    """manifest.json of any snapshot; keys a newer yollava adds are kept, not refused."""

    format: Literal[FORMAT]
    name: ConceptName
    kind: Kind = "object"
    facts: Annotated[list[Fact], Field(max_length=MAX_FACTS)] = []
    checksums: dict[str, Sha256]
    training: TrainingParts | None = None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def concept_parts(registry: Registry, concept: Concept, with_photos: bool) -> tuple[dict, dict[str, bytes]]:
    """The manifest's keys every snapshot has, and the concept's stored photos as members (in its order)."""
    photos = {}
    if with_photos:
        for photo in registry.concept_photos(concept.id):
            photos[f"photos/{photo.sha256}.jpg"] = (registry.root / photo.file).read_bytes()
    manifest = {"format": FORMAT, "name": concept.name, "kind": concept.kind,
                "facts": [f.text for f in registry.facts(concept.id)]}
    return manifest, photos


def pack(manifest: dict, members: dict[str, bytes]) -> bytes:
    """The zip: the manifest with every member's checksum, then the members."""
    manifest = {**manifest, "checksums": {name: sha256(data) for name, data in members.items()}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as snapshot:
        snapshot.writestr(MANIFEST, json.dumps(manifest, indent=2))
        for name, data in members.items():
            snapshot.writestr(name, data)
    return buffer.getvalue()


def check_manifest(data: bytes, path: Path, schema: type[Snapshot] = Snapshot) -> dict:
    """The manifest, checked against `schema`: first that it is one (its format), then every key."""
    where = f"{path}: {MANIFEST}"
    manifest = parse_json(data, Any, where)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} bundle")
    return validate(manifest, schema, where).model_dump()


def read_listed(snapshot: zipfile.ZipFile, names: list[str], manifest: dict, path: Path) -> dict[str, bytes]:
    """The members, each listed in the manifest and matching its checksum."""
    checksums = manifest["checksums"]
    if unlisted := next((n for n in names if n not in checksums), None):
        raise UserError(f"{path}: checksum mismatch for {unlisted} (the manifest lists none): the bundle was altered")
    return {n: read_member(snapshot, n, path, checksums[n]) for n in names}


# -- what a Ray worker trains from ------------------------------------------------------------


def training_snapshot(registry: Registry, name: str) -> bytes:
    """The concept as training reads it: its stored photos' bytes under their hashes, in the
    registry's order, and everything else TrainingParts names."""
    concept = registry.concept(name)
    manifest, members = concept_parts(registry, concept, with_photos=True)
    photos = [{"sha256": p.sha256, "width": p.width, "height": p.height, "source": p.source_path, "added_at": p.added_at}
              for p in registry.concept_photos(concept.id)]
    negatives, others = [], []
    for n in registry.negative_rows(concept.id):
        negatives.append({"sha256": n.sha256, "kind": n.kind, "score": n.score, "source": n.source_path,
                          "width": n.width, "height": n.height})
        members[f"negatives/{n.sha256}.jpg"] = (registry.root / n.file).read_bytes()
    for o in registry.other_concepts_photos(concept.id):
        others.append({"sha256": o.sha256, "width": o.width, "height": o.height})
        members[f"others/{o.sha256}.jpg"] = (registry.root / o.file).read_bytes()
    shas = [p["sha256"] for p in photos]
    every = list(dict.fromkeys(shas + [n["sha256"] for n in negatives] + [o["sha256"] for o in others]))
    embeddings = []  # the cached vectors (mining's), so the head learns from the vectors it would here
    for index, embedder in enumerate(registry.embedders()):
        vectors = registry.embeddings(embedder, every)
        embeddings.append({"embedder": embedder, "photos": [{"sha256": sha, "bytes": len(blob)} for sha, blob in vectors.items()]})
        members[f"embeddings/{index}.f32"] = b"".join(vectors.values())
    manifest["training"] = {"photos": photos, "negatives": negatives,
                            "negatives_embedder": registry.negatives_embedder(concept.id), "others": others,
                            "answers": [dict(zip(ANSWER, row)) for row in registry.answers(shas)], "embeddings": embeddings}
    return pack(manifest, members)


def restore_for_training(registry: Registry, data: bytes) -> dict:
    """A training snapshot written into this (scratch) registry in one transaction: the concept,
    mined, with its photos, negatives, facts, cached answers and vectors, and the other concepts'
    photos under a stand-in concept. Returns the manifest."""
    where = Path("training snapshot")
    with zipfile.ZipFile(io.BytesIO(data)) as snapshot:
        manifest = check_manifest(read_member(snapshot, MANIFEST, where), where)
        training = manifest["training"]
        if training is None:
            raise UserError(f"{where}: <{manifest['name']}> holds nothing to train from")
        names = ([f"photos/{p['sha256']}.jpg" for p in training["photos"]]
                 + [f"negatives/{n['sha256']}.jpg" for n in training["negatives"]]
                 + [f"others/{o['sha256']}.jpg" for o in training["others"]]
                 + [f"embeddings/{i}.f32" for i in range(len(training["embeddings"]))])
        members = read_listed(snapshot, list(dict.fromkeys(names)), manifest, where)
    with registry.transaction():
        concept = registry.create_concept(manifest["name"], manifest["kind"])
        for p in training["photos"]:
            registry.store_photo(p["sha256"], members[f"photos/{p['sha256']}.jpg"], p["width"], p["height"])
            registry.add_concept_photo(concept.id, p["sha256"], p["source"], p["added_at"])
        if training["others"]:
            others = registry.create_concept(f"{manifest['name']}-others", "object")
            for o in training["others"]:
                registry.store_photo(o["sha256"], members[f"others/{o['sha256']}.jpg"], o["width"], o["height"])
                registry.add_concept_photo(others.id, o["sha256"], o["sha256"])
        for n in training["negatives"]:
            registry.store_photo(n["sha256"], members[f"negatives/{n['sha256']}.jpg"], n["width"], n["height"])
        registry.replace_negatives(concept.id, [(n["sha256"], n["kind"], n["score"], n["source"]) for n in training["negatives"]],
                                   training["negatives_embedder"])
        registry.add_facts(concept.id, manifest["facts"])
        for row in training["answers"]:
            registry.store_answer(*(row[key] for key in ANSWER))
        for index, vectors in enumerate(training["embeddings"]):
            blob, start, found = members[f"embeddings/{index}.f32"], 0, {}
            for vector in vectors["photos"]:
                found[vector["sha256"]] = blob[start : start + vector["bytes"]]
                start += vector["bytes"]
            registry.store_embeddings(vectors["embedder"], found)
        registry.set_concept_status(concept.id, ConceptStatus.MINED)
    return manifest
