"""--ray benchmark: a real local Ray cluster of two nodes (ray.cluster_utils.Cluster, one CPU each,
127.0.0.1 only, token authentication on) against the serial run, in the same benchmark, on
embedding the 1000-photo pool and on `eval` of 4 subjects on the default model.

Run:  python bench/bench_ray.py [--repeats 3] [--eval-repeats 1] [--epochs 3]   (writes bench/results/ray.json)
      python bench/bench_ray.py --tasks driver   (only the driver's own per-photo costs, merged in)

Each mode runs in a process of its own with a fresh data dir (no cached vectors, features or
results) that links the default model's converted weights: serial on one thread
(OMP_NUM_THREADS=1), serial on both cores (2), and Ray (two 1-CPU workers, each one thread).
Times exclude loading the model or embedder (each worker loads it once, reported as start-up);
Ray's own start-up (the two nodes up and joined) is reported apart. Times are medians of
--repeats runs; ratios compare modes measured in the same benchmark.
"""

import argparse
import atexit
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
POOL = DATA / "pool" / "imagenet-sample"
SUBJECTS = ["dog", "dog6", "cat", "backpack"]
METHODS = ["embedding", "head", "fused"]
EMBEDDER = "efficientnet-lite0"
MODES = {"serial-1-thread": {"OMP_NUM_THREADS": "1"}, "serial-2-threads": {"OMP_NUM_THREADS": "2"}, "ray-2-nodes": {}}


SCRATCH = Path(tempfile.mkdtemp(prefix="bench-ray-"))  # every data dir of this process, removed at its exit
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def fresh_home(models: Path | None = None) -> Path:
    """A folder with nothing cached; as a data dir, with the model's converted weights linked."""
    home = Path(tempfile.mkdtemp(dir=SCRATCH))
    if models:
        (home / "models").mkdir()
        for item in models.iterdir():
            if item.name != "features":
                (home / "models" / item.name).symlink_to(item)
    return home


def serial(task: str, repeats: int, epochs: int) -> dict:
    from yollava_cli.learning.embeddings import load_embedder

    embedder = load_embedder(EMBEDDER)
    if task == "embed":
        return timed(lambda home: embed(home, embedder), repeats)
    from yollava_cli.models.loading import load_vlm

    vlm = load_vlm()

    def run(home):
        from yollava_cli.evaluation.dataset import load_dataset
        from yollava_cli.evaluation.runs import run_eval
        from yollava_cli.learning.executor import LocalExecutor
        from yollava_cli.learning.train_config import TrainConfig

        return run_eval(LocalExecutor(vlm=vlm, loaded_embedder=embedder), load_dataset(DATA / "concepts", SUBJECTS),
                        home / "eval", METHODS, [], TrainConfig(epochs=epochs)).to_json()
    return timed(run, repeats)


def on_ray(task: str, repeats: int, epochs: int) -> dict:
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    start = time.perf_counter()
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    cluster.wait_for_nodes()
    ray_start = time.perf_counter() - start
    from yollava_cli.scale.driver import RayExecutor

    start = time.perf_counter()
    with RayExecutor("auto", None, None, EMBEDDER, needs_model=task == "eval") as executor:
        executor.workers()
        workers_start = time.perf_counter() - start
        if task == "embed":
            embedder = executor.embedder()
            result = timed(lambda home: embed(home, embedder), repeats)
        else:
            from yollava_cli.evaluation.dataset import load_dataset
            from yollava_cli.evaluation.runs import run_eval
            from yollava_cli.learning.train_config import TrainConfig

            result = timed(lambda home: run_eval(executor, load_dataset(DATA / "concepts", SUBJECTS), home / "eval", METHODS, [],
                                                 TrainConfig(epochs=epochs)).to_json(), repeats)
        result["ray"] = executor.report()
    ray.shutdown()
    cluster.shutdown()
    return {**result, "ray_start_s": round(ray_start, 2), "workers_start_s": round(workers_start, 2)}


def embed(home: Path, embedder) -> dict:
    """The pool embedded into a fresh registry; its vectors, to compare across modes."""
    from yollava_cli.learning.mining import add_pool
    from yollava_cli.store.registry import Registry

    registry = Registry(home)
    result = add_pool(registry, "imagenet", POOL, embedder)
    vectors = {r["sha256"]: r["vector"].hex() for r in registry.db.query("SELECT sha256, vector FROM embeddings")}
    return {"photos": result["photos"], "embedded": result["embedded"], "vectors": vectors}


def timed(run, repeats: int) -> dict:
    times, output = [], None
    for _ in range(repeats):
        home = fresh_home()
        start = time.perf_counter()
        output = run(home)
        times.append(time.perf_counter() - start)
    return {"seconds": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2), "output": output}


def driver_costs(repeats: int) -> dict:
    """What the driver does per photo whatever the number of workers, in this process: scan the
    pool (stat and hash each file), read the bytes it sends, store the vectors that come back
    (1280 floats, 32 a transaction). Its inverse is the throughput no number of workers passes."""
    import numpy as np

    from yollava_cli.learning.mining import scan_pool
    from yollava_cli.store.photos import expand_photo_paths, photo_bytes
    from yollava_cli.store.registry import Registry

    paths = expand_photo_paths([POOL])
    vectors = {f"{i:064x}": np.random.default_rng(i).random(1280, dtype=np.float32).astype("<f4").tobytes() for i in range(len(paths))}
    costs = {"scan_s": [], "read_s": [], "store_s": []}
    for _ in range(repeats):
        registry = Registry(fresh_home())
        registry.create_pool("p", str(POOL))
        start = time.perf_counter()
        scan_pool(registry, registry.pool("p"))
        costs["scan_s"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for path in paths:
            photo_bytes(path)
        costs["read_s"].append(time.perf_counter() - start)
        start = time.perf_counter()
        items = list(vectors.items())
        for first in range(0, len(items), 32):
            registry.store_embeddings(EMBEDDER, dict(items[first : first + 32]))
        costs["store_s"].append(time.perf_counter() - start)
    per_photo = {key.replace("_s", "_ms_per_photo"): round(1000 * statistics.median(v) / len(paths), 3) for key, v in costs.items()}
    total = sum(per_photo.values())
    return {**per_photo, "total_ms_per_photo": round(total, 3), "photos_per_s_limit": round(1000 / total)}


def comparable(output: dict, task: str):
    if task == "embed":
        return output["vectors"]
    return {key: output[key] for key in ("subjects", "methods", "forgetting", "model")}


def max_vector_difference(a: dict, b: dict) -> float:
    import numpy as np

    return max(float(np.abs(np.frombuffer(bytes.fromhex(a[k]), "<f4") - np.frombuffer(bytes.fromhex(b[k]), "<f4")).max())
               for k in a) if a.keys() == b.keys() else float("inf")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3, help="embedding runs per mode")
    parser.add_argument("--eval-repeats", type=int, default=1, help="eval runs per mode (minutes each)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per eval subject")
    parser.add_argument("--tasks", default="embed,eval")
    parser.add_argument("--mode")  # internal: one mode's run, in a process of its own
    parser.add_argument("--task")
    args = parser.parse_args()
    if args.mode:
        run = on_ray if args.mode.startswith("ray") else serial
        repeats = args.repeats if args.task == "embed" else args.eval_repeats
        print(json.dumps(run(args.task, repeats, args.epochs)))
        return
    from measure import where

    out = REPO / "bench" / "results" / "ray.json"
    if args.tasks == "driver":
        results = json.loads(out.read_text()) if out.exists() else {}
        results["driver"] = driver_costs(args.repeats)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(results["driver"], indent=1))
        return
    os.environ["YOLLAVA_HOME"] = cache = str(Path(tempfile.gettempdir()) / "yollava-bench-ray-cache")
    from yollava_cli.models.loading import load_vlm

    load_vlm()  # converts the default model's weights once, into the cache every mode's data dir links
    models = Path(cache) / "models"
    results = {"machine": where(), "load_average_before": Path("/proc/loadavg").read_text().split()[:3],
               "cluster": "ray.cluster_utils.Cluster: 2 nodes x 1 CPU on 127.0.0.1, one 1-thread worker each",
               "repeats": {"embed": args.repeats, "eval": args.eval_repeats},
               "embed": {"photos": 1000, "batch": 32}, "eval": {"subjects": SUBJECTS, "methods": METHODS, "epochs": args.epochs}}
    results["driver"] = driver_costs(args.repeats)
    for task in args.tasks.split(","):
        outputs = {}
        for mode, env in MODES.items():
            command = [sys.executable, __file__, "--mode", mode, "--task", task, "--repeats", str(args.repeats),
                       "--eval-repeats", str(args.eval_repeats), "--epochs", str(args.epochs)]
            home = {"YOLLAVA_HOME": str(fresh_home(models))}  # no image features cached from another mode
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env, **home}, check=False)
            if done.returncode:
                raise SystemExit(f"{mode} {task} failed:\n{done.stderr[-3000:]}")
            outputs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(task, mode, outputs[mode]["median_s"], file=sys.stderr)
        entry = results[task]
        for mode, output in outputs.items():
            entry[mode] = {k: v for k, v in output.items() if k != "output"}
        ray_s = outputs["ray-2-nodes"]["median_s"]
        entry["speedup_vs_serial_1_thread"] = round(outputs["serial-1-thread"]["median_s"] / ray_s, 2)
        entry["speedup_vs_serial_2_threads"] = round(outputs["serial-2-threads"]["median_s"] / ray_s, 2)
        with_start = ray_s + outputs["ray-2-nodes"]["ray_start_s"] + outputs["ray-2-nodes"]["workers_start_s"]
        entry["speedup_vs_serial_1_thread_with_ray_start"] = round(outputs["serial-1-thread"]["median_s"] / with_start, 2)
        same = {mode: comparable(outputs[mode]["output"], task) == comparable(outputs["ray-2-nodes"]["output"], task)
                for mode in ("serial-1-thread", "serial-2-threads")}
        entry["identical_to_ray"] = same
        if task == "embed":
            entry["max_abs_vector_difference_vs_ray"] = {
                mode: max_vector_difference(outputs[mode]["output"]["vectors"], outputs["ray-2-nodes"]["output"]["vectors"])
                for mode in ("serial-1-thread", "serial-2-threads")}
        else:
            entry["weighted_recognition"] = {m: outputs["ray-2-nodes"]["output"]["methods"][m]["recognition"]["weighted"]
                                             for m in METHODS}
    results["load_average_after"] = Path("/proc/loadavg").read_text().split()[:3]
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
