"""A new executor is one class (issue #36): a thread pool, written here and nowhere else, runs
eval's units (the same functions LocalExecutor runs) and gives LocalExecutor's results. A new
eval method is one module: one defined here runs in the same eval, beside the shipped ones."""

import queue
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import pytest
import torch
from conftest import shared_data
from safetensors.torch import load_file
from tiny import tiny_llava

from yollava_cli.evaluation.dataset import load_dataset
from yollava_cli.evaluation.methods import Method, register
from yollava_cli.evaluation.runs import run_eval
from yollava_cli.learning.executor import Env, Executor, LocalExecutor, call
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.models.cores import one_thread
from yollava_cli.models.vlm import VLM

FAST = TrainConfig(k=2, epochs=1, positive_repeats=1, attributes_per_epoch=2)


class ThreadExecutor:
    """Units on a pool of threads, each thread's unit on a model of its own."""

    local = True

    def __init__(self, make_env, threads: int = 2):
        self.envs: queue.Queue = queue.Queue()
        for _ in range(threads):
            self.envs.put(make_env())
        self.pool = ThreadPoolExecutor(threads)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown()

    def some_env(self) -> Env:
        return self.envs.queue[0]

    def model(self, units=None):
        return {"model": self.some_env().vlm.ref, "fingerprint": self.some_env().vlm.fingerprint}

    def embedder(self, name=None):
        return self.some_env().embedder

    def share(self, root, files):
        return root

    def work(self, fn, args):
        env = self.envs.get()
        try:
            return call(env, fn, args)
        finally:
            self.envs.put(env)

    def run(self, fn, units, on_result):
        futures = {self.pool.submit(self.work, fn, unit): unit for unit in units}
        for future in as_completed(futures):
            on_result(futures[future], future.result())

    def ordered(self, fn, calls):
        yield from self.pool.map(lambda args: self.work(fn, args), calls)

    def report(self):
        return None


class Brightest(Method):
    """A toy method: a photo's mean brightness as its score, cut at one half. Registered by the
    test alone (a module would carry @register), so that other tests see the shipped methods."""

    name, order, language = "brightest", 95, False

    def scores(self, run, subject, photos):
        return [float(np.asarray(run.photo(p)[0].convert("L"), np.float32).mean() / 255) for p in photos]


@pytest.mark.slow
def test_a_thread_pool_executor_gives_the_local_executors_results(tmp_path, monkeypatch):
    import yollava_cli.evaluation.methods as methods
    from yollava_cli.learning.embeddings import load_embedder

    methods.registered()  # the shipped methods imported into the real registry, not only the test's copy
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    register(Brightest)

    embedder = load_embedder("efficientnet-lite0")
    data = load_dataset(shared_data() / "concepts", ["dog", "cat"])
    methods = ["yollava", "head", "fused", "brightest"]
    threads = ThreadExecutor(lambda: Env(vlm=VLM(*tiny_llava(), "tiny"), loaded_embedder=embedder))
    assert isinstance(threads, Executor) and isinstance(LocalExecutor(), Executor)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one torch thread: a sum adds up in one order, whichever thread runs it
        local = run_eval(LocalExecutor(vlm=VLM(*tiny_llava(), "tiny"), loaded_embedder=embedder), data, tmp_path / "local",
                         methods, [], FAST)
        with threads:
            pooled = run_eval(threads, data, tmp_path / "threads", methods, [], FAST)
    finally:
        torch.set_num_threads(before)
    # Equal, up to the last digits of a cut: a unit's image features depend on which unit ran
    # before it on the same model (the feature cache keys a photo by its hash, and the pool's copy
    # of a photo decodes a little differently from the stored one), and two threads are two models.
    for part in ("subjects", "methods"):
        mine, theirs = leaves(pooled.to_json()[part]), leaves(local.to_json()[part])
        assert mine.keys() == theirs.keys()
        assert [k for k in mine if not close(mine[k], theirs[k])] == []
    assert set(local.methods) == set(methods) and local.methods["brightest"].recognition


def leaves(tree, prefix: str = "") -> dict:
    """A nested result as {"a.b[0]": leaf}."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in leaves(value, f"{prefix}.{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in leaves(value, f"{prefix}[{i}]").items()}
    return {prefix: tree}


def close(a, b) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return abs(a - b) <= 1e-3 if numbers else a == b


class FreshExecutor(LocalExecutor):
    """Each unit on a model loaded for it alone: what a subject's figures are when nothing ran before."""

    def run(self, fn, units, on_result):
        for unit in units:
            on_result(unit, call(Env(self.env.model_ref, loaded_embedder=self.env.embedder), fn, unit))


@pytest.mark.slow
def test_a_subjects_figures_do_not_depend_on_the_subjects_run_before_it(tmp_path, home):
    """Eval's units shared one model, and a subject trained after another saw that one's tokens
    left in the tokenizer: the same eval on 2 Ray workers and here gave backpack's tokens cut 0.817
    and 0.774. A unit now starts from the model as loaded (Env.bare_vlm)."""
    from yollava_cli.learning.embeddings import load_embedder

    model, processor = tiny_llava()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    embedder = load_embedder("efficientnet-lite0")
    data = load_dataset(shared_data() / "concepts", ["dog", "cat"])
    (tmp_path / "pool").mkdir()
    for photo in sorted((shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))[::100]:
        (tmp_path / "pool" / photo.name).write_bytes(photo.read_bytes())
    with one_thread():  # sums add up in one order
        runs = [run_eval(executor(str(tmp_path / "model"), loaded_embedder=embedder), data, tmp_path / name,
                         ["yollava", "head"], [tmp_path / "pool"], FAST)
                for name, executor in (("shared", LocalExecutor), ("fresh", FreshExecutor))]
    shared, fresh = (run.to_json() for run in runs)
    assert shared["subjects"] == fresh["subjects"] and shared["methods"] == fresh["methods"]
    for subject in ("dog", "cat"):  # the trained tokens themselves, which the rounded figures may hide
        [a], [b] = (list((tmp_path / name).glob(f"*.checkpoints/{subject}.safetensors")) for name in ("shared", "fresh"))
        a, b = load_file(a), load_file(b)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
