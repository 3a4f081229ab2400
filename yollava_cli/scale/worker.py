"""The Ray worker: a stateless actor that loads the model and the embedder once and runs units (the
functions `learning.executor` describes) on them. It receives bytes, never a path on the driver's
disk: a shared folder arrives packed and is written once into the worker's scratch folder; a unit's
registry lives in a scratch folder of its own, removed after the unit."""

import hashlib
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from yollava_cli import __version__
from yollava_cli.learning.executor import Env, call, code_version
from yollava_cli.reporting import collecting


def pack_files(files: dict[str, bytes]) -> dict:
    """Files as {"digest", "files": {relative path: bytes}}: what a worker writes back into a folder
    of its own. The digest names the content, so a worker unpacks it once."""
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return {"digest": digest.hexdigest()[:16], "files": files}


class WorkerEnv(Env):
    """A worker's machine: shared folders are unpacked here; every unit works in scratch."""

    def __init__(self, model: str | None, quantize: str | None, embedder: str | None):
        super().__init__(model, quantize, embedder)
        self.scratch = Path(tempfile.mkdtemp(prefix="yollava-worker-"))

    def folder(self, shared) -> Path:
        """The packed folder (or a Ray reference to it), written once per content."""
        import ray

        packed = ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared
        root = self.scratch / f"folder-{packed['digest']}"
        if not root.exists():
            partial = Path(tempfile.mkdtemp(dir=self.scratch))
            for name, data in packed["files"].items():
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                (partial / name).write_bytes(data)
            partial.rename(root)
        return root

    @contextmanager
    def workspace(self, folder: Path | None):
        """Always scratch: a path of the driver's means nothing here."""
        with super().workspace(None) as scratch:
            yield scratch


class Worker:
    """One per CPU slot (or GPU); Ray restarts a killed one and retries its unit."""

    def __init__(self, model: str | None, quantize: str | None, embedder: str | None):
        self.env = WorkerEnv(model, quantize, embedder)

    def describe(self, needs_model: bool) -> dict:
        """Who this worker is, what it loaded (once, here) and which code it runs."""
        import ray

        context = ray.get_runtime_context()
        embedder = self.env.embedder
        info = {"worker": context.get_actor_id(), "node": context.get_node_id(), "pid": os.getpid(),
                "version": __version__, "code": code_version(), "embedder": embedder.id, "dim": embedder.dim,
                "duplicate_above": embedder.duplicate_above, "note": embedder.note}
        if needs_model:
            info.update(model=self.env.vlm.ref, fingerprint=self.env.vlm.fingerprint)
        return info

    def run(self, fn: Callable, *args) -> dict:
        """One unit: its output, which worker ran it, and what it reported (for the driver's reporter)."""
        import ray

        with collecting() as events:
            value = call(self.env, fn, args)
        return {"value": value, "worker": ray.get_runtime_context().get_actor_id(), "events": events}
