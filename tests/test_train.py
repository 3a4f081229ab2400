"""Training on a tiny random LLaVA: what may change, the data mix, resume, and base-model refusal."""

from dataclasses import replace

import pytest
import torch
from conftest import with_negatives
from PIL import Image
from tiny import tiny_llava

from yollava_cli.errors import UserError
from yollava_cli.learning.events import Step
from yollava_cli.learning.objective import class_weights, decision_targets, step_losses
from yollava_cli.learning.synthesis import (
    SUBJECT_QUESTION,
    TrainingData,
    build_training_data,
    inspect_training_data,
    subject_word,
    templates,
    worth_learning,
)
from yollava_cli.learning.training import (
    TrainConfig,
    calibrate,
    epoch_examples,
    recognition_metrics,
    split_data,
    train_concept,
)
from yollava_cli.models.decoding import NO_WORDS, YES_WORDS
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import reporting
from yollava_cli.store.concepts import add_concept, describe_concept
from yollava_cli.store.records import ConceptPhoto
from yollava_cli.store.registry import Registry

FAST = TrainConfig(k=4, epochs=3, batch_size=8, positive_repeats=1, attributes_per_epoch=4)


@pytest.fixture
def registry(tmp_path):
    """A concept `bo` (3 reddish photos) with 12 negatives (bluish), in a fresh registry."""
    registry = Registry(tmp_path / "home")
    photos = tmp_path / "bo"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 40), (200 + i * 20, 40, 30)).save(photos / f"{i}.png")
    add_concept(registry, "bo", [photos], kind="pet")
    with_negatives(registry, "bo", tmp_path / "negatives")
    return registry


def tiny_vlm(seed=0):
    return VLM(*tiny_llava(seed=seed), f"tiny-{seed}")


def test_the_data_uses_the_papers_templates_and_the_stated_mix(registry):
    vlm = tiny_vlm()
    data = build_training_data(registry, vlm, registry.concept("bo"))
    table = templates()["recognition"]
    assert len(table["positive"]) == 30 and len(table["negative"]) == 30
    assert table["positive"][0] == {"question": "Is {sks} in this photo?", "answer": "Yes, {sks} is in this photo."}
    assert len(data.positives) == 3 and len(data.negatives) == 12
    assert 10 <= len(data.attributes) <= 30  # 10 questions x 3 photos, those saying nothing or said before left out
    assert all("<bo>" in q and "this subject" not in q.lower() for q, _ in data.attributes)
    split = split_data(data, FAST)
    assert len(split.val_negatives) == 4 and len(split.negatives) == 8  # 2 hard + 2 easy held out
    assert not set(split.val_negatives) & {sha for sha, _ in split.negatives}
    assert all("-crop" in key for key in split.val_positives)  # 3 photos: too few to hold one out
    config = TrainConfig(positive_repeats=2, negative_ratio=2.0, attributes_per_epoch=12)
    examples = epoch_examples("bo", split, 0, config)
    labels = [e.label for e in examples]
    assert labels.count("positive") == 12  # 3 photos x (original + mirror) x 2 repeats
    assert labels.count("negative") == 8  # all 8 training negatives (fewer than 2 x 12)
    assert labels.count("attribute") == 12
    assert all(e.image is None for e in examples if e.label == "attribute")
    assert sum(e.image.endswith("-flip") for e in examples if e.label == "positive") == 6
    positives = {(t["question"].format(sks="<bo>"), t["answer"].format(sks="<bo>")) for t in table["positive"]}
    assert all((e.question, e.answer) in positives for e in examples if e.label == "positive")
    assert [e.question for e in epoch_examples("bo", split, 0, config)] == [e.question for e in examples]
    assert [e.question for e in epoch_examples("bo", split, 1, config)] != [e.question for e in examples]


def test_the_identifier_starts_at_the_base_models_word_for_the_subject(registry):
    vlm = tiny_vlm()
    photos = registry.concept_photos(registry.concept("bo").id)
    for photo, answer in zip(photos, ["A dog.", "Dog", "a cat!"]):
        registry.store_answer(photo.sha256, vlm.fingerprint, SUBJECT_QUESTION, answer)
    assert subject_word(registry, vlm, photos) == "dog"  # articles and case dropped, most frequent wins
    vlm.tokens.add("bo", 4, init_word="dog")
    rows = vlm.tokens.embedding.tables["bo"].detach()
    assert torch.allclose(rows[0], vlm.tokens.word_embedding("dog")) and torch.allclose(vlm.head.rows["bo"].detach(), rows[0])
    assert not torch.allclose(rows[1], vlm.tokens.word_embedding("dog"))  # the latent tokens keep the neutral start


def test_attribute_conversations_say_something_once(registry):
    """What the base model said about each photo (as pocket said it about the README's dog): answers
    that only restate the class or the question's noun are not learned, a repeated answer is
    learned once, and the type question falls back to the label and the owner's kind; `show
    --data` (inspect_training_data) lists exactly what training learns."""
    vlm = tiny_vlm()
    concept = registry.concept("bo")
    photos = registry.concept_photos(concept.id)
    said = {"What color is this subject?": ["A color.", "This subject is orange and white.", "Orange and white."],
            "What shape does this subject have?": ["A dog.", "A dog.", "It is round."],
            "What type of object is this subject?": ["A dog.", "Dog.", "A dog"]}
    store_answers(registry, vlm, photos, said)
    data = build_training_data(registry, vlm, concept)
    assert data.attributes == [("What color is <bo>?", "<bo> is orange and white."),
                               ("What color is <bo>?", "Orange and white."),
                               ("What shape does <bo> have?", "It is round."),
                               ("What type of object is <bo>?", "<bo> is a pet dog.")]
    shown = inspect_training_data(registry, replace(concept, base_fingerprint=vlm.fingerprint))
    assert [(c["question"], c["answer"]) for c in shown["attribute_conversations"]] == data.attributes
    assert shown["subject_word"] == "dog"


def store_answers(registry, vlm, photos: list[ConceptPhoto], said: dict[str, list[str]]) -> None:
    """The base model's answers as training finds them cached: "A dog." to the subject question, and
    `said[question][i]` (else "A dog.") to each attribute question about photo i."""
    for i, photo in enumerate(photos):
        registry.store_answer(photo.sha256, vlm.fingerprint, SUBJECT_QUESTION, "A dog.")
        for question in templates()["attributes"]["other"]["questions"]:
            registry.store_answer(photo.sha256, vlm.fingerprint, question, said.get(question, ["A dog."] * 3)[i])


def test_an_attribute_question_is_learned_only_with_the_kind_of_answer_it_asks_for(registry):
    """A colour question answered with a breed ("What color is <dog>? A Pembroke.", as pocket
    answered for the README's dog) would teach the tokens a breed as a colour; so would a material,
    shape or size question answered with a class. Answers naming what was asked stay, and
    questions that ask for no closed kind of word are not judged. Most answers are pocket's own
    about the shared dog, backpack, clock and robot toy."""
    vlm = tiny_vlm()
    concept = registry.concept("bo")
    photos = registry.concept_photos(concept.id)
    said = {"What color is this subject?": ["A Pembroke.", "Orange and white.", "A container."],
            "What material is this subject made of?": ["A building material.", "Soft fur.", "A wall clock."],
            "What size is this subject?": ["A household object.", "A small container.", "A size 1."],
            "What shape does this subject have?": ["A container.", "A long body and short legs.", "A corgi."],
            "What is the overall vibe of this subject?": ["Playful and happy.", "A corgi.", "A corgi."],
            "What's this subject's general texture like?": ["Sports equipment.", "Soft and fluffy.", "Clothing."]}
    store_answers(registry, vlm, photos, said)
    data = build_training_data(registry, vlm, concept)
    assert sorted(data.attributes) == sorted([("What color is <bo>?", "Orange and white."),
                                              ("What shape does <bo> have?", "A long body and short legs."),
                                              ("What is the overall vibe of <bo>?", "Playful and happy."),
                                              ("What is the overall vibe of <bo>?", "A corgi."),
                                              ("What material is <bo> made of?", "Soft fur."),
                                              ("What size is <bo>?", "A small container."),
                                              ("What's <bo>'s general texture like?", "Soft and fluffy."),
                                              ("What type of object is <bo>?", "<bo> is a pet dog.")])
    person = replace(concept, kind="person", name="mam")
    answers = [("What is Riley's skin tone?", "Fair."), ("What is Riley's skin tone?", "Riley is a woman."),
               ("What color are Riley's eyes?", "Hazel."), ("What is Riley's height?", "Riley is a woman."),
               ("What is Riley's height?", "About 5 feet 6 inches."), ("What is Riley's hair color?", "Riley.")]
    assert [(q, a) for _, q, a in worth_learning([("p", q, a) for q, a in answers], person, "woman")] == [
        ("What is <mam>'s skin tone?", "Fair."), ("What color are <mam>'s eyes?", "Hazel."),
        ("What is <mam>'s height?", "About 5 feet 6 inches.")]


def test_training_changes_only_the_concept_rows_and_records_a_checkpoint(registry):
    vlm = tiny_vlm()
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    result = train_concept(registry, vlm, "bo", FAST)
    after = vlm.model.state_dict()
    changed = {k for k in after if k not in before or not torch.equal(before[k], after[k])}
    assert changed == {"model.language_model.embed_tokens.tables.bo", "lm_head.rows.bo"}
    assert len(result.history) == 3 and 1 <= result.best_epoch <= 3
    info = describe_concept(registry, "bo")
    assert info["status"] == "trained" and info["base_model"] == "tiny-0"
    assert info["checkpoint"]["k"] == 4 and 0.0 < info["metrics"]["thresholds"]["tokens"] < 1.0
    assert (registry.root / info["checkpoint"]["file"]).exists()
    assert not (registry.root / "checkpoints" / "bo" / "resume.safetensors").exists()


def test_resume_after_interruption_matches_an_uninterrupted_run(registry, tmp_path):
    straight = train_concept(registry, tiny_vlm(), "bo", FAST)
    reference = tiny_vlm()
    reference.tokens.load(registry.root / describe_concept(registry, "bo")["checkpoint"]["file"])

    seen = []

    def interrupt(event):
        if isinstance(event, Step) and event.epoch == 1:
            seen.append(event)
            raise KeyboardInterrupt

    with reporting(interrupt):
        stopped = train_concept(registry, tiny_vlm(), "bo", FAST)
    assert stopped.interrupted and len(stopped.history) == 1 and seen
    assert (registry.root / "checkpoints" / "bo" / "resume.safetensors").exists()
    resumed_vlm = tiny_vlm()
    resumed = train_concept(registry, resumed_vlm, "bo", FAST, resume=True)
    assert not resumed.interrupted
    # the same run up to rounding: the restored AdamW state takes another float path (~2e-9), and
    # bf16 matmuls on CPU can round the last bits differently (seen in full test sessions)
    assert [h["epoch"] for h in resumed.history] == [h["epoch"] for h in straight.history]
    assert numbers(resumed.history) == pytest.approx(numbers(straight.history), abs=1e-3)
    assert resumed.best_epoch == straight.best_epoch and resumed.threshold == pytest.approx(straight.threshold, abs=1e-3)
    assert torch.allclose(resumed_vlm.tokens.rows("bo")[0], reference.tokens.rows("bo")[0], rtol=0, atol=1e-5)
    assert torch.allclose(resumed_vlm.head.rows["bo"], reference.head.rows["bo"], rtol=0, atol=1e-5)  # a wrong resume is off by ~lr
    with pytest.raises(UserError, match="nothing to resume"):
        train_concept(registry, tiny_vlm(), "bo", FAST, resume=True)


def numbers(value) -> list[float]:
    """Every number in a nested history record, in order, but the wall time (which no two runs share)."""
    if isinstance(value, dict):
        return [n for key in sorted(value) if key != "seconds" for n in numbers(value[key])]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in numbers(item)]
    return [float(value)] if isinstance(value, (int, float)) else []


def test_a_concept_trained_on_one_base_is_refused_by_another(registry):
    train_concept(registry, tiny_vlm(seed=0), "bo", FAST)
    checkpoint = registry.root / describe_concept(registry, "bo")["checkpoint"]["file"]
    with pytest.raises(UserError, match="trained on base model 'tiny-0'"):
        tiny_vlm(seed=1).tokens.load(checkpoint)


def test_no_negatives_is_a_clear_error(tmp_path):
    registry = Registry(tmp_path / "home")
    Image.new("RGB", (30, 30), "red").save(tmp_path / "a.png")
    add_concept(registry, "solo", [tmp_path / "a.png"])
    with pytest.raises(UserError, match="yollava mine solo"):
        train_concept(registry, tiny_vlm(), "solo", FAST)


def test_metrics_and_calibration_by_hand():
    metrics = recognition_metrics([0.9, 0.6, 0.4], [0.1, 0.55, 0.3, 0.2])
    assert metrics["positive"] == pytest.approx(2 / 3) and metrics["negative"] == pytest.approx(3 / 4)
    assert metrics["weighted"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    threshold = calibrate(metrics)
    assert 0.3 < threshold < 0.4  # between the best negative below and the weakest positive
    assert recognition_metrics([0.9, 0.6, 0.4], [0.1, 0.55, 0.3, 0.2], threshold)["positive"] == 1.0


def test_a_later_epoch_must_beat_the_best_by_more_than_rounding():
    from yollava_cli.learning.training import improves

    best = {"weighted": 0.9, "mean_yes_positive": 0.8, "mean_yes_negative": 0.3}
    assert improves({**best, "weighted": 0.95}, best)
    assert not improves({**best, "weighted": 0.85, "mean_yes_negative": 0.0}, best)
    assert not improves({**best, "mean_yes_positive": 0.8002}, best)  # rounding: a resumed run's float path
    assert improves({**best, "mean_yes_positive": 0.85}, best)


def test_early_stopping_runs_patience_epochs_after_the_best(registry, monkeypatch):
    import yollava_cli.learning.training as training

    monkeypatch.setattr(training, "improves", lambda metrics, best: False)  # no epoch beats the first
    config = TrainConfig(k=4, epochs=5, batch_size=8, positive_repeats=1, attributes_per_epoch=4, patience=1)
    result = train_concept(registry, tiny_vlm(), "bo", config)
    assert result.best_epoch == 1
    assert [h["epoch"] for h in result.history] == [1, 2]  # the best, then `patience` epochs without a better one


def test_a_run_that_fails_is_recorded_as_failed_with_its_error(registry):
    import json

    def break_disk(event):
        if isinstance(event, Step) and event.epoch == 1:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"), reporting(break_disk):
        train_concept(registry, tiny_vlm(), "bo", FAST)
    status, results, finished = registry.db.execute("SELECT status, results, finished_at FROM runs WHERE kind = 'train'").fetchone()
    assert status == "failed" and finished
    assert json.loads(results)["error"] == "OSError: [Errno 28] No space left on device"
    assert len(json.loads(results)["history"]) == 1


def test_show_data_counts_the_templates_it_reads(registry, monkeypatch):
    import yollava_cli.learning.synthesis as synthesis

    table = {**synthesis.templates(), "recognition": {"positive": [{}] * 2, "negative": [{}] * 3}}
    monkeypatch.setattr(synthesis, "templates", lambda: table)
    counts = synthesis.inspect_training_data(registry, registry.concept("bo"))["recognition_templates"]
    assert counts == {"positive": 2, "negative": 3}


def test_cli_training_options_default_to_train_config():
    """In a fresh process (the commands read TrainConfig's defaults as they are defined)."""
    import subprocess
    import sys

    code = ("from yollava_cli.learning.train_config import TrainConfig\n"
            "TrainConfig.lr, TrainConfig.epochs = 5e-4, 7\n"
            "import typer.main\nfrom yollava_cli.cli import app\n"
            "commands = typer.main.get_command(app).commands\n"
            "print({p.name: p.default for p in commands['train'].params}['lr'], {p.name: p.default for p in commands['eval'].params}['epochs'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["0.0005", "7"], result.stderr


def test_each_class_weighs_half_so_an_undecided_model_is_not_pushed_to_say_no(registry):
    """Negatives outnumber positives in an epoch (8 to 6 here, 2:1 by default). Under one
    cross-entropy over every answer token, a model that cannot tell yet is pushed toward "no" by
    the mix alone; scored apart and balanced, the decision's gradient at P(yes) = 0.5 nets to zero."""
    concept = registry.concept("bo")
    photos = [p.sha256 for p in registry.concept_photos(concept.id)]
    data = TrainingData(photos, registry.negatives(concept.id), [("What color is <bo>?", "<bo> is red.")] * 4)
    labels = [e.label for e in epoch_examples("bo", split_data(data, FAST), 0, FAST)]
    assert labels.count("negative") > labels.count("positive")
    weights = class_weights(labels)
    assert weights["positive"] * labels.count("positive") == pytest.approx(weights["negative"] * labels.count("negative"))
    targets, row_weights = decision_targets(labels, weights)
    assert row_weights[[i for i, label in enumerate(labels) if label == "attribute"]].eq(0).all()
    margin = torch.zeros(len(labels), requires_grad=True)  # log P(yes) - log P(no), undecided
    deciding = ~torch.isnan(targets)
    torch.nn.functional.binary_cross_entropy_with_logits(margin[deciding], targets[deciding], weight=row_weights[deciding],
                                                         reduction="sum").backward()
    assert margin.grad.sum().item() == pytest.approx(0.0, abs=1e-6)


def test_the_decision_is_read_at_the_answers_first_token_and_left_out_of_the_text(registry):
    vlm = tiny_vlm()
    vlm.tokens.add("bo", 4)
    photo = Image.new("RGB", (48, 40), (220, 40, 30))
    rows = [(Prompt("Is <bo> in this photo?", [photo], [None], ["bo"]), "Yes, <bo> is in this photo.", "positive"),
            (Prompt("Is <bo> in this photo?", [photo], [None], ["bo"]), "No, <bo> is not in this photo.", "negative"),
            (Prompt("What color is <bo>?", [], [], ["bo"]), "<bo> is red.", "attribute")]
    batch = vlm.prompts.collate([vlm.prompts.encode(p, a) for p, a, _ in rows])
    labels = [label for _, _, label in rows]
    targets, weights = decision_targets(labels, class_weights(labels))
    torch.manual_seed(0)
    logits = torch.randn(*batch["labels"].shape, vlm.model.config.text_config.vocab_size, requires_grad=True)
    yes, no = vlm.word_ids(YES_WORDS), vlm.word_ids(NO_WORDS)
    text, decision = step_losses(logits, batch["labels"], targets, weights, yes, no)
    shifted = batch["labels"][:, 1:].clone()
    first = (shifted != -100).int().argmax(dim=1)
    at = logits[:, :-1][[0, 1], first[:2]]
    margin = torch.logsumexp(at[:, yes], -1) - torch.logsumexp(at[:, no], -1)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(margin, torch.tensor([1.0, 0.0]))
    assert decision.item() == pytest.approx(expected.item(), rel=1e-5)  # one of each class: weights 1
    shifted[[0, 1], first[:2]] = -100  # the decision's token is scored once, in the decision term
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])
    assert text.item() == pytest.approx(torch.nn.functional.cross_entropy(flat, shifted.reshape(-1)).item(), rel=1e-5)
    assert shifted[2, first[2]] != -100  # an attribute answer keeps its first token in the text


def test_a_batch_of_attribute_answers_alone_has_a_finite_loss():
    """Blocked vocabulary entries hold -inf logits; a batch with no yes/no decision in it (eval's
    backpack: its epoch ended on one attribute answer) printed "loss nan" for the epoch."""
    logits = torch.randn(1, 4, 10, requires_grad=True)
    logits.data[..., 9] = float("-inf")  # a blocked identifier
    labels = torch.tensor([[-100, -100, 3, 5]])
    targets, weights = decision_targets(["attribute"], class_weights(["attribute"]))
    text, decision = step_losses(logits, labels, targets, weights, [1], [2])
    assert decision.item() == 0.0 and torch.isfinite(text)
    (text + decision).backward()
    assert torch.isfinite(logits.grad).all()


def test_training_records_the_decisions_part_of_the_loss(registry):
    result = train_concept(registry, tiny_vlm(), "bo", TrainConfig(k=4, epochs=1, batch_size=8, positive_repeats=1,
                                                                   attributes_per_epoch=4))
    assert 0 < result.history[0]["decision_loss"] < 10
    plain = TrainConfig(k=4, epochs=1, batch_size=8, positive_repeats=1, attributes_per_epoch=4, decision_weight=0.0)
    assert "decision_loss" not in train_concept(registry, tiny_vlm(), "bo", plain).history[0]
