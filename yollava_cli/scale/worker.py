"""The Ray worker: a stateless actor that loads the model and the embedder once, receives photo
bytes (never a path on the driver's disk) and sends back vectors, metrics and checkpoint tensors.
What it writes stays in a scratch folder for one unit, besides its node's caches (model weights,
image features) in that node's data dir."""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from yollava_cli import __version__
from yollava_cli.store.photos import BadPhoto, decode


def pack_files(files: dict[str, bytes]) -> dict:
    """Files as {"digest", "files": {relative path: bytes}}: what a worker writes back into a folder
    of its own. The digest names the content, so a worker unpacks it once."""
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return {"digest": digest.hexdigest()[:16], "files": files}


class Worker:
    """One per CPU slot (or GPU); Ray restarts a killed one and retries its unit."""

    def __init__(self, model: str | None, quantize: str | None, embedder: str | None):
        self.model_ref, self.quantize, self.embedder_name = model, quantize, embedder
        self._vlm = self._embedder = None
        self.scratch = Path(tempfile.mkdtemp(prefix="yollava-worker-"))

    @property
    def vlm(self):
        if self._vlm is None:
            from yollava_cli.models.loading import load_vlm

            self._vlm = load_vlm(self.model_ref, quantize=self.quantize)
        return self._vlm

    @property
    def embedder(self):
        if self._embedder is None:
            from yollava_cli.learning.embeddings import load_embedder

            self._embedder = load_embedder(self.embedder_name)
        return self._embedder

    def describe(self, needs_model: bool) -> dict:
        """Who this worker is, what it loaded (once, here) and which code it runs."""
        import ray

        from yollava_cli.evaluation.runner import code_version

        context = ray.get_runtime_context()
        info = {"worker": context.get_actor_id(), "node": context.get_node_id(), "pid": os.getpid(),
                "version": __version__, "code": code_version(), "embedder": self.embedder.id, "dim": self.embedder.dim,
                "duplicate_above": self.embedder.duplicate_above, "note": self.embedder.note}
        if needs_model:
            info.update(model=self.vlm.ref, fingerprint=self.vlm.fingerprint)
        return info

    def embed(self, photos: list) -> dict:
        """One batch: ("file", bytes, max_side) decoded as the driver's photo intake would, or
        ("pixels", uint8 array); None (unreadable) gives None."""
        images = [open_payload(p) for p in photos]
        kept = [image for image in images if image is not None]
        vectors = iter(self.embedder.embed(kept) if kept else ())
        return {"vectors": [next(vectors) if image is not None else None for image in images], "worker": self.identity()}

    def evaluate(self, dataset: dict, pools: list[dict], unit: dict) -> dict:
        """One eval subject (in one fold), trained and scored alone in a scratch registry, as the
        serial run's isolated protocol does: its metrics and its checkpoint file's bytes."""
        from yollava_cli.evaluation.runner import Evaluation, isolated_registry
        from yollava_cli.learning.train_config import TrainConfig

        data = self.dataset(dataset, unit)
        subject = data.subjects[unit["subject"]]
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            registry = isolated_registry(folder / "registry", data, subject, [self.unpack(p) for p in pools],
                                         self.embedder, lambda event: None)
            evaluation = Evaluation(data, self.vlm, registry, self.embedder, unit["methods"], TrainConfig(**unit["config"]),
                                    lambda event: None)
            results = evaluation.evaluate_subject(subject)
            checkpoint = registry.current_checkpoint(registry.concept(subject.name)["id"])
            return {"results": results, "checkpoint": (registry.root / checkpoint["file"]).read_bytes(),
                    "worker": self.identity()}
        finally:
            self.unload_concepts()
            shutil.rmtree(folder, ignore_errors=True)

    def forgetting(self, dataset: dict, checkpoints: dict[str, bytes], unit: dict) -> dict:
        """The forgetting check with every subject's checkpoint loaded, in the dataset's order."""
        from yollava_cli.evaluation.runner import Evaluation
        from yollava_cli.learning.train_config import TrainConfig

        data = self.dataset(dataset, unit)
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            for name in data.subjects:
                path = folder / f"{name}.safetensors"
                path.write_bytes(checkpoints[name])
                self.vlm.tokens.load(path, name)
            check = Evaluation(data, self.vlm, None, self.embedder, [], TrainConfig(), lambda event: None).forgetting_check()
            return {"forgetting": check, "worker": self.identity()}
        finally:
            self.unload_concepts()
            shutil.rmtree(folder, ignore_errors=True)

    def train(self, unit: dict) -> dict:
        """One concept, trained in a scratch registry rebuilt from what the driver sent (see
        scale.training.pack_concept): the checkpoint file's bytes and what the driver records."""
        from yollava_cli.learning.train_config import TrainConfig
        from yollava_cli.learning.training import train_concept
        from yollava_cli.store.registry import Registry

        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        try:
            registry = Registry(folder)
            rebuild_concept(registry, unit)
            result = train_concept(registry, self.vlm, unit["name"], TrainConfig(**unit["config"]), embedder=self.embedder)
            concept = registry.concept(unit["name"])
            checkpoint = registry.current_checkpoint(concept["id"])
            run = registry.db.execute("SELECT results FROM runs ORDER BY id DESC LIMIT 1").fetchone()[0]
            known = {tuple(row[:3]) for row in unit["answers"]}
            answers = [list(row) for row in registry.db.execute("SELECT sha256, model, prompt, answer FROM answers")
                       if tuple(row[:3]) not in known]
            return {"result": result.to_json(), "checkpoint": (registry.root / checkpoint["file"]).read_bytes(),
                    "run": json.loads(run), "metrics": json.loads(checkpoint["metrics"]),
                    "data_hash": checkpoint["data_hash"], "model": self.vlm.ref, "fingerprint": self.vlm.fingerprint,
                    "answers": answers, "worker": self.identity()}
        finally:
            self.unload_concepts()
            shutil.rmtree(folder, ignore_errors=True)

    def dataset(self, packed: dict, unit: dict):
        from yollava_cli.evaluation.dataset import load_dataset, rotate

        data = load_dataset(self.unpack(packed), unit["only"])
        return rotate(data, unit["fold"]) if unit["folds"] > 1 else data

    def unpack(self, packed: dict) -> Path:
        """The packed folder, written once per content into this worker's scratch folder."""
        root = self.scratch / f"folder-{packed['digest']}"
        if not root.exists():
            partial = Path(tempfile.mkdtemp(dir=self.scratch))
            for name, data in packed["files"].items():
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                (partial / name).write_bytes(data)
            partial.rename(root)
        return root

    def unload_concepts(self) -> None:
        """Each unit starts from the bare base model, whichever units this worker ran before."""
        if self._vlm is not None:
            for name in list(self._vlm.tokens):
                self._vlm.tokens.remove(name)

    @staticmethod
    def identity() -> str:
        import ray

        return ray.get_runtime_context().get_actor_id()


def rebuild_concept(registry, unit: dict) -> None:
    """The concept as the driver's registry holds it, in one transaction: its photos (their stored
    bytes, under their hashes, in their order), negatives, facts, cached answers and vectors, and
    the other concepts' photos (its head learns them as negatives) under a stand-in concept."""
    from yollava_cli.store.states import ConceptStatus

    with registry.transaction() as db:
        concept = registry.create_concept(unit["name"], unit["kind"])
        for sha, data, width, height, source, added_at in unit["photos"]:
            registry.store_photo(sha, data, width, height)
            db.execute("INSERT INTO concept_photos (concept_id, sha256, role, source_path, added_at) VALUES (?, ?, 'train', ?, ?)",
                       [concept["id"], sha, source, added_at])
        if unit["others"]:
            others = registry.create_concept(f"{unit['name']}-others", "object")
            for sha, data, width, height in unit["others"]:
                registry.store_photo(sha, data, width, height)
                registry.add_concept_photo(others["id"], sha, sha)
        for sha, _kind, _score, _source, data, width, height in unit["negatives"]:
            registry.store_photo(sha, data, width, height)
        registry.replace_negatives(concept["id"], [row[:4] for row in unit["negatives"]], unit["embedder"])
        registry.add_facts(concept["id"], unit["facts"])
        for row in unit["answers"]:
            registry.store_answer(*row)
        for embedder, vectors in unit["embeddings"].items():
            registry.store_embeddings(embedder, vectors)
        registry.set_concept_status(concept["id"], ConceptStatus.MINED)


def open_payload(payload) -> Image.Image | None:
    if payload is None:
        return None
    kind, data, *rest = payload
    if kind == "pixels":
        return Image.fromarray(data)
    try:
        return decode(data, rest[0])
    except BadPhoto:
        return None
