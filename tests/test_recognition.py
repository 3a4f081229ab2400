"""The concept head and its fusion with the tokens, on vectors built so the answer is known."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from yollava_cli.learning.recognition import attach, fit_fusion, load, train_head


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def world(seed=0, dim=64):
    """The concept's photos around one direction; a look-alike (another corgi) a little off it; the
    rest of the world elsewhere. Test photos are new draws of each."""
    rng = np.random.default_rng(seed)
    concept, other = unit(rng.normal(size=dim)), unit(rng.normal(size=dim))
    lookalike = unit(concept + 0.4 * other)

    def around(center, n, spread=0.35):
        return unit(center + spread * rng.normal(size=(n, dim)) / np.sqrt(dim))

    random = unit(rng.normal(size=(60, dim)))
    return {"positives": around(concept, 4), "negatives": np.concatenate([around(lookalike, 4), random]),
            "test_positives": around(concept, 20), "test_lookalikes": around(lookalike, 20)}


def test_the_head_tells_the_concept_from_a_lookalike_where_plain_cosine_cannot():
    from yollava_cli.evaluation.metrics import auc

    head_perfect = cosine_perfect = 0
    for seed in range(10):
        w = world(seed)
        head = train_head("test", w["positives"], [str(i) for i in range(4)], w["negatives"])
        pos, look = head.head_probabilities(w["test_positives"]), head.head_probabilities(w["test_lookalikes"])
        head_perfect += auc(pos, look) == 1.0 and min(pos) > 0.5
        cosine = [(w[k] @ w["positives"].T).max(1).tolist() for k in ("test_positives", "test_lookalikes")]
        cosine_perfect += auc(*cosine) == 1.0
        assert head.weights[0] > 0 > head.weights[1]  # close to the concept: yes; close to a known other: no
    assert head_perfect >= 9 and cosine_perfect <= 6, (head_perfect, cosine_perfect)


def test_fusion_leans_on_the_signal_that_separates_validation_data():
    w = world(1)
    head = train_head("test", w["positives"], ["a", "b", "c", "d"], w["negatives"])
    vectors = np.concatenate([w["test_positives"][:6], w["test_lookalikes"][:6]])
    labels = [1] * 6 + [0] * 6
    noise = [0.5] * 12  # tokens that know nothing
    fit_fusion(head, head.head_logits(vectors), {"tokens": noise}, labels)
    assert abs(head.fusion["tokens"]) < abs(head.fusion["head"])
    fused = head.fused_probabilities(vectors, {"tokens": noise})
    assert min(fused[:6]) > max(fused[6:])
    knowing = [0.99] * 6 + [0.01] * 6  # tokens that know everything pull the other way too
    blind = train_head("test", w["positives"], ["a", "b", "c", "d"], w["negatives"][4:])  # never saw the look-alike
    fit_fusion(blind, blind.head_logits(vectors), {"tokens": knowing}, labels)
    assert blind.fusion["tokens"] > 0.5
    fused = blind.fused_probabilities(vectors, {"tokens": knowing})
    assert min(fused[:6]) > max(fused[6:])


def test_one_held_out_photo_cannot_hand_the_decision_to_the_tokens():
    """Training holds out one photo of the concept. If the head misses it and the tokens happen
    to say yes, the fusion must stay with the head on everything else (it failed so on the
    shared subjects with a weak pull toward zero weights instead of toward the head)."""
    w = world(2)
    head = train_head("test", w["positives"], ["a", "b", "c", "d"], w["negatives"])
    rng = np.random.default_rng(0)
    missed = unit(rng.normal(size=(1, 64)))  # a photo of the concept that looks like nothing the head knows
    vectors = np.concatenate([missed, w["negatives"][:20]])
    tokens = [0.999] + rng.choice([0.999, 0.001], size=20).tolist()  # tokens: right on it, a coin elsewhere
    fit_fusion(head, head.head_logits(vectors), {"tokens": tokens}, [1] + [0] * 20)
    test = np.concatenate([w["test_positives"], w["test_lookalikes"]])
    coin = rng.choice([0.999, 0.001], size=len(test)).tolist()
    fused = np.array(head.fused_probabilities(test, {"tokens": coin})) >= 0.5
    alone = np.array(head.head_probabilities(test)) >= 0.5
    assert (fused == alone).mean() >= 0.95, head.fusion


def test_the_recognizer_rides_in_the_checkpoint_file(tmp_path):
    import json

    path = tmp_path / "run1.safetensors"
    rows = {"input_rows": torch.zeros(3, 8), "output_row": torch.zeros(8)}
    save_file(rows, str(path), metadata={"yollava": json.dumps({"name": "bo", "k": 2, "base_model": "tiny", "base_fingerprint": "TinyModel:64:0123abcd"})})
    assert load(path) is None  # a checkpoint from before heads
    w = world(2)
    head = train_head("efficientnet-lite0", w["positives"], list("abcd"), w["negatives"])
    head.fusion = {"head": 1.0, "tokens": 0.7, "bias": -0.2}
    attach(path, head)
    again = load(path)
    assert again.embedder == "efficientnet-lite0" and again.fusion == head.fusion
    assert again.head_probabilities(w["test_positives"]) == pytest.approx(head.head_probabilities(w["test_positives"]), abs=1e-5)
    from yollava_cli.models.concept_tokens import read_concept_file

    tensors, meta = read_concept_file(path)  # the token rows are untouched
    assert torch.equal(tensors["input_rows"], rows["input_rows"]) and meta["name"] == "bo"


def test_a_head_of_another_width_than_its_embedder_is_one_line():
    from yollava_cli.errors import UserError

    w = world(2)
    head = train_head("efficientnet-lite0", w["positives"][:, :7], list("abcd"), w["negatives"][:, :7])
    with pytest.raises(UserError, match="7-wide embeddings, but efficientnet-lite0 gives"):
        head.fused_probabilities(w["test_positives"], {"tokens": [0.5] * len(w["test_positives"])})
