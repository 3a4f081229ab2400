"""Typed records of the registry's rows, handed across floors instead of string-keyed dicts: a
misspelt field fails where it is read, and an editor can follow it. Dicts only at the JSON edge."""

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Concept:
    """One row of the concepts table."""

    id: int
    name: str
    kind: str
    status: str  # a ConceptStatus value: added | mined | trained
    base_model: str | None  # the base model of its current checkpoint; None before training
    base_fingerprint: str | None
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: dict) -> "Concept":
        """The record of a row as sqlite-utils reads it (columns a later migration adds are ignored
        until the record names them)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Checkpoint:
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

    @classmethod
    def from_row(cls, row: dict) -> "Checkpoint":
        return cls(**{f.name: row[f.name] for f in fields(cls)})
