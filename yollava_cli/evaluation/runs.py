"""An eval run: each subject (in each fold) is one unit, trained and scored in a registry of its
own, then each fold's forgetting check with every subject's checkpoint loaded. The units are
functions of plain inputs (`evaluate_subject`, `forgetting`), so the same code runs here or on Ray
workers: the executor decides where.

The driver keeps a results file per fold (finished subjects are written as they complete, so an
interrupted run resumes) and, beside it, each subject's checkpoint for the forgetting check.
"""

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.evaluation.dataset import FILES, Dataset, Subject, load_dataset, rotate
from yollava_cli.evaluation.methods import build_methods, method_names
from yollava_cli.evaluation.metrics import PROTOCOLS, merge_folds, summarise
from yollava_cli.evaluation.records import (
    Forgetting,
    PastRun,
    RunResult,
    SubjectResults,
    subjects_from_json,
    subjects_to_json,
)
from yollava_cli.evaluation.report import write_report
from yollava_cli.evaluation.runner import Evaluation
from yollava_cli.learning.events import SubjectsEvaluated, SubjectStarted
from yollava_cli.learning.executor import Env, code_version
from yollava_cli.learning.mining import add_pool
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.reporting import report
from yollava_cli.store.concepts import add_concept
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.photos import expand_photo_paths
from yollava_cli.store.registry import Registry, now

def results_path(eval_root: Path, dataset: Dataset, model_fingerprint: str, methods: list[str], config: TrainConfig,
                 pools: list[Path], protocol: str = PROTOCOLS[0]) -> Path:
    settings = json.dumps([str(dataset.root.resolve()), model_fingerprint, sorted(methods), vars(config),
                           [str(p.resolve()) for p in pools], code_version(), protocol], sort_keys=True, default=str)
    return eval_root / f"results-{hashlib.sha256(settings.encode()).hexdigest()[:16]}.json"


def run_eval(executor, dataset: Dataset, eval_root: Path, methods: list[str], pools: list[Path],
             config: TrainConfig | None = None, folds: int = 1, protocol: str = PROTOCOLS[0]) -> RunResult:
    """Evaluate every subject not finished yet (on the executor), then each fold's forgetting check,
    and summarise with intervals.

    `protocol`: `isolated` (the paper's) trains each subject alone, in a registry of its own, from
    negatives mined out of the pools (without --pool, out of the other subjects' train photos as a
    pool): its concept head knows no other subject. `library` trains every subject beside the
    others, as a user's concepts: each head knows the others' train photos, so a look-alike among
    the test negatives (another corgi) was seen in training, as in a user's own library.
    Reports SubjectsEvaluated as each unit finishes, on either executor."""
    check_run(dataset, methods, protocol)
    config = config or TrainConfig()
    start = time.perf_counter()
    model = executor.model(units=len(dataset.subjects) * folds)
    shared = executor.share(dataset.root, dataset_files(dataset))
    resolved = [pool.expanduser().resolve() for pool in pools]
    shared_pools = [executor.share(pool, expand_photo_paths([pool])) for pool in resolved]
    only = list(dataset.subjects) if dataset.others else None
    folds_done, units = [], []
    for fold in range(folds):
        fold_data = rotate(dataset, fold) if folds > 1 else dataset
        path = results_path(eval_root, fold_data, model["fingerprint"], methods, config, pools, protocol).with_suffix(f".fold{fold}.json")
        done = subjects_from_json(json.loads(path.read_text())) if path.exists() else {}
        folds_done.append((path, done))
        for index, name in enumerate(fold_data.subjects):
            if name in done and (checkpoints_folder(path) / f"{name}.safetensors").exists():
                continue
            workspace = eval_root / (f"fold{fold}" if protocol == "library" else f"fold{fold}-isolated/{name}")
            units.append((SubjectUnit(shared, only, fold, folds, name, index, shared_pools, methods, config, protocol,
                                      workspace if executor.local else None),))
    total, finished = len(units) + folds, 0
    report(SubjectsEvaluated(0, total))

    def write(unit: tuple, scored: ScoredSubject) -> None:
        """One finished subject, in its own writes: its checkpoint, then the results file that names it."""
        nonlocal finished
        path, done = folds_done[unit[0].fold]
        atomic_write_bytes(checkpoints_folder(path) / f"{unit[0].subject}.safetensors", scored.checkpoint)
        done[unit[0].subject] = scored.results
        atomic_write_bytes(path, json.dumps(subjects_to_json(done), indent=1).encode())
        finished += 1
        report(SubjectsEvaluated(finished, total))

    executor.run(evaluate_subject, units, write)
    checks = [(ForgettingUnit(shared, only, fold, folds,
                              {name: (checkpoints_folder(path) / f"{name}.safetensors").read_bytes() for name in done}),)
              for fold, (path, done) in enumerate(folds_done)]
    forgotten = {}

    def count(unit: tuple, check: Forgetting) -> None:
        nonlocal finished
        forgotten[unit[0].fold] = check
        finished += 1
        report(SubjectsEvaluated(finished, total))

    executor.run(forgetting, checks, count)
    folded = [(done, forgotten[fold]) for fold, (_, done) in enumerate(folds_done)]
    return run_summary(dataset, model["model"], folded, methods, pools, protocol, start)


def checkpoints_folder(results: Path) -> Path:
    return results.with_suffix(".checkpoints")


def dataset_files(dataset: Dataset) -> list[Path]:
    """The files a copy of the dataset needs: its JSON files and every subject's photos."""
    photos = {p for s in [*dataset.subjects.values(), *dataset.others.values()] for p in s.train + s.test}
    return sorted(photos) + [dataset.root / name for name in [*FILES, "facts.json"] if (dataset.root / name).exists()]


@dataclass(frozen=True)
class FoldUnit:
    """Which fold of the dataset a unit works on: the driver's shared copy of it (executor.share),
    the subjects it holds (None: all), and the fold's rotation."""

    dataset: Any
    only: list[str] | None
    fold: int
    folds: int

    def data(self, env: Env) -> Dataset:
        """The unit's fold of the dataset, as the driver loaded it."""
        data = load_dataset(env.folder(self.dataset), self.only)
        return rotate(data, self.fold) if self.folds > 1 else data


@dataclass(frozen=True)
class SubjectUnit(FoldUnit):
    """One subject of one fold to train and score (evaluate_subject); `workspace` is its registry's
    folder where the driver's disk is the unit's, else None (a scratch folder)."""

    subject: str
    index: int
    pools: list
    methods: list[str]
    config: TrainConfig
    protocol: str
    workspace: Path | None


@dataclass(frozen=True)
class ForgettingUnit(FoldUnit):
    """A fold's forgetting check (forgetting): every subject's checkpoint file's bytes, by name."""

    checkpoints: dict[str, bytes]


@dataclass(frozen=True)
class ScoredSubject:
    """What a subject's unit sends back: its figures, and its checkpoint for the forgetting check."""

    results: SubjectResults
    checkpoint: bytes  # the checkpoint file's bytes


def evaluate_subject(env: Env, unit: SubjectUnit) -> ScoredSubject:
    """One subject (in one fold), trained and scored in a registry of its own: its metrics and its
    checkpoint file's bytes."""
    data = unit.data(env)
    subject = data.subjects[unit.subject]
    report(SubjectStarted(subject.name, unit.index, len(data.subjects), unit.fold, unit.folds))
    pools = [env.folder(pool) for pool in unit.pools]
    with env.workspace(unit.workspace) as folder:
        if unit.protocol == "library":
            registry = library_registry(folder, data, pools, env.embedder)
        else:
            registry = isolated_registry(folder, data, subject, pools, env.embedder)
        with registry:
            # on the model as loaded: a subject's figures do not depend on which subjects ran before it
            # on this process or worker (their tokens left in the tokenizer shifted its training's sums)
            evaluation = Evaluation(data, env.bare_vlm(), registry, env.embedder, unit.methods, unit.config)
            results = evaluation.evaluate_subject(subject)
            checkpoint = registry.current_checkpoint(registry.concept(subject.name).id)
            return ScoredSubject(results, (registry.root / checkpoint.file).read_bytes())


def forgetting(env: Env, unit: ForgettingUnit) -> Forgetting:
    """The forgetting check with every subject's checkpoint loaded, in the dataset's order."""
    data, vlm = unit.data(env), env.bare_vlm()
    with env.workspace(None) as folder:
        for name in data.subjects:
            path = folder / f"{name}.safetensors"
            path.write_bytes(unit.checkpoints[name])
            vlm.tokens.load(path, name)
        return Evaluation(data, vlm, None, env.embedder, [], TrainConfig()).forgetting_check()


def check_run(dataset: Dataset, methods: list[str], protocol: str) -> None:
    """What makes a run impossible, said before any model loads or trains."""
    build_methods(methods)  # an unknown name fails before any training
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
    if len(dataset.subjects) < 2:
        raise UserError("eval needs at least 2 subjects: each subject's test negatives are the other subjects' "
                        "test photos; name another in --subjects")


def run_summary(dataset: Dataset, model: str, folded: list[tuple[dict[str, SubjectResults], Forgetting]], methods: list[str],
                pools: list[Path], protocol: str, start: float) -> RunResult:
    """The run's result from each fold's (per-subject results, forgetting check)."""
    per_subject = {name: merge_folds([done[name] for done, _ in folded]) for name in dataset.subjects}
    checks = [check for _, check in folded]
    forgetting = Forgetting(sum(c.identical for c in checks), sum(c.compared for c in checks), all(c.passed for c in checks))
    return RunResult(model, str(dataset.root), summarise(per_subject, methods), per_subject, forgetting, len(folded),
                     f"pools {', '.join(map(str, pools))}" if pools else "other subjects' train photos", protocol,
                     round(time.perf_counter() - start, 1), now())


def library_registry(folder: Path, data: Dataset, pools: list[Path], embedder) -> Registry:
    """Every subject as a user's concept, in one registry: without --pool, mining finds the others'
    photos (subset or not), and each concept head knows them."""
    registry = Registry(folder)
    add_pools(registry, pools, embedder)
    for subject in [*data.subjects.values(), *data.others.values()]:
        add_concept(registry, subject.name, subject.train, kind=subject.kind)
    return registry


def isolated_registry(folder: Path, data: Dataset, subject: Subject, pools: list[Path], embedder) -> Registry:
    """The subject alone, as the paper trains it: its negatives are mined from the pools, or without
    any, from a pool of the other subjects' train photos (copied, so it holds no test photo)."""
    registry = Registry(folder)
    if not pools:
        others = folder / "others"
        others.mkdir(parents=True, exist_ok=True)
        for other in [*data.subjects.values(), *data.others.values()]:
            if other.name != subject.name:
                for photo in other.train:
                    copy = others / f"{other.name}-{photo.name}"
                    if not copy.exists():
                        atomic_write_bytes(copy, photo.read_bytes())
        pools = [others]
    add_pools(registry, pools, embedder)
    add_concept(registry, subject.name, subject.train, kind=subject.kind)
    return registry


def add_pools(registry: Registry, pools: list[Path], embedder) -> None:
    for i, pool in enumerate(pools):
        if registry.pool(f"pool{i}") is None:
            add_pool(registry, f"pool{i}", pool, embedder)


def record_run(registry: Registry, result: RunResult) -> int:
    """Keep the run in the user's registry, so cron jobs can track drift (`eval --history`)."""
    return registry.record_eval_run({"model": result.model, "dataset": result.dataset, "folds": result.folds},
                                    result.to_json(), result.finished_at)


def history(registry: Registry) -> list[PastRun]:
    """The recorded runs, read from their stored JSON whichever version wrote it."""
    out = []
    for run in registry.eval_runs():
        result = json.loads(run.results)
        out.append(PastRun(run.id, run.finished_at, result["model"], result["dataset"], result.get("wall_s"),
                           {m: v.get("recognition", {}).get("weighted") for m, v in result["methods"].items()}))
    return out


@dataclass
class EvalSettings:
    """What `yollava eval` is asked to run, in one object (the command's flags)."""

    dataset: Path
    methods: list[str] | None = None  # every registered method
    subjects: list[str] | None = None
    pools: list[Path] = field(default_factory=list)
    config: TrainConfig = field(default_factory=TrainConfig)
    folds: int = 1
    protocol: str = PROTOCOLS[0]
    report: Path | None = None


def evaluate(registry: Registry, executor, settings: EvalSettings) -> RunResult:
    """`yollava eval`: the dataset checked before any model loads, the run (in the data dir's eval/
    registries), recorded in the user's registry for --history, and its report written if asked."""
    data = load_dataset(settings.dataset, settings.subjects)
    methods = settings.methods or method_names()
    check_run(data, methods, settings.protocol)
    result = run_eval(executor, data, data_dir() / "eval", methods, settings.pools, settings.config,
                      settings.folds, settings.protocol)
    result = replace(result, ray=executor.report())
    result = replace(result, run_id=record_run(registry, result))
    if settings.report:
        result = replace(result, report_files=[str(p) for p in write_report(result, settings.report)])
    return result
