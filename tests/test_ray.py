"""--ray against a real local Ray instance (2 CPUs, 127.0.0.1 only, token authentication on): the
same vectors, eval metrics and checkpoints as the serial run; a worker killed mid-unit; an
interrupted driver's rerun reusing finished units; an unreachable address as a one-line error."""

import importlib.util
import json
import os
import secrets
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import invoke, run_cli, shared_data

from tiny import tiny_llava

from yollava_cli.evaluation.dataset import load_dataset
from yollava_cli.learning.events import SubjectsEvaluated, SubjectStarted
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.reporting import reporting

if importlib.util.find_spec("ray") is None:
    pytest.skip(reason="Ray is not installed: pip install 'yollava[ray]' (bash scripts/install.sh --ray)", allow_module_level=True)

FAST = TrainConfig(k=2, epochs=1, positive_repeats=1, attributes_per_epoch=2)
EMBEDDER = "efficientnet-lite0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local instance for the module (~7 s to start), bound to 127.0.0.1, with a token of its own
    (nothing written to ~/.ray); its workers keep their caches in a data dir of their own."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "YOLLAVA_HOME": str(tmp_path_factory.mktemp("worker-home")), "HF_HUB_OFFLINE": "1"}
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import ray  # after the environment is set: Ray reads its authentication mode when first imported

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def one_thread_like_the_workers():
    """Ray runs each 1-CPU worker on one torch thread; the serial runs here do too, so their results
    can be compared bit for bit (on two threads sums are ordered otherwise: vectors within 2e-7)."""
    from yollava_cli.models.cores import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny LLaVA as a model folder: workers load it by path, as they would a real one."""
    folder = tmp_path_factory.mktemp("tiny-model")
    model, processor = tiny_llava()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def embeddings(home: Path) -> dict:
    with sqlite3.connect(home / "registry.db") as db:
        return {row[0]: row[1] for row in db.execute("SELECT sha256, vector FROM embeddings")}


def serial_run(*args, home: Path, monkeypatch) -> subprocess.CompletedProcess:
    """The serial run to compare bit for bit: in a fresh process on one torch thread, as each Ray
    worker is. Run in this process after the rest of the suite, its last bits differed from the
    workers' (CI: a threshold 0.48685 against 0.4869), where each test alone passed."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return run_cli(*args, home=home, timeout=900)


def test_pool_add_on_ray_stores_the_serial_runs_vectors(cluster, tmp_path, monkeypatch):
    """70 photos are 3 batches over 2 workers; an unreadable file is skipped the same way."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted((shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))[:70]:
        (pool / photo.name).write_bytes(photo.read_bytes())
    (pool / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    serial = serial_run("pool", "add", "p", pool, "--embedder", EMBEDDER, "--json", home=tmp_path / "serial",
                        monkeypatch=monkeypatch)
    on_ray = invoke("pool", "add", "p", pool, "--embedder", EMBEDDER, "--ray", "auto", "--json", home=tmp_path / "ray")
    assert serial.returncode == 0 and on_ray.returncode == 0, on_ray.stderr
    result, report = json.loads(serial.stdout), json.loads(on_ray.stdout)
    assert {k: v for k, v in report.items() if k != "ray"} == result
    assert result["photos"] == 71 and result["embedded"] == 70 and result["unreadable"] == 1
    assert report["ray"]["workers"] == 2 and sorted(report["ray"]["units_per_worker"].values()) == [1, 2]
    assert report["ray"]["nodes"] == 1 and not report["ray"]["local_instance"]  # joined the running one
    assert embeddings(tmp_path / "ray") == embeddings(tmp_path / "serial")  # byte for byte


def test_an_unreachable_address_is_a_one_line_error(tmp_path):
    """In a process of its own (this one is connected to the module's instance)."""
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.jpg").write_bytes((shared_data() / "concepts" / "dog" / "train" / "00.jpg").read_bytes())
    refused = run_cli("pool", "add", "p", pool, "--ray", "127.0.0.1:9", home=tmp_path / "home")
    assert refused.returncode == 1 and refused.stderr.startswith("error: cannot reach Ray at 127.0.0.1:9")
    assert len(refused.stderr.strip().splitlines()) == 1
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.json").write_text(json.dumps({"ray": "127.0.0.1:9"}))  # the config key asks too
    assert "cannot reach Ray at 127.0.0.1:9" in run_cli("pool", "add", "p", pool, home=tmp_path / "home").stderr


def test_find_on_ray_scores_as_the_serial_run(cluster, tiny_model, tmp_path, monkeypatch):
    """A concept trained here; `find --by head` over 40 photos not embedded yet, from two copies
    of the same data dir: the same scores, the embeddings on the workers."""
    import shutil

    photos = sorted((shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))
    pool, search = tmp_path / "pool", tmp_path / "search"
    pool.mkdir()
    search.mkdir()
    for photo in photos[:25]:
        (pool / photo.name).write_bytes(photo.read_bytes())
    for photo in photos[500:540]:
        (search / photo.name).write_bytes(photo.read_bytes())
    home = tmp_path / "serial"
    for args in (["add", "bo", shared_data() / "concepts" / "dog" / "train", "--kind", "pet", "--no-train"],
                 ["pool", "add", "blue", pool, "--embedder", EMBEDDER],
                 ["mine", "bo", "--embedder", EMBEDDER],
                 ["train", "bo", "--model", tiny_model, "--epochs", "1", "--k", "2"]):
        result = invoke(*args, home=home)
        assert result.returncode == 0, result.stderr
    shutil.copytree(home, tmp_path / "ray")
    args = ["find", "bo", search, "--by", "head", "--threshold", "0", "--json"]
    serial = serial_run(*args, home=home, monkeypatch=monkeypatch)
    on_ray = invoke(*args, "--ray", "auto", home=tmp_path / "ray")
    assert serial.returncode == 0 and on_ray.returncode == 0, on_ray.stderr
    found, report = json.loads(serial.stdout), json.loads(on_ray.stdout)
    assert report.pop("ray")["units_per_worker"] and report == found and len(found["results"]) == 40
    assert embeddings(tmp_path / "ray") == embeddings(home)


def test_train_on_ray_records_the_serial_runs_checkpoints(cluster, tiny_model, tmp_path, monkeypatch):
    """Two concepts, one per worker, from two copies of the same data dir: the same tokens, head,
    thresholds and validation, recorded in the driver's registry (a run, a checkpoint, answers)."""
    import shutil

    from safetensors.numpy import load_file


    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted((shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))[::40]:
        (pool / photo.name).write_bytes(photo.read_bytes())
    home = tmp_path / "serial"
    for args in (["add", "dog", shared_data() / "concepts" / "dog" / "train", "--kind", "pet", "--no-train"],
                 ["add", "cat", shared_data() / "concepts" / "cat" / "train", "--kind", "pet", "--no-train"],
                 ["pool", "add", "blue", pool, "--embedder", EMBEDDER],
                 ["mine", "dog", "--embedder", EMBEDDER], ["mine", "cat", "--embedder", EMBEDDER]):
        assert invoke(*args, home=home).returncode == 0
    shutil.copytree(home, tmp_path / "ray")
    args = ["train", "dog", "cat", "--model", tiny_model, "--epochs", "2", "--k", "2", "--json"]
    serial = serial_run(*args, home=home, monkeypatch=monkeypatch)
    on_ray = invoke(*args, "--ray", "auto", home=tmp_path / "ray")
    assert serial.returncode == 0 and on_ray.returncode == 0, on_ray.stderr
    trained, report = json.loads(serial.stdout)["concepts"], json.loads(on_ray.stdout)
    assert sorted(report["ray"]["units_per_worker"].values()) == [1, 1]
    for here, there in zip(trained, report["concepts"]):
        for run in (here, there):
            for epoch in run.pop("history"):
                epoch.pop("seconds")
            run.pop("checkpoint")
        assert here == there
        assert here["thresholds"].keys() == {"tokens", "head", "fused"}

    def stored(home: Path, name: str) -> tuple:
        with sqlite3.connect(home / "registry.db") as db:
            file, metrics = db.execute("SELECT k.file, k.metrics FROM checkpoints k JOIN concepts c ON c.id = k.concept_id "
                                       "WHERE c.name = ? AND k.is_current", [name]).fetchone()
            status = db.execute("SELECT status FROM concepts WHERE name = ?", [name]).fetchone()[0]
            answers = db.execute("SELECT count(*) FROM answers").fetchone()[0]
        tensors = load_file(home / file)
        return status, json.loads(metrics), {key: value.tolist() for key, value in tensors.items()}, answers

    for name in ("dog", "cat"):
        assert stored(tmp_path / "ray", name) == stored(home, name)


def test_eval_on_ray_reports_each_subjects_progress(cluster, tiny_model, tmp_path):
    """`eval --ray` lost its progress when Ray became an executor: the workers' events stayed on
    the workers. They are reported here as each subject finishes: the serial run's lines on stderr
    (a subject's line, its epochs', its methods'), and stdout is still exactly the JSON document."""
    on_ray = invoke("eval", shared_data() / "concepts", "--subjects", "dog,cat", "--methods", "embedding", "--epochs", "1",
                    "--model", tiny_model, "--ray", "auto", "--json", home=tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr
    assert json.loads(on_ray.stdout)["ray"]["workers"] == 2
    # subjects finish in either order on two workers; an epoch's figures aside
    shown = sorted(line.split(":")[0] for line in on_ray.stderr.splitlines() if line.startswith(("<", "epoch", "  scoring")))
    assert shown == sorted(["<dog> (1/2, fold 1/1)", "<cat> (2/2, fold 1/1)", "epoch  1", "epoch  1",
                            "  scoring with embedding", "  scoring with embedding"]), on_ray.stderr


@pytest.mark.slow
def test_eval_on_ray_gives_the_serial_runs_metrics_through_a_killed_worker_and_an_interrupted_driver(cluster, tiny_model, tmp_path):
    """Three subjects on two workers. The first run's driver stops after one subject (as if killed:
    what it wrote is whole); the rerun does only the other two, and one of their workers is killed
    mid-unit: Ray restarts it and reruns that subject. The metrics equal the serial run's."""
    from yollava_cli.evaluation.runs import run_eval
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.learning.executor import LocalExecutor
    from yollava_cli.models.loading import load_vlm
    from yollava_cli.scale.driver import RayExecutor

    data = load_dataset(shared_data() / "concepts", ["dog", "cat", "backpack"])
    methods = ["embedding", "head", "fused"]  # fused reads the trained tokens; language metrics would only add minutes
    serial = run_eval(LocalExecutor(vlm=load_vlm(str(tiny_model)), loaded_embedder=load_embedder(EMBEDDER)), data,
                      tmp_path / "serial", methods, [], FAST)

    def stop_after_one(event):
        if event == SubjectsEvaluated(1, 4):
            raise KeyboardInterrupt

    killed, heard = [], []

    def kill_a_busy_worker(event):
        heard.append(event)
        if event == SubjectsEvaluated(1, 3) and not killed:
            killed.append(busy_worker_pid("Worker.run"))
            if killed[0] is not None:
                os.kill(killed[0], signal.SIGKILL)

    with RayExecutor("auto", str(tiny_model), None, EMBEDDER, needs_model=True) as executor:
        with pytest.raises(KeyboardInterrupt), reporting(stop_after_one):
            run_eval(executor, data, tmp_path / "ray", methods, [], FAST)
    results = next((tmp_path / "ray").glob("results-*.fold0.json"))
    first = json.loads(results.read_text())
    assert len(first) == 1  # one subject, whole: either of the two that started first
    with RayExecutor("auto", str(tiny_model), None, EMBEDDER, needs_model=True) as executor:
        with reporting(kill_a_busy_worker):
            result = run_eval(executor, data, tmp_path / "ray", methods, [], FAST)
        report = executor.report()
    assert killed and killed[0] is not None
    # the workers' events reached this reporter, each subject's before the count that finished it
    assert [e.done for e in heard if isinstance(e, SubjectsEvaluated)] == [0, 1, 2, 3]
    assert sorted(e.subject for e in heard if isinstance(e, SubjectStarted)) == sorted({"dog", "cat", "backpack"} - set(first))
    assert sum(report["units_per_worker"].values()) == 3  # two subjects (one of them run twice counts once) and the forgetting check
    for key in ("subjects", "methods", "forgetting", "folds", "negatives", "protocol", "model"):
        assert getattr(result, key) == getattr(serial, key), key
    checkpoints = sorted(p.name for p in results.with_suffix(".checkpoints").iterdir())
    assert checkpoints == ["backpack.safetensors", "cat.safetensors", "dog.safetensors"]


def busy_worker_pid(title: str) -> int | None:
    """A worker of this test's Ray instance that is running `title` now (Ray names the process
    after the task it runs), found among this process's descendants only."""
    import time

    mine = os.getpid()
    for _ in range(600):
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(f"ray::{title}") and descends_from(int(proc.name), mine):
                return int(proc.name)
        time.sleep(0.05)
    return None


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False
