"""The driver's side of a Ray run: `RayExecutor`, the executor (see learning.executor) whose units
run on workers started on the cluster, handed to whichever is free, their results back in this
process (which alone writes them), and the `ray` object that --json reports."""

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.learning.executor import code_version
from yollava_cli.reporting import report
from yollava_cli.scale.cluster import connect, disconnect, first_line

RETRIES = 3  # a worker killed mid-unit is restarted and its unit run again, up to this many times
CPUS_PER_WORKER = 1  # torch threads per worker on CPUs (Ray sets OMP_NUM_THREADS to it)


class Workers:
    """Workers that loaded what the units need once; `with Workers(...) as w:` stops what it started."""

    def __init__(self, address: str, model: str | None = None, quantize: str | None = None,
                 embedder: str | None = None, needs_model: bool = False, units: int | None = None):
        self.started = connect(address)
        try:
            import ray

            from yollava_cli.scale.worker import Worker

            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            slots = gpus or max(1, int(resources.get("CPU", 1) // CPUS_PER_WORKER))
            remote = ray.remote(Worker).options(num_cpus=CPUS_PER_WORKER, num_gpus=1 if gpus else 0, max_restarts=RETRIES,
                                                max_task_retries=RETRIES, scheduling_strategy="SPREAD")
            self.actors = [remote.remote(model, quantize, embedder) for _ in range(min(slots, units) if units else slots)]
            self.info = self.get([actor.describe.remote(needs_model) for actor in self.actors])
            self.check_alike()
        except BaseException:
            self.close()
            raise
        self.busy = Counter()
        self.pending: dict = {}
        self.units = Counter()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import ray

        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        disconnect(self.started)

    def check_alike(self) -> None:
        """Every worker must run this code, with the same embedder (and model), or results would mix."""
        for info in self.info:
            if info["code"] != code_version():
                raise UserError(f"a Ray worker (node {info['node'][:8]}) runs other yollava code ({info['code']}; here "
                                f"{code_version()}): install the same yollava on every node")
        for key in ("embedder", "fingerprint"):
            if len({info.get(key) for info in self.info}) > 1:
                raise UserError(f"Ray workers loaded different {key}s ({', '.join(sorted({str(i.get(key)) for i in self.info}))}): "
                                f"name one with --{'model' if key == 'fingerprint' else 'embedder'}")

    def get(self, refs):
        """ray.get, with a worker's one-line error raised here as one."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):
                raise UserError(str(e.cause)) from None
            raise
        except ray.exceptions.ActorDiedError as e:
            raise UserError(f"a Ray worker died {RETRIES + 1} times on one unit ({first_line(e)})") from None

    def submit(self, fn: Callable, *args):
        """The unit on the least busy worker (Ray retries it on a restarted worker if that one dies)."""
        index = min(range(len(self.actors)), key=lambda i: self.busy[i])
        ref = self.actors[index].run.remote(fn, *args)
        self.busy[index] += 1
        self.pending[ref] = index
        return ref

    def result(self, ref):
        """The unit's output, after what it reported on its worker is reported here, in order."""
        self.busy[self.pending.pop(ref)] -= 1
        value = self.get(ref)
        self.units[value["worker"]] += 1
        for event in value["events"]:
            report(event)
        return value["value"]

    def run(self, fn: Callable, units: list[tuple], on_result: Callable[[tuple, dict], None]) -> None:
        """Each unit on a free worker, one at a time per worker; `on_result(unit, result)` here as
        each finishes, so the driver writes it before the next one comes back."""
        import ray

        queue, waiting = deque(units), {}
        while queue or waiting:
            while queue and len(waiting) < len(self.actors):
                unit = queue.popleft()
                waiting[self.submit(fn, *unit)] = unit
            [ready], _ = ray.wait(list(waiting), num_returns=1)
            on_result(waiting.pop(ready), self.result(ready))

    def ordered(self, fn: Callable, calls: Iterable[tuple], in_flight: int = 2) -> Iterator[dict]:
        """Results of many short calls in order, with `in_flight` per worker queued so that the
        next call's bytes travel while a worker computes."""
        window = deque()
        for args in calls:
            window.append(self.submit(fn, *args))
            if len(window) >= in_flight * len(self.actors):
                yield self.result(window.popleft())
        while window:
            yield self.result(window.popleft())

    def report(self) -> dict:
        """What --json says about the run: nodes in the cluster, workers, units each worker did."""
        import ray

        return {"nodes": sum(node["Alive"] for node in ray.nodes()), "workers": len(self.actors),
                "worker_nodes": len({info["node"] for info in self.info}),
                "units_per_worker": {worker[:12]: n for worker, n in sorted(self.units.items())},
                "local_instance": self.started}


class RayExecutor:
    """Units on Ray workers, started when first needed (a command that needs none starts none);
    `with RayExecutor(...) as executor:` stops what it started."""

    local = False

    def __init__(self, address: str, model: str | None = None, quantize: str | None = None,
                 embedder: str | None = None, needs_model: bool = False):
        self.address, self.model_ref, self.quantize = address, model, quantize
        self.embedder_name, self.needs_model = embedder, needs_model
        self.started: Workers | None = None

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.started.close()

    def workers(self, units: int | None = None) -> Workers:
        if self.started is None:
            from yollava_cli.models.loading import resolve_model_ref

            model = resolve_model_ref(self.model_ref) if self.needs_model else self.model_ref
            self.started = Workers(self.address, model, self.quantize, self.embedder_name, self.needs_model, units)
        return self.started

    def model(self, units: int | None = None) -> dict:
        info = self.workers(units).info[0]
        return {"model": info["model"], "fingerprint": info["fingerprint"]}

    def embedder(self, name: str | None = None):
        from yollava_cli.scale.embedding import RayEmbedder

        if name is not None and self.started is None:
            self.embedder_name = name
        return RayEmbedder(self)

    def share(self, root: Path, files: list[Path]):
        """The files (inside `root`) packed once into Ray's object store: what a worker unpacks."""
        import ray

        from yollava_cli.scale.worker import pack_files

        packed = {}
        for path in files:
            try:
                packed[str(path.relative_to(root))] = path.read_bytes()
            except ValueError:
                raise UserError(f"{path}: --ray sends {root}'s files to the workers, and this one is outside it; "
                                f"move it inside") from None
            except OSError:
                continue  # unreadable here: the worker's copy lacks it, as a scan here would skip it
        return ray.put(pack_files(packed))

    def run(self, fn: Callable, units: list[tuple], on_result: Callable[[tuple, dict], None]) -> None:
        """Each unit on a free worker; what each reported there is reported here as it finishes."""
        if units:
            self.workers(len(units)).run(fn, units, on_result)

    def ordered(self, fn: Callable, calls: Iterable[tuple]) -> Iterator:
        return self.workers().ordered(fn, calls)

    def report(self) -> dict:
        return self.started.report() if self.started else {"workers": 0, "units_per_worker": {}}
