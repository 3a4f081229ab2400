"""`eval --ray`: each subject (in each fold) is one unit, trained and scored alone on a worker, as
the serial run's isolated protocol trains it. The driver keeps the results file the serial run
keeps (so either run reuses the other's finished subjects) and, beside it, each subject's
checkpoint for the forgetting check, which runs last with every subject loaded."""

import json
import time
from dataclasses import asdict
from pathlib import Path

from yollava_cli.config import data_dir
from yollava_cli.errors import UserError
from yollava_cli.evaluation.dataset import Dataset, load_dataset, rotate
from yollava_cli.evaluation.report import write_report
from yollava_cli.evaluation.runner import check_run, record_run, results_path, run_summary
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.models.loading import resolve_model_ref
from yollava_cli.scale.driver import Workers
from yollava_cli.scale.worker import pack_files
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.photos import BadPhoto, expand_photo_paths, photo_bytes
from yollava_cli.store.registry import Registry

DATASET_FILES = ("manifest.json", "descriptions.json", "text_qa.json", "visual_qa.json", "facts.json")


def evaluate(registry: Registry, dataset: Path, subjects: list[str] | None, methods: list[str], pools: list[Path],
             config: TrainConfig, address: str, folds: int = 1, model: str | None = None, quantize: str | None = None,
             report: Path | None = None, on_progress=None, protocol: str = "isolated") -> dict:
    """`yollava eval --ray`: the dataset checked here, the units on the workers, the run recorded
    in the user's registry for --history and its report written, as without --ray."""
    data = load_dataset(dataset, subjects)
    check_run(data, methods, protocol)
    if protocol != "isolated":
        raise UserError("--ray runs the isolated protocol (each subject alone is a unit); "
                        "run --protocol library without --ray")
    with Workers(address, resolve_model_ref(model), quantize, needs_model=True, units=len(data.subjects) * folds) as workers:
        result = run_eval(workers, data, data_dir() / "eval", methods, pools, config, folds, on_progress)
        result["ray"] = workers.report()
    result["run_id"] = record_run(registry, result)
    if report:
        result["report_files"] = [str(p) for p in write_report(result, report)]
    return result


def run_eval(workers: Workers, dataset: Dataset, eval_root: Path, methods: list[str], pools: list[Path],
             config: TrainConfig, folds: int = 1, on_progress=None) -> dict:
    """Every subject not finished yet, on the workers; then each fold's forgetting check."""
    import ray

    start = time.perf_counter()
    on_progress = on_progress or (lambda done, total: None)
    packed = ray.put(pack_dataset(dataset))
    packed_pools = ray.put([pack_pool(pool) for pool in pools])
    only = list(dataset.subjects) if dataset.others else None
    folds_done, checkpoints, units = [], [], []
    for fold in range(folds):
        fold_data = rotate(dataset, fold) if folds > 1 else dataset
        path = results_path(eval_root, fold_data, workers.info[0]["fingerprint"], methods, config, pools).with_suffix(f".fold{fold}.json")
        done = json.loads(path.read_text()) if path.exists() else {}
        folder = path.with_suffix(".checkpoints")
        folds_done.append((path, done))
        checkpoints.append(folder)
        unit = {"fold": fold, "folds": folds, "only": only, "methods": methods, "config": asdict(config)}
        units += [(packed, packed_pools, {**unit, "subject": name}) for name in fold_data.subjects
                  if name not in done or not (folder / f"{name}.safetensors").exists()]
    total, finished = len(units) + folds, 0
    on_progress(0, total)

    def write(unit: tuple, result: dict) -> None:
        """One finished subject, in its own writes: its checkpoint, then the results file that names it."""
        nonlocal finished
        fold, name = unit[2]["fold"], unit[2]["subject"]
        path, done = folds_done[fold]
        atomic_write_bytes(checkpoints[fold] / f"{name}.safetensors", result["checkpoint"])
        done[name] = result["results"]
        atomic_write_bytes(path, json.dumps(done, indent=1).encode())
        finished += 1
        on_progress(finished, total)

    workers.run("evaluate", units, write)
    forgetting = {}

    def keep(unit: tuple, result: dict) -> None:
        nonlocal finished
        forgetting[unit[2]["fold"]] = result["forgetting"]
        finished += 1
        on_progress(finished, total)

    workers.run("forgetting", [(packed, {name: (checkpoints[fold] / f"{name}.safetensors").read_bytes() for name in dataset.subjects},
                                {"fold": fold, "folds": folds, "only": only}) for fold in range(folds)], keep)
    folded = [(done, forgetting[fold]) for fold, (_, done) in enumerate(folds_done)]
    return run_summary(dataset, workers.info[0]["model"], folded, methods, pools, "isolated", start)


def pack_dataset(dataset: Dataset) -> dict:
    """The dataset's files a worker needs: its JSON files and every subject's photos."""
    root = dataset.root
    photos = {p for s in [*dataset.subjects.values(), *dataset.others.values()] for p in s.train + s.test}
    try:
        relative = [p.relative_to(root) for p in photos]
    except ValueError:
        raise UserError(f"{root / 'manifest.json'}: --ray needs every photo inside the dataset folder") from None
    relative += [Path(name) for name in DATASET_FILES if (root / name).exists()]
    return pack_files({str(p): (root / p).read_bytes() for p in sorted(relative)})


def pack_pool(pool: Path) -> dict:
    """A --pool folder's photo files, as a worker's copy must hold them: the unreadable ones are
    left out, as the serial run's pool scan skips them."""
    pool = pool.expanduser().resolve()
    files = {}
    for path in expand_photo_paths([pool]):
        try:
            files[str(path.relative_to(pool))] = photo_bytes(path)
        except BadPhoto:
            continue
    return pack_files(files)
