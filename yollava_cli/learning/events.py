"""What long work reports while it runs (see yollava_cli.reporting): one small frozen dataclass
per event, so a consumer dispatches with `match event: case Step(...)` and a misspelt event is an
error, not a kind string that nothing ever matches."""

from dataclasses import dataclass

from yollava_cli.reporting import Counted

# -- photos (embedding, pools, find, explain) ---------------------------------------------


class EmbeddingPhotos(Counted):
    """Image embeddings of photos not cached yet (find's head, a concept head's negatives)."""


class ScanningPool(Counted):
    """Reading a pool folder's files before embedding them."""


class EmbeddingPool(Counted):
    """Embedding a pool folder's photos (cached across runs): `pool add`, eval's --pool."""


class EmbeddingToMine(Counted):
    """Embedding the concept's photos and its candidate negatives before mining."""


class ScoringPhotos(Counted):
    """The language model asked "is <name> in this photo?" about each photo (find)."""


class ExplainingTokens(Counted):
    """The model describing each latent token in a few words (explain)."""


# -- training (Trainer.run) ---------------------------------------------------------------


class WritingConversations(Counted):
    """The base model answering the attribute questions about each photo (cached after once)."""


@dataclass(frozen=True)
class EpochStarted:
    epoch: int  # from 0
    steps: int


@dataclass(frozen=True)
class Step:
    epoch: int  # from 0
    step: int  # from 1: steps done
    steps: int
    loss: float


@dataclass(frozen=True)
class Validating:
    epoch: int  # from 0
    steps: int


@dataclass(frozen=True)
class EpochDone:
    """The epoch's entry in the run's history."""

    epoch: int  # from 1, as in the history
    loss: float
    train_accuracy: float
    validation: dict
    seconds: float = 0.0  # the epoch's wall time, steps and validation
    decision_loss: float | None = None  # the recognition answers' yes/no term, where the objective has one


@dataclass(frozen=True)
class FittingHead:
    """Fitting the concept head and its fusion with the tokens, after the last epoch."""


# -- eval (run_eval); each subject's training events pass through as they are -------------


@dataclass(frozen=True)
class SubjectStarted:
    subject: str
    index: int  # from 0
    total: int
    fold: int  # from 0
    folds: int


@dataclass(frozen=True)
class Scoring:
    subject: str
    method: str


class SubjectsEvaluated(Counted):
    """Units of an eval run finished (subjects in folds, then each fold's forgetting check)."""


# -- train (use.train) ---------------------------------------------------------------------


class ConceptsTrained(Counted):
    """Concepts trained, each a unit on the executor, and recorded here."""
