"""The driver's side of a Ray run: workers started on the cluster, units handed to whichever is
free, their results back in this process (which alone writes them), and the `ray` object that
--json reports."""

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator

from yollava_cli.errors import UserError
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
        from yollava_cli.evaluation.runner import code_version

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

    def submit(self, method: str, *args):
        """The call on the least busy worker (Ray retries it on a restarted worker if that one dies)."""
        index = min(range(len(self.actors)), key=lambda i: self.busy[i])
        ref = getattr(self.actors[index], method).remote(*args)
        self.busy[index] += 1
        self.pending[ref] = index
        return ref

    def result(self, ref):
        self.busy[self.pending.pop(ref)] -= 1
        value = self.get(ref)
        self.units[value["worker"]] += 1
        return value

    def run(self, method: str, units: list[tuple], on_result: Callable[[tuple, dict], None]) -> None:
        """Each unit on a free worker, one at a time per worker; `on_result(unit, result)` here as
        each finishes, so the driver writes it before the next one comes back."""
        import ray

        queue, waiting = deque(units), {}
        while queue or waiting:
            while queue and len(waiting) < len(self.actors):
                unit = queue.popleft()
                waiting[self.submit(method, *unit)] = unit
            [ready], _ = ray.wait(list(waiting), num_returns=1)
            on_result(waiting.pop(ready), self.result(ready))

    def ordered(self, method: str, calls: Iterable[tuple], in_flight: int = 2) -> Iterator[dict]:
        """Results of many short calls in order, with `in_flight` per worker queued so that the
        next call's bytes travel while a worker computes."""
        window = deque()
        for args in calls:
            window.append(self.submit(method, *args))
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
