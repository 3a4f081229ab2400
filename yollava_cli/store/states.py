"""The values stored state takes, named once: a concept's status, a run's status, a negative's kind.
Each is a str enum, so a row read from SQLite compares equal to its member."""

from enum import StrEnum


class ConceptStatus(StrEnum):
    ADDED = "added"  # photos stored, not yet trained (new photos send a trained concept back here)
    MINED = "mined"  # negatives chosen
    TRAINED = "trained"  # a current checkpoint exists


class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class NegativeKind(StrEnum):
    HARD = "hard"  # a look-alike, by image-embedding similarity
    EASY = "easy"  # a random other photo

