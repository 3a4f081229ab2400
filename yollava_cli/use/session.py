"""What a question needs before the model answers: the concepts it names, trained where they must
be and loaded into the model, and its photos read; and training a concept on demand."""

from collections.abc import Callable
from pathlib import Path

from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.learning.embeddings import load_embedder
from yollava_cli.learning.training import TrainResult, prepare_concept
from yollava_cli.models.loading import load_vlm
from yollava_cli.models.vlm import VLM
from yollava_cli.store.concepts import current_checkpoint_file, get_concept, mentioned_concepts, require_trained
from yollava_cli.store.photos import BadPhoto, read_photo
from yollava_cli.store.records import Concept
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus

def load_checkpoint(registry: Registry, vlm: VLM, name: str, then: str = "") -> Concept:
    """Load a trained concept's current checkpoint into the model (once); returns the concept. An
    untrained one is refused, saying how to train it and `then` what."""
    concept = get_concept(registry, name)
    checkpoint = registry.current_checkpoint(concept.id)
    if concept.status != ConceptStatus.TRAINED or checkpoint is None:
        raise UserError(f"<{name}> is not trained yet: run `yollava train {name}`{then}")
    if name not in vlm.tokens:
        vlm.tokens.load(current_checkpoint_file(registry, concept), name)
    return concept


def load_concepts(registry: Registry, vlm: VLM, names: list[str], train_missing: Callable[[str], object] | None) -> list[Concept]:
    """Load each concept's current checkpoint into the model; untrained ones are trained first
    through `train_missing`, or refused when it is None."""
    loaded = []
    for name in names:
        if get_concept(registry, name).status != ConceptStatus.TRAINED:
            if train_missing is None:
                require_trained(registry, name)
            train_missing(name)
        loaded.append(load_checkpoint(registry, vlm, name))
    return loaded


def open_images(paths: list[Path]) -> tuple[list[Image.Image], list[str]]:
    images, keys = [], []
    for path in paths:
        try:
            photo = read_photo(path)
        except BadPhoto as e:
            raise UserError(f"{path}: {e}") from None
        images.append(photo.image)
        keys.append(photo.sha256)
    return images, keys


def open_session(registry: Registry, names: list[str], question: str, model: str | None = None, quantize: str | None = None,
                 train_missing: Callable[[str], object] | None = None) -> tuple[VLM, list[str]]:
    """The model, with the concepts named (and every <name> in the question) loaded; unknown names
    fail before the model loads."""
    wanted = mentioned_concepts(question, names)
    for name in wanted:
        get_concept(registry, name)
    vlm = load_vlm(model, quantize=quantize)
    load_concepts(registry, vlm, wanted, train_missing)
    return vlm, wanted


def needs_training(registry: Registry, name: str, new_photos: int) -> bool:
    """After an add: new photos change what the concept is; a concept never trained must be."""
    return bool(new_photos) or get_concept(registry, name).status != ConceptStatus.TRAINED


def train(registry: Registry, name: str, model: str | None = None, quantize: str | None = None) -> TrainResult:
    """Mine the concept's negatives if it has none, then train it (what `add` and `ask` need); the
    model and embedder load only once the photos are known to be there."""
    return prepare_concept(registry, name, lambda: load_vlm(model, quantize=quantize), load_embedder)
