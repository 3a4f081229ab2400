"""The ways an eval answers the benchmark, one module each: the trained soft tokens, the prompting
baselines, the image-embedding reference, the concept head, the fusion and the answer a user
reads. A module here that defines a `Method` subclass under `@register` adds a method: nothing
else names it. A run builds its own (`build_methods`), so what a method remembers is its own."""

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Protocol

from yollava_cli.errors import UserError
from yollava_cli.evaluation.records import MethodResult
from yollava_cli.store.records import Concept

METHODS: dict[str, type["Method"]] = {}


class Run(Protocol):
    """What a method may use of the run it is scored in (runner.Evaluation provides it); declared
    here so that methods need not import the runner that imports them."""

    registry: Any
    dataset: Any
    config: Any
    vlm: Any

    def yes_probabilities(self, method: "Method", subject: str, photos: list[Path]) -> list[float]: ...
    def subject_word(self, subject: str) -> str | None: ...
    def auto_description(self, subject: str) -> str: ...
    def similarities(self, subject: str, photos: list[Path]) -> list[float]: ...
    def embedding_threshold(self, subject: str, concept: Concept) -> float: ...
    def recognizer(self, subject: str) -> Any: ...
    def vectors(self, photos: list[Path]) -> Any: ...
    def photo(self, path: Path) -> tuple[Any, str]: ...
    def prompt(self, method: "Method", subject: str, question: str, photos: list[Path]) -> Any: ...


class Method:
    """One way to answer the benchmark: what the prompt carries, how a photo is scored for
    recognition, where its yes/no cut sits. The defaults are the bare model's: the question names
    the identifier, which carries nothing, and P(yes) is cut at one half."""

    name = ""
    order = 100  # where it stands among the methods (the default run's order, the report's columns)
    requires: tuple[str, ...] = ()  # methods whose instances (of the same run) __init__ receives
    language = True  # also asked the multiple-choice, caption and facts questions
    trained = False  # reads the concept's trained rows; the others see the identifier as a blank new word
    cut_at_half = True  # scores are probabilities, so 0.5 is a fair cut (cosine similarities are not)

    def concepts(self, subject: str) -> list[str]:
        return []

    def prefix(self, run: Run, subject: str) -> str:
        return ""

    def scores(self, run: Run, subject: str, photos: list[Path]) -> list[float]:
        return run.yes_probabilities(self, subject, photos)

    def threshold(self, run: Run, subject: str, concept: Concept) -> float:
        return 0.5

    def start_rows(self, run: Run, subject: str) -> dict:
        """How the identifier's rows start for this method when it does not read the trained ones."""
        return {}

    def extra(self, run: Run, subject: str, entry: MethodResult) -> MethodResult:
        """The subject's entry with figures of this method's own added, after its scores."""
        return entry


def register(method: type[Method]) -> type[Method]:
    """Class decorator: the method is known by its `name`."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"two eval methods are named {method.name!r}")
    METHODS[method.name] = method
    return method


def registered() -> dict[str, type[Method]]:
    """Every method, found by importing this package's modules once, in their order."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(METHODS.items(), key=lambda item: (item[1].order, item[0])))


def method_names() -> list[str]:
    return list(registered())


def build_methods(names: list[str]) -> list[Method]:
    """Fresh methods for one run, in the order asked; a method that builds on another (fused on the
    tokens' scores, ask on the fused verdict) receives the run's one instance of it."""
    known = registered()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    made: dict[str, Method] = {}

    def make(name: str) -> Method:
        if name not in made:
            made[name] = known[name](*(make(r) for r in known[name].requires))
        return made[name]

    return [make(n) for n in names]
