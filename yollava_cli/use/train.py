"""`train`: each named concept one unit on the executor (learning.executor), as eval's subjects
are, so the command does not care where units run. On this machine's disk a unit trains the
concept in the registry itself (Ctrl-C keeps the best so far, `--resume` continues it); on a Ray
worker it trains a snapshot of the concept (use.snapshot) in a scratch registry, and the driver
records what comes back (the checkpoint file, the run, the worker's new answers) in one
transaction. Either way the driver holds each concept's training lock throughout."""

import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.learning.events import ConceptsTrained
from yollava_cli.learning.executor import Env
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.learning.training import Trainer, TrainResult, mine_if_needed
from yollava_cli.reporting import report
from yollava_cli.store.concepts import get_concept, require_photos
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import RunStatus
from yollava_cli.use.snapshot import ANSWER, restore_for_training, training_snapshot


class Interrupted(Exception):
    """A concept's training was interrupted (its best so far kept): the ones after it do not start."""


def train_concepts(registry: Registry, names: list[str], executor, config: TrainConfig, resume: bool = False) -> dict:
    """Mine what has no negatives yet, then train each named concept on the executor:
    {"concepts": [train --json of each, in order], "ray": where they ran (absent when here)}."""
    if resume and not executor.local:
        raise UserError("--resume continues an interrupted run on this machine: drop --ray")
    concepts = [get_concept(registry, name) for name in names]
    for concept in concepts:
        require_photos(registry, concept)  # before any model loads or worker starts
    results = {}
    with ExitStack() as stack:
        for concept in concepts:
            stack.enter_context(registry.lock(f"train-{concept.name}", f"training <{concept.name}>"))
        for concept in concepts:
            mine_if_needed(registry, concept.name, executor.embedder())
        for concept in concepts:
            require_photos(registry, get_concept(registry, concept.name), negatives=True)
        units = [(TrainUnit(c.name, config, resume, registry.root) if executor.local
                  else TrainUnit(c.name, config, resume, snapshot=training_snapshot(registry, c.name)),) for c in concepts]

        def write(unit: tuple, result: dict) -> None:
            name = unit[0].name
            results[name] = result["result"] if unit[0].snapshot is None else record(registry, name, config, result)
            report(ConceptsTrained(len(results), len(concepts)))
            if results[name]["interrupted"]:
                raise Interrupted

        report(ConceptsTrained(0, len(concepts)))
        try:
            executor.run(train_unit, units, write)
        except Interrupted:
            pass
    trained = {"concepts": [results[c.name] for c in concepts if c.name in results]}
    return trained | ({"ray": executor.report()} if executor.report() is not None else {})


@dataclass(frozen=True)
class TrainUnit:
    """One concept to train: in the registry at `registry` (this machine's disk), or in a scratch
    one restored from `snapshot` (use.snapshot's bytes, on a worker)."""

    name: str
    config: TrainConfig
    resume: bool = False
    registry: Path | None = None
    snapshot: bytes | None = None


def train_unit(env: Env, unit: TrainUnit) -> dict:
    """A unit: its TrainResult as JSON, and from a snapshot what the driver records."""
    vlm = env.bare_vlm()  # as if the concept were trained alone
    with env.workspace(unit.registry) as folder, Registry(folder) as registry:
        if unit.snapshot is None:
            result = Trainer(registry, vlm, unit.name, unit.config, env.embedder).run(unit.resume)
            return {"result": result.to_json()}
        manifest = restore_for_training(registry, unit.snapshot)
        result = Trainer(registry, vlm, unit.name, unit.config, env.embedder).run()
        checkpoint = registry.current_checkpoint(registry.concept(unit.name).id)
        known = {tuple(answer[key] for key in ANSWER[:3]) for answer in manifest["training"]["answers"]}
        return {"result": result.to_json(), "checkpoint": (registry.root / checkpoint.file).read_bytes(),
                "run": registry.run_results(registry.latest_run_id()), "metrics": json.loads(checkpoint.metrics),
                "data_hash": checkpoint.data_hash, "model": vlm.ref, "fingerprint": vlm.fingerprint,
                "answers": [row for row in registry.answers() if tuple(row[:3]) not in known]}


def record(registry: Registry, name: str, config: TrainConfig, result: dict) -> dict:
    """One concept trained elsewhere, in one transaction: its run, its checkpoint file and row, and
    the answers the worker's base model gave (cached here as if this machine had asked)."""
    concept = registry.concept(name)
    with registry.transaction():
        run_id = registry.start_run("train", concept.id, {**asdict(config), "resume": False})
        file = registry.root / "checkpoints" / name / f"run{run_id}.safetensors"
        atomic_write_bytes(file, result["checkpoint"])
        best = {**result["run"]["best"], "file": str(file.relative_to(registry.root))}
        registry.finish_run(run_id, RunStatus.DONE, {"history": result["run"]["history"], "best": best})
        registry.record_checkpoint(concept.id, file, result["model"], result["fingerprint"], config.k,
                                   result["metrics"], asdict(config), result["data_hash"])
        for row in result["answers"]:
            registry.store_answer(*row)
    return TrainResult(**{**result["result"], "checkpoint": str(file)}).to_json()
