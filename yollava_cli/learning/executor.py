"""Where units of work run. A unit is a module-level function `fn(env, *inputs) -> output` of plain
inputs and outputs (paths, dicts, lists, bytes): eval's subject, a batch of photos to embed, a
concept to train. An executor runs units; `LocalExecutor` here, one after another in this process,
`scale.driver.RayExecutor` on Ray workers (`--ray`). The code of a unit is the same on both, so a
change to eval or training is made once.

`Env` is what a unit may use where it runs: the model and the embedder, loaded once per worker;
the folders the driver shared (`executor.share`); and a folder to work in. What a unit reports
(yollava_cli.reporting) reaches the command's reporter: directly here, sent back with the result
from a Ray worker. `Executor` says what an executor provides: another one (a thread pool, another
cluster) is one class with those members, passed wherever an executor is taken
(evaluation.runs.run_eval, use.train, scale.embedding, the CLI's options).
"""

import gc
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from yollava_cli import __version__
from yollava_cli.reporting import Status, report


@cache
def code_version() -> str:
    """The package version and a hash of its code and templates, computed once: a worker running
    other code is refused, and results other code produced (before a bug fix, say) are never
    served from a cache."""
    digest = hashlib.sha256()
    package = Path(__file__).parents[1]  # the whole package, every floor
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.json")]):
        digest.update(f"{path.relative_to(package)}\0".encode() + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


@runtime_checkable
class Executor(Protocol):
    """Where units run. `local`: on this machine's disk (a unit may work in the driver's folders).
    `run` calls `on_result(unit, fn(env, *unit))` in the driver for each unit, in any order;
    `ordered` yields `fn(env, *args)` for each of `calls` in order. `model` and `embedder` say what
    the units run (loading it where needed), `share` makes the driver's folder readable to units,
    `report` says where the work ran (None: here). A `with` block stops what it started."""

    local: bool

    def __enter__(self) -> "Executor": ...
    def __exit__(self, *exc) -> None: ...
    def model(self, units: int | None = None) -> dict: ...
    def embedder(self, name: str | None = None) -> Any: ...
    def share(self, root: Path, files: list[Path]) -> Any: ...
    def run(self, fn: Callable, units: list[tuple], on_result: Callable[[tuple, Any], None]) -> None: ...
    def ordered(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]: ...
    def report(self) -> dict | None: ...


class Env:
    """The machine a unit runs on: what it loaded, and where it may write."""

    def __init__(self, model: str | None = None, quantize: str | None = None, embedder: str | None = None,
                 vlm=None, loaded_embedder=None):
        self.model_ref, self.quantize, self.embedder_name = model, quantize, embedder
        self._vlm, self._embedder = vlm, loaded_embedder
        self.reloadable = vlm is None  # a model handed in is used as it is
        self.bare_vocabulary: int | None = None

    @property
    def vlm(self):
        if self._vlm is None:
            from yollava_cli.models.loading import load_vlm

            self._vlm = load_vlm(self.model_ref, quantize=self.quantize)
            self.bare_vocabulary = len(self._vlm.tokens.tokenizer)
        return self._vlm

    def bare_vlm(self):
        """The model as loaded, no concept ever added. Unloading a concept leaves its tokens in the
        tokenizer, which shifts a later concept's ids and so the sums of its passes: a unit whose
        result must equal a run of its own (training one concept, evaluating one subject) gets the
        model loaded afresh."""
        if self._vlm is not None and self.reloadable and len(self._vlm.tokens.tokenizer) != self.bare_vocabulary:
            self._vlm = None
            gc.collect()  # the used model's memory is free before the fresh one loads
        return self.vlm

    @property
    def embedder(self):
        if self._embedder is None:
            from yollava_cli.learning.embeddings import load_embedder

            self._embedder = load_embedder(self.embedder_name)
            if self._embedder.note:
                report(Status(self._embedder.note))
        return self._embedder

    def folder(self, shared: Any) -> Path:
        """The folder the driver shared (here: its own path)."""
        return Path(shared)

    @contextmanager
    def workspace(self, folder: Path | None):
        """A folder for the unit's registry: `folder` where the driver's disk is this machine's (so
        a later run reuses what it holds), else a scratch folder removed after the unit."""
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            yield folder
            return
        scratch = Path(tempfile.mkdtemp(prefix="yollava-unit-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def unload_concepts(self) -> None:
        """Each unit starts from the bare base model, whichever units ran before it."""
        if self._vlm is not None:
            for name in list(self._vlm.tokens):
                self._vlm.tokens.remove(name)


def call(env: Env, fn: Callable, args: tuple) -> Any:
    """One unit, leaving the model as it found it."""
    try:
        return fn(env, *args)
    finally:
        env.unload_concepts()


class LocalExecutor:
    """Units run here, in order, on one model and embedder (loaded on first use, or given)."""

    local = True

    def __init__(self, model: str | None = None, quantize: str | None = None, embedder: str | None = None,
                 vlm=None, loaded_embedder=None):
        self.env = Env(model, quantize, embedder, vlm, loaded_embedder)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def model(self, units: int | None = None) -> dict:
        """{"model": ref, "fingerprint": ...} of the base model the units run."""
        return {"model": self.env.vlm.ref, "fingerprint": self.env.vlm.fingerprint}

    def embedder(self, name: str | None = None):
        """The embedder units run (`name`, where it is not loaded yet)."""
        if name is not None and self.env._embedder is None:
            self.env.embedder_name = name
        return self.env.embedder

    def share(self, root: Path, files: list[Path]) -> Path:
        return root

    def run(self, fn: Callable, units: list[tuple], on_result: Callable[[tuple, Any], None]) -> None:
        """`on_result(unit, fn(env, *unit))` for each unit, in order."""
        for unit in units:
            on_result(unit, call(self.env, fn, unit))

    def ordered(self, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
        for args in calls:
            yield call(self.env, fn, args)

    def report(self) -> dict | None:
        """What --json says about where the work ran: nothing, for this machine."""
        return None
