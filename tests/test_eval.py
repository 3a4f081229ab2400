"""eval: metric arithmetic by hand, dataset validation, and a small resumable run on a tiny model."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import invoke, shared_data
from PIL import Image
from test_photo_fuzz import broken_exif
from tiny import tiny_llava

from yollava_cli.errors import UserError
from yollava_cli.evaluation.dataset import load_dataset
from yollava_cli.evaluation.metrics import auc, bootstrap_ci, summarise
from yollava_cli.evaluation.records import Facts, Forgetting, MethodResult, Recognition, RunResult
from yollava_cli.evaluation.records import subjects_from_json, subjects_to_json
from yollava_cli.evaluation.report import markdown, write_report
from yollava_cli.evaluation.runs import run_eval
from yollava_cli.learning.executor import LocalExecutor
from yollava_cli.learning.events import Scoring, SubjectStarted
from yollava_cli.learning.training import TrainConfig, recognition_metrics
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import collecting, reporting

SUBJECTS = ["dog", "cat", "backpack"]
FAST = TrainConfig(k=2, epochs=1, positive_repeats=1, attributes_per_epoch=2)


def test_metric_arithmetic_by_hand():
    assert auc([0.9, 0.4], [0.5, 0.1]) == 0.75  # 3 of 4 pairs ordered right
    assert auc([0.5], [0.5]) == 0.5  # a tie counts half
    metrics = recognition_metrics([0.9, 0.4], [0.5, 0.1])
    assert (metrics["positive"], metrics["negative"], metrics["weighted"]) == (0.5, 0.5, 0.5)  # 0.5 counts as yes
    low, high = bootstrap_ci([0.2, 0.4, 0.6, 0.8])
    assert low < 0.5 < high and 0.2 <= low and high <= 0.8
    overall = summarise({"a": {"m": MethodResult(Recognition(1.0, 0.5, 0.75, 1.0, 0.5, 0.75))},
                         "b": {"m": MethodResult(Recognition(0.0, 1.0, 0.5, 0.5, 0.5, 0.5))}}, ["m"])
    assert overall["m"].recognition.weighted.value == pytest.approx(0.625)
    assert overall["m"].recognition.auc.value == pytest.approx(0.75)


def test_a_subjects_metrics_by_hand(monkeypatch):
    """One subject's recognition and facts entries, and their summary, on scores and answers made up
    so that every figure can be worked out by hand."""
    from dataclasses import replace
    from types import SimpleNamespace

    from yollava_cli.evaluation import runner as evaluation
    from yollava_cli.evaluation.methods import Method
    from yollava_cli.evaluation.runner import Evaluation

    class Scripted(Method):
        name, language, trained = "scripted", False, True

        def __init__(self, cut_at_half):
            self.cut_at_half = cut_at_half

        def scores(self, run, subject, photos):
            return [0.9, 0.6, 0.3] if photos == ["own"] else [0.7, 0.2]

        def threshold(self, run, subject, concept):
            return 0.75

    facts = {"facts": ["is 4 years old", "is scared of thunder", "loves tennis"],
             "questions": [{"question": "How old is <bo>?", "answer_contains": ["4", "four"]},
                           {"question": "What is <bo> scared of?", "answer_contains": ["vacuum"]},
                           {"question": "What does <bo> love?", "answer_contains": ["Tennis"]}],
             "gift": {"question": "What should I buy <bo>?", "answer_contains": ["ball"]}}
    answers = {True: ["He is FOUR.", "Thunder.", "tennis balls", "a new ball"],  # with the notes
               False: ["He is old.", "The Vacuum.", "food", "a bone"]}  # without them
    questions = [q["question"] for q in facts["questions"]] + [facts["gift"]["question"]]

    def generate(prompt, max_new_tokens, **kwargs):
        with_notes = bool(prompt.notes)
        if with_notes:
            assert prompt.notes == ["<bo> is 4 years old.", "<bo> is scared of thunder.", "<bo> loves tennis."]
        return answers[with_notes][questions.index(prompt.question)]

    dataset = SimpleNamespace(subjects={"bo": SimpleNamespace(name="bo", test=["own"]),
                                        "mam": SimpleNamespace(name="mam", test=["other"])}, facts={"bo": facts})
    monkeypatch.setattr(evaluation, "steered", lambda vlm, prompt, notes, tokens: (SimpleNamespace(prompt=replace(prompt, notes=notes)), {}))
    run = Evaluation(dataset, SimpleNamespace(generate=generate), None, None, [], TrainConfig())
    run.methods = [Scripted(True)]
    monkeypatch.setattr(run, "train", lambda subject: {})
    # own photos 0.9, 0.6, 0.3 and others' 0.7, 0.2; cut at 0.5: 2 of 3 and 1 of 2 right; 4 of the 6
    # (own, other) pairs ordered right; at the threshold 0.75: 1 of 3 and 2 of 2
    recognition = run.evaluate_subject(dataset.subjects["bo"])["scripted"].recognition
    assert recognition.positive == pytest.approx(2 / 3) and recognition.negative == 0.5
    assert recognition.weighted == pytest.approx(7 / 12) and recognition.auc == pytest.approx(4 / 6)
    assert recognition.threshold == 0.75 and recognition.weighted_at_threshold == pytest.approx(2 / 3)
    run.methods = [Scripted(False)]  # scores that are not probabilities are cut at the threshold only
    recognition = run.evaluate_subject(dataset.subjects["bo"])["scripted"].recognition
    assert (recognition.positive, recognition.negative) == (pytest.approx(1 / 3), 1.0)
    assert recognition.weighted == pytest.approx(2 / 3)
    # facts: with the notes 4 and tennis are right, thunder is not, the gift builds on a ball; without
    # them only the vacuum (a word of the expected answer, any case) is right
    bo = run.facts_metrics(Method(), "bo")
    assert bo == {"facts_prompt": Facts(pytest.approx(2 / 3), 3, 1), "facts_none": Facts(pytest.approx(1 / 3), 3, 0)}
    assert list(bo) == ["facts_prompt", "facts_none"]  # FACT_SETTINGS' order, the results file's
    assert run.facts_metrics(Method(), "mam") == {}  # no facts noted: not asked
    recognition = Recognition(1.0, 1.0, 1.0, 1.0, 0.5, 1.0)
    mam = {"facts_prompt": Facts(1.0, 2, None)}
    overall = summarise({"bo": {"m": MethodResult(recognition, facts=bo)}, "mam": {"m": MethodResult(recognition, facts=mam)}},
                        ["m"])["m"].facts["facts_prompt"]
    assert overall.accuracy.value == pytest.approx(5 / 6) and overall.n == 5  # mean of 2/3 and 1, 3 + 2 questions
    assert (overall.gift_hits, overall.gift_asked) == (1, 1)  # mam was not asked one


def test_eval_asks_its_fact_questions_with_the_prompt_ask_builds(monkeypatch):
    """Eval's fact questions go through `ask`'s own prompt building (use.ask.steered): a direct
    question no fact answers gets no facts, and advice gets them under the owner's line. Eval had a
    copy (note_guidance) that put every fact, bare, in every prompt: it measured a prompt no user got."""
    from types import SimpleNamespace

    from yollava_cli.evaluation.methods.yollava import Yollava
    from yollava_cli.evaluation.runner import Evaluation
    from yollava_cli.use import ask as asking

    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    monkeypatch.setattr(asking, "quoted_note", lambda vlm, prompt, notes, gains=None: None)
    generate, prompts = vlm.generate, []
    monkeypatch.setattr(vlm, "generate", lambda prompt, *args, **kwargs: (prompts.append(prompt), generate(prompt, *args, **kwargs))[1])
    facts = {"facts": ["is 4 years old", "loves tennis"],
             "questions": [{"question": "What colour is <bo>'s fur?", "answer_contains": ["brown"]}],
             "gift": {"question": "What should I buy <bo>?", "answer_contains": ["ball"]}}
    dataset = SimpleNamespace(subjects={}, facts={"bo": facts})
    run = Evaluation(dataset, vlm, None, None, [], TrainConfig())
    run.facts_metrics(Yollava(), "bo")
    with_facts = prompts[:2]  # FACT_SETTINGS: with the facts in the prompt first
    assert with_facts[0].question.endswith("What colour is <bo>'s fur?") and with_facts[0].notes == []
    assert with_facts[1].notes == ["What I know about <bo>:", "<bo> is 4 years old.", "<bo> loves tennis."]
    # a description method's prefix comes before the question: the question is still read as one
    assert asking.asks_for_an_answer("<bo> is a corgi with a white chest.\nWhat colour is <bo>'s fur?")


@pytest.fixture
def dataset(tmp_path):
    """Three shared subjects in the shared layout, with its QA files cut down to them."""
    source = shared_data() / "concepts"
    root = tmp_path / "dataset"
    root.mkdir()
    manifest = json.loads((source / "manifest.json").read_text())
    for subject in SUBJECTS:
        shutil.copytree(source / subject, root / subject)
    (root / "manifest.json").write_text(json.dumps({s: manifest[s] for s in SUBJECTS}))
    for name in ("descriptions.json", "text_qa.json", "facts.json"):
        data = json.loads((source / name).read_text())
        (root / name).write_text(json.dumps({k: v for k, v in data.items() if k.strip("<>") in SUBJECTS}))
    visual = json.loads((source / "visual_qa.json").read_text())
    (root / "visual_qa.json").write_text(json.dumps({k: v for k, v in visual.items() if v["subject"].strip("<>") in SUBJECTS}))
    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted((shared_data() / "pool" / "imagenet-sample").glob("*.jpg"))[::40]:
        shutil.copy(photo, pool)
    return root, pool


def list_in_manifest(root, photo: str) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["dog"]["train"][0] = photo
    (root / "manifest.json").write_text(json.dumps(manifest))


def cut_short(path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


@pytest.mark.parametrize("breakage, message", [
    (lambda root: (root / "text_qa.json").unlink(), "text_qa.json: missing"),
    (lambda root: (root / "manifest.json").write_text("{not json"), "manifest.json: malformed JSON"),
    (lambda root: (root / "descriptions.json").write_text(json.dumps({"<ghost>": "x"})), "unknown subject '<ghost>'"),
    (lambda root: (root / "dog" / "test" / "04.jpg").unlink(), "does not exist"),
    (lambda root: list_in_manifest(root, "../../../../../../etc/passwd"), "'../../../../../../etc/passwd', outside the dataset folder"),
    (lambda root: list_in_manifest(root, "/etc/passwd"), "'/etc/passwd', outside the dataset folder"),
    (lambda root: list_in_manifest(root, "dog/../../dataset/dog/train/00.jpg"), "outside the dataset folder"),
    (lambda root: cut_short(root / "dog" / "train" / "00.jpg"), r"dog/train/00.jpg: corrupt or truncated image data.*replace it"),
    (lambda root: (root / "cat" / "test" / "03.jpg").write_bytes(broken_exif("JPEG")), r"cat/test/03.jpg: corrupt or truncated"),
])
def test_dataset_problems_are_one_line_errors(dataset, breakage, message):
    root, _ = dataset
    breakage(root)
    with pytest.raises(UserError, match=message) as error:
        load_dataset(root)
    assert "\n" not in str(error.value)


def test_eval_refuses_a_manifest_reaching_outside_before_any_model_loads(dataset, home):
    root, _ = dataset
    list_in_manifest(root, "../../../../../../etc/passwd")
    result = invoke("eval", root, "--model", root / "no-model-needed", "--methods", "head", home=home)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {root / 'manifest.json'}: subject 'dog' lists '../../../../../../etc/passwd', outside the dataset "
        f"folder; list photos by paths relative to {root}, inside it"]


@pytest.mark.slow
def test_a_small_run_reports_every_method_and_resumes(dataset, tmp_path):
    from yollava_cli.learning.embeddings import load_embedder

    root, pool = dataset
    data = load_dataset(root)
    embedder = load_embedder("efficientnet-lite0")
    methods = ["yollava", "vanilla", "description", "auto-description", "embedding", "head", "fused", "ask", "word-init"]

    def stop_at_second_subject(event):
        if isinstance(event, SubjectStarted) and event.index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), reporting(stop_at_second_subject):
        run_eval(LocalExecutor(vlm=VLM(*tiny_llava(), "tiny"), loaded_embedder=embedder), data, tmp_path / "eval", methods, [pool], FAST)
    with collecting() as seen:
        result = run_eval(LocalExecutor(vlm=VLM(*tiny_llava(), "tiny"), loaded_embedder=embedder), data, tmp_path / "eval", methods, [pool], FAST)
    evaluated = {e.subject for e in seen if isinstance(e, Scoring)}
    assert evaluated == {"cat", "backpack"}  # dog finished before the interruption: not recomputed
    assert set(result.methods) == set(methods) and set(result.subjects) == set(SUBJECTS)
    for method in methods:  # values: test_a_subjects_metrics_by_hand
        recognition = result.methods[method].recognition
        assert None not in (recognition.positive.value, recognition.negative.value, recognition.weighted.value)
    for method in ("embedding", "head", "fused", "ask", "word-init"):
        assert result.methods[method].text_mcq is None
    for subject in SUBJECTS:  # ask's answers are read as yes (1) / no (0); the head's are probabilities
        assert result.subjects[subject]["ask"].recognition.weighted is not None
        assert result.subjects[subject]["ask"].agreement_with_fused.rate == 1.0  # the verdict opens the answer
    assert result.methods["vanilla"].text_mcq.n == 15
    assert result.methods["yollava"].visual_mcq.n == sum(len(data.subjects[s].test) for s in SUBJECTS)
    # every concept loaded: generic answers must not change at all
    assert result.forgetting == Forgetting(identical=6, compared=6, passed=True)
    facts = result.methods["yollava"].facts["facts_prompt"]
    assert facts.n == 9 and facts.accuracy.value is not None  # its arithmetic: test_a_subjects_metrics_by_hand
    assert (facts.gift_asked, result.methods["vanilla"].facts["facts_none"].gift_asked) == (2, 2)  # dog, cat
    assert "facts_tokens" not in result.methods["yollava"].facts  # only a run that trains facts into the tokens has it
    files = write_report(result, tmp_path / "report")
    assert json.loads(files[0].read_text())["model"] == "tiny"
    resumed = next((tmp_path / "eval").glob("results-*.fold0.json")).read_text()  # what a third run would resume from
    assert json.dumps(subjects_to_json(subjects_from_json(json.loads(resumed))), indent=1) == resumed
    assert "| yollava |" in files[1].read_text() and "| vanilla | " in files[1].read_text().split("Personal facts")[1]
    assert Image.open(files[2]).size[0] > 500


@pytest.mark.slow
def test_a_subset_without_pool_mines_the_other_subjects_train_photos(tmp_path):
    """The library protocol: every subject is a concept beside the others, as in a user's library."""
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.store.registry import Registry

    data = load_dataset(shared_data() / "concepts", ["dog", "cat"])  # the other 18 subjects are not evaluated
    result = run_eval(LocalExecutor(vlm=VLM(*tiny_llava(), "tiny"), loaded_embedder=load_embedder("efficientnet-lite0")), data, tmp_path / "eval",
                      ["yollava", "embedding"], [], FAST, protocol="library")
    assert set(result.subjects) == {"dog", "cat"} and result.negatives == "other subjects' train photos"
    assert result.protocol == "library"
    registry = Registry(tmp_path / "eval" / "fold0")
    owners = {r[0] for r in registry.db.execute(
        "SELECT DISTINCT owner.name FROM negatives n JOIN concepts c ON c.id = n.concept_id "
        "JOIN concept_photos cp ON cp.sha256 = n.sha256 JOIN concepts owner ON owner.id = cp.concept_id WHERE c.name = 'dog'")}
    assert "dog" not in owners and owners - {"cat"}  # subjects outside the subset count too
    assert "FAIL means some answer changed" in markdown(result)


def test_the_isolated_protocol_trains_each_subject_alone(tmp_path):
    """The paper's protocol (the default): a subject's registry holds it alone, its negatives are
    mined from a pool of the other subjects' train photos (no test photo among them), and its
    concept head knows no other concept."""
    from yollava_cli.learning.embeddings import load_embedder
    from yollava_cli.store.registry import Registry

    data = load_dataset(shared_data() / "concepts", ["dog", "dog6"])  # the two corgis
    result = run_eval(LocalExecutor(vlm=VLM(*tiny_llava(), "tiny"), loaded_embedder=load_embedder("efficientnet-lite0")), data, tmp_path / "eval",
                      ["embedding", "head"], [], FAST)
    assert result.protocol == "isolated" and set(result.subjects) == {"dog", "dog6"}
    for subject in ("dog", "dog6"):
        registry = Registry(tmp_path / "eval" / "fold0-isolated" / subject)
        concept = registry.concept(subject)
        assert [c.name for c in registry.concepts()] == [subject]
        assert registry.other_concepts_photo_shas(concept.id) == []
        pool = {p.name for p in (tmp_path / "eval" / "fold0-isolated" / subject / "others").iterdir()}
        expected = {f"{s.name}-{p.name}" for s in [*data.subjects.values(), *data.others.values()] if s.name != subject
                    for p in s.train}
        assert pool == expected and len(pool) == 57  # 19 other subjects' 3 train photos, never a test photo
        assert sum(registry.negative_counts(concept.id).values()) > 0


def test_one_subject_is_refused_not_scored_perfect(tmp_path):
    data = load_dataset(shared_data() / "concepts", ["dog"])
    with pytest.raises(UserError, match="at least 2 subjects"):
        run_eval(LocalExecutor(), data, tmp_path / "eval", ["yollava"], [], FAST)


def test_baselines_read_the_identifier_without_its_trained_rows():
    import torch

    from yollava_cli.evaluation.methods import build_methods
    from yollava_cli.evaluation.runner import Evaluation
    from yollava_cli.models.prompts import Prompt

    vlm = VLM(*tiny_llava(), "tiny")
    evaluator = Evaluation(None, vlm, None, None, [], FAST)
    question = [Prompt("Is <dog> in this photo?", [], [], [])]  # no concept prompt: the bare identifier
    vlm.tokens.add("dog", 2)
    neutral = vlm.yes_probabilities(question)
    width = vlm.tokens.embedding.tables["dog"].shape[1]
    vlm.tokens.add("dog", 2, torch.randn(3, width, generator=torch.Generator().manual_seed(1)), torch.randn(width))
    trained = vlm.yes_probabilities(question)
    assert trained != neutral
    vanilla, tokens = build_methods(["vanilla", "yollava"])
    with evaluator.identifier_for(vanilla, "dog"):
        assert vlm.yes_probabilities(question) == neutral
    with evaluator.identifier_for(tokens, "dog"):
        assert vlm.yes_probabilities(question) == trained
    assert vlm.yes_probabilities(question) == trained  # the trained rows are back


def test_eval_retrains_a_subject_trained_under_other_settings(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    import yollava_cli.evaluation.runner as evaluation
    from yollava_cli.evaluation.dataset import Subject
    from yollava_cli.evaluation.runner import Evaluation
    from yollava_cli.store.registry import Registry

    photo = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(photo)
    registry = Registry(tmp_path / "eval")
    trained_with = []

    def prepare_concept(registry, name, load_vlm, load_embedder, config, **_):
        """What training leaves behind, minus the training: a current checkpoint with its config."""
        trained_with.append(config.epochs)
        concept = registry.concept(name)
        registry.record_checkpoint(concept.id, registry.root / "x", "fake", "fp", 2, {"thresholds": {"tokens": 0.5}},
                                   asdict(config), None)

    class LoadedVLM:
        fingerprint, tokens = "fp", {"dog"}  # already loaded: nothing to read from disk

    monkeypatch.setattr(evaluation, "prepare_concept", prepare_concept)
    subject = Subject("dog", "pet", [photo], [photo])
    for config in (FAST, FAST, replace(FAST, epochs=3), replace(FAST, epochs=3)):
        Evaluation(None, LoadedVLM(), registry, None, [], config).train(subject)
    assert trained_with == [1, 3]  # reused under the same settings, retrained under new ones


def test_eval_results_are_keyed_on_the_code_that_produced_them(tmp_path, monkeypatch):
    import yollava_cli.evaluation.runs as evaluation
    from yollava_cli import __version__
    from yollava_cli.evaluation.dataset import Dataset
    from yollava_cli.evaluation.runs import results_path

    assert evaluation.code_version().startswith(f"{__version__}+")
    dataset = Dataset(tmp_path, {}, {}, {}, {})
    keys = set()
    for version in ("0.1.0+aaa", "0.1.0+bbb"):
        monkeypatch.setattr(evaluation, "code_version", lambda: version)
        keys.add(results_path(tmp_path / "eval", dataset, "fp", ["yollava"], FAST, []))
    assert len(keys) == 2


def test_a_new_method_is_one_module_and_nothing_else_names_it(tmp_path, monkeypatch):
    """A module dropped into the methods package registers itself; the run builds it beside the
    others, and a method built on another gets the run's one instance of it."""
    import yollava_cli.evaluation.methods as methods

    (tmp_path / "toy.py").write_text(
        "from yollava_cli.evaluation.methods import Method, register\n\n\n"
        "@register\nclass Toy(Method):\n    name, order, language, requires = 'toy', 55, False, ('head',)\n\n"
        "    def __init__(self, head):\n        self.head = head\n\n"
        "    def scores(self, run, subject, photos):\n        return [0.5 for _ in photos]\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    monkeypatch.delitem(sys.modules, "yollava_cli.evaluation.methods.toy", raising=False)
    assert methods.method_names() == ["yollava", "vanilla", "description", "auto-description", "embedding", "toy",
                                      "head", "fused", "ask", "word-init"]
    toy, head, ask, fused = methods.build_methods(["toy", "head", "ask", "fused"])
    assert toy.head is head and ask.fused is fused and fused.tokens.name == "yollava"
    assert toy.scores(None, "bo", ["a", "b"]) == [0.5, 0.5]
    with pytest.raises(UserError, match="choose from yollava, vanilla, .*toy"):
        methods.build_methods(["nosuch"])


def test_the_base_method_is_no_method_and_the_report_defaults_to_the_runs_protocol():
    from yollava_cli.evaluation.methods import METHODS, Method, method_names
    from yollava_cli.evaluation.metrics import PROTOCOLS
    from yollava_cli.evaluation.runs import EvalSettings

    assert method_names() == ["yollava", "vanilla", "description", "auto-description", "embedding", "head", "fused",
                              "ask", "word-init"]
    assert Method not in METHODS.values() and METHODS["vanilla"] is not Method
    assert not any(issubclass(METHODS["word-init"], other) for other in (METHODS["yollava"],))
    protocol = EvalSettings(Path(".")).protocol
    result = RunResult("tiny", "d", {}, {}, Forgetting(0, 0, True), 1, "n", protocol, 1, "t")
    assert protocol == PROTOCOLS[0] and f"{PROTOCOLS[0]} protocol" in markdown(result)
