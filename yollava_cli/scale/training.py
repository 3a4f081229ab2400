"""`train --ray`: one concept per unit. The driver mines a concept that has no negatives yet (its
embeddings on the workers), sends the concept's stored photos, negatives, facts, the other
concepts' photos and the cached answers to a worker, and records what comes back (checkpoint file,
run, checkpoint row, new answers) in one transaction, holding each concept's training lock as
serial training does."""

from contextlib import ExitStack
from dataclasses import asdict

from yollava_cli.learning.mining import mine
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.learning.training import TrainResult
from yollava_cli.models.loading import resolve_model_ref
from yollava_cli.scale.driver import Workers
from yollava_cli.scale.embedding import RayEmbedder
from yollava_cli.store.concepts import get_concept, require_photos
from yollava_cli.store.fileio import atomic_write_bytes
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus, RunStatus


def train(registry: Registry, names: list[str], address: str, config: TrainConfig, model: str | None = None,
          quantize: str | None = None, on_status=None, on_progress=None) -> dict:
    """Train each named concept on a worker; {"concepts": [train --json of each], "ray": ...}."""
    concepts = [get_concept(registry, name) for name in names]
    for concept in concepts:
        require_photos(registry, concept)  # before any worker starts
    with ExitStack() as stack:
        for concept in concepts:
            stack.enter_context(registry.lock(f"train-{concept['name']}", f"training <{concept['name']}>"))
        workers = stack.enter_context(Workers(address, resolve_model_ref(model), quantize, needs_model=True))
        for concept in concepts:
            if concept["status"] == ConceptStatus.ADDED or not registry.negative_counts(concept["id"]):
                if on_status:
                    on_status(f"Mining negatives for <{concept['name']}> (embeddings on Ray)...")
                mine(registry, concept["name"], RayEmbedder(workers), on_status=on_status)
        for concept in concepts:
            require_photos(registry, get_concept(registry, concept["name"]), negatives=True)
        results = {}

        def write(unit: tuple, result: dict) -> None:
            results[unit[0]["name"]] = record(registry, unit[0]["name"], config, result)
            if on_progress:
                on_progress(len(results), len(concepts))

        if on_progress:
            on_progress(0, len(concepts))
        workers.run("train", [(pack_concept(registry, c["name"], config),) for c in concepts], write)
        return {"concepts": [results[c["name"]] for c in concepts], "ray": workers.report()}


def pack_concept(registry: Registry, name: str, config: TrainConfig) -> dict:
    """What a worker needs to train the concept as this registry would: stored photos' bytes
    under their hashes, in the registry's order."""
    concept = registry.concept(name)
    photos = [[p["sha256"], (registry.root / p["file"]).read_bytes(), p["width"], p["height"], p["source_path"], p["added_at"]]
              for p in registry.concept_photos(concept["id"])]
    negatives = [[r["sha256"], r["kind"], r["score"], r["source_path"], (registry.root / r["file"]).read_bytes(), r["width"], r["height"]]
                 for r in registry.db.query(
                     "SELECT n.sha256, n.kind, n.score, n.source_path, p.file, p.width, p.height FROM negatives n "
                     "JOIN photos p USING (sha256) WHERE n.concept_id = ? ORDER BY n.kind, n.score DESC", [concept["id"]])]
    embedder = registry.db.execute("SELECT embedder FROM negatives WHERE concept_id = ? LIMIT 1", [concept["id"]]).fetchone()[0]
    others = []
    for row in registry.other_concepts_photos(concept["id"]):
        photo = registry.photo(row["sha256"])
        others.append([row["sha256"], (registry.root / row["file"]).read_bytes(), photo["width"], photo["height"]])
    shas = [p[0] for p in photos]
    answers = [list(row) for row in registry.db.execute(
        f"SELECT sha256, model, prompt, answer FROM answers WHERE sha256 IN ({','.join('?' * len(shas))})", shas)]
    every = list(dict.fromkeys(shas + [n[0] for n in negatives] + [o[0] for o in others]))
    vectors = {}  # the cached vectors (mining's), so the head learns from the vectors it would here
    for (embedding,) in registry.db.execute("SELECT DISTINCT embedder FROM embeddings"):
        vectors[embedding] = registry.embeddings(embedding, every)
    return {"name": name, "kind": concept["kind"], "photos": photos, "negatives": negatives, "embedder": embedder,
            "others": others, "facts": [f["text"] for f in registry.facts(concept["id"])], "answers": answers,
            "embeddings": vectors, "config": asdict(config)}


def record(registry: Registry, name: str, config: TrainConfig, result: dict) -> dict:
    """One trained concept, in one transaction: its run, its checkpoint file and row, and the
    answers the worker's base model gave (cached here as if this machine had asked)."""
    concept = registry.concept(name)
    with registry.transaction():
        run_id = registry.start_run("train", concept["id"], {**asdict(config), "resume": False})
        file = registry.root / "checkpoints" / name / f"run{run_id}.safetensors"
        atomic_write_bytes(file, result["checkpoint"])
        best = {**result["run"]["best"], "file": str(file.relative_to(registry.root))}
        registry.finish_run(run_id, RunStatus.DONE, {"history": result["run"]["history"], "best": best})
        registry.record_checkpoint(concept["id"], file, result["model"], result["fingerprint"], config.k,
                                   result["metrics"], asdict(config), result["data_hash"])
        for row in result["answers"]:
            registry.store_answer(*row)
    return TrainResult(**{**result["result"], "checkpoint": str(file)}).to_json()
