"""Typed records of the registry's rows, handed across floors instead of string-keyed dicts: a
misspelt field fails where it is read, and an editor can follow it. Dicts only at the JSON edge."""

from dataclasses import dataclass, fields


class Record:
    """A row's record: one field per column, named as the column is."""

    @classmethod
    def from_row(cls, row: dict):
        """The record of a row as sqlite-utils reads it (columns a later migration adds are ignored
        until the record names them)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Concept(Record):
    """One row of the concepts table."""

    id: int
    name: str
    kind: str
    status: str  # a ConceptStatus value: added | mined | trained
    base_model: str | None  # the base model of its current checkpoint; None before training
    base_fingerprint: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Checkpoint(Record):
    """One row of the checkpoints table: a trained concept file and what training measured on it."""

    id: int
    concept_id: int
    file: str  # safetensors, relative to the data dir
    base_model: str
    base_fingerprint: str
    k: int
    metrics: str | None  # JSON, the calibrated cuts among them
    config: str | None  # JSON, the TrainConfig it was trained with
    data_hash: str | None
    is_current: int
    created_at: str


@dataclass(frozen=True)
class StoredPhoto(Record):
    """One row of the photos table: a photo file in the content-addressed store."""

    sha256: str  # of the source file's bytes: the photo's name
    file: str  # the stored JPEG, relative to the data dir
    width: int
    height: int
    bytes: int  # the stored file's size, checked by photo_check
    created_at: str
    stored_sha256: str | None  # of the stored file; None for photos stored before m005


@dataclass(frozen=True)
class ConceptPhoto(StoredPhoto):
    """A stored photo as a concept holds it: its photos row and its concept_photos row."""

    role: str  # train | validation
    source_path: str  # the file it was added from
    added_at: str


@dataclass(frozen=True)
class NegativePhoto(StoredPhoto):
    """A stored photo as one of a concept's negatives: its photos row and its negatives row."""

    kind: str  # a NegativeKind value: hard | easy
    score: float | None  # its similarity to the concept's photos when it was mined
    source_path: str  # where it was mined from
    embedder: str | None  # the embedder that mined it


@dataclass(frozen=True)
class Fact:
    """One of a concept's facts, as `note` lists it."""

    number: int  # from 1, in the order they were noted: what `note --rm N` takes
    text: str
    created_at: str


@dataclass(frozen=True)
class ConceptFact(Record):
    """A fact with the name of the concept it is about (doctor checks every concept's)."""

    name: str
    text: str


@dataclass(frozen=True)
class MinedNegative(Record):
    """A hard negative as `show` lists it: where it was mined from, and how like the concept it was."""

    source_path: str
    score: float | None


@dataclass(frozen=True)
class RunningRun(Record):
    """A run marked running: its id and its concept's name (None for an eval run)."""

    id: int
    name: str | None


@dataclass(frozen=True)
class EvalRun(Record):
    """A finished eval run as `eval --history` reads it."""

    id: int
    results: str  # JSON: the eval's results file
    finished_at: str
