"""`train --ray`: one concept per unit. The driver mines a concept that has no negatives yet (its
embeddings on the workers), sends the concept's stored photos, negatives, facts, the other
concepts' photos and the cached answers to a worker, and records what comes back (checkpoint file,
run, checkpoint row, new answers) in one transaction, holding each concept's training lock as
serial training does."""

import json
from contextlib import ExitStack
from dataclasses import asdict

from yollava_cli.learning.events import ConceptsTrained
from yollava_cli.learning.executor import Env
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.learning.training import TrainResult, mine_if_needed, train_concept
from yollava_cli.reporting import report
from yollava_cli.store.concepts import get_concept, require_photos
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus, RunStatus


def train(registry: Registry, names: list[str], executor, config: TrainConfig) -> dict:
    """Train each named concept on a worker; {"concepts": [train --json of each], "ray": ...}."""
    concepts = [get_concept(registry, name) for name in names]
    for concept in concepts:
        require_photos(registry, concept)  # before any worker starts
    with ExitStack() as stack:
        for concept in concepts:
            stack.enter_context(registry.lock(f"train-{concept.name}", f"training <{concept.name}>"))
        for concept in concepts:
            mine_if_needed(registry, concept.name, executor.embedder())
        for concept in concepts:
            require_photos(registry, get_concept(registry, concept.name), negatives=True)
        results = {}

        def write(unit: tuple, result: dict) -> None:
            results[unit[0]["name"]] = record(registry, unit[0]["name"], config, result)
            report(ConceptsTrained(len(results), len(concepts)))

        report(ConceptsTrained(0, len(concepts)))
        executor.run(train_copy, [(pack_concept(registry, c.name, config),) for c in concepts], write)
        return {"concepts": [results[c.name] for c in concepts], "ray": executor.report()}


def pack_concept(registry: Registry, name: str, config: TrainConfig) -> dict:
    """What a worker needs to train the concept as this registry would: stored photos' bytes
    under their hashes, in the registry's order."""
    concept = registry.concept(name)
    photos = [[p.sha256, (registry.root / p.file).read_bytes(), p.width, p.height, p.source_path, p.added_at]
              for p in registry.concept_photos(concept.id)]
    negatives = [[n.sha256, n.kind, n.score, n.source_path, (registry.root / n.file).read_bytes(), n.width, n.height]
                 for n in registry.negative_rows(concept.id)]
    embedder = registry.negatives_embedder(concept.id)
    others = [[o.sha256, (registry.root / o.file).read_bytes(), o.width, o.height]
              for o in registry.other_concepts_photos(concept.id)]
    shas = [p[0] for p in photos]
    answers = registry.answers(shas)
    every = list(dict.fromkeys(shas + [n[0] for n in negatives] + [o[0] for o in others]))
    vectors = {}  # the cached vectors (mining's), so the head learns from the vectors it would here
    for embedding in registry.embedders():
        vectors[embedding] = registry.embeddings(embedding, every)
    return {"name": name, "kind": concept.kind, "photos": photos, "negatives": negatives, "embedder": embedder,
            "others": others, "facts": [f.text for f in registry.facts(concept.id)], "answers": answers,
            "embeddings": vectors, "config": asdict(config)}


def record(registry: Registry, name: str, config: TrainConfig, result: dict) -> dict:
    """One trained concept, in one transaction: its run, its checkpoint file and row, and the
    answers the worker's base model gave (cached here as if this machine had asked)."""
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


def train_copy(env: Env, unit: dict) -> dict:
    """A unit: one concept, trained in a scratch registry rebuilt from what the driver sent (see
    pack_concept): the checkpoint file's bytes and what the driver records."""
    with env.workspace(None) as folder, Registry(folder) as registry:
        rebuild_concept(registry, unit)
        result = train_concept(registry, env.vlm, unit["name"], TrainConfig(**unit["config"]), embedder=env.embedder)
        checkpoint = registry.current_checkpoint(registry.concept(unit["name"]).id)
        known = {tuple(row[:3]) for row in unit["answers"]}
        return {"result": result.to_json(), "checkpoint": (registry.root / checkpoint.file).read_bytes(),
                "run": registry.run_results(registry.latest_run_id()), "metrics": json.loads(checkpoint.metrics),
                "data_hash": checkpoint.data_hash, "model": env.vlm.ref, "fingerprint": env.vlm.fingerprint,
                "answers": [row for row in registry.answers() if tuple(row[:3]) not in known]}


def rebuild_concept(registry: Registry, unit: dict) -> None:
    """The concept as the driver's registry holds it, in one transaction: its photos (their stored
    bytes, under their hashes, in their order), negatives, facts, cached answers and vectors, and
    the other concepts' photos (its head learns them as negatives) under a stand-in concept."""
    with registry.transaction():
        concept = registry.create_concept(unit["name"], unit["kind"])
        for sha, data, width, height, source, added_at in unit["photos"]:
            registry.store_photo(sha, data, width, height)
            registry.add_concept_photo(concept.id, sha, source, added_at)
        if unit["others"]:
            others = registry.create_concept(f"{unit['name']}-others", "object")
            for sha, data, width, height in unit["others"]:
                registry.store_photo(sha, data, width, height)
                registry.add_concept_photo(others.id, sha, sha)
        for sha, _kind, _score, _source, data, width, height in unit["negatives"]:
            registry.store_photo(sha, data, width, height)
        registry.replace_negatives(concept.id, [row[:4] for row in unit["negatives"]], unit["embedder"])
        registry.add_facts(concept.id, unit["facts"])
        for row in unit["answers"]:
            registry.store_answer(*row)
        for embedder, vectors in unit["embeddings"].items():
            registry.store_embeddings(embedder, vectors)
        registry.set_concept_status(concept.id, ConceptStatus.MINED)
