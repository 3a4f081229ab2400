"""The model backend on a tiny random model of every family yollava runs (built from configs, no download)."""

import os
import subprocess
import sys
import threading

import pytest
import torch
from PIL import Image
from tiny import FAMILIES, tiny_llava

from yollava_cli.errors import UserError
from yollava_cli.models import decoding
from yollava_cli.models.concept_tokens import concept_prompt
from yollava_cli.models.decoding import CallbackStreamer, decode_answer
from yollava_cli.models.loading import load_vlm
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import Status, collecting



def photo(color=(200, 30, 30), size=(40, 30)):
    return Image.new("RGB", size, color)


@pytest.fixture(params=list(FAMILIES))
def vlm(request, tmp_path):
    model, processor = FAMILIES[request.param]()
    return VLM(model, processor, f"tiny-{request.param}", cache_dir=tmp_path)


def test_prompt_carries_concept_prompt_and_matches_the_processor(vlm):
    vlm.tokens.add("bo", 16)
    prompt = Prompt("Is <bo> in this photo?", [photo()], concepts=["bo"])
    text = vlm.prompts.render(prompt)
    assert concept_prompt("bo", 16) in text
    assert concept_prompt("bo", 16) == "<bo> is " + "".join(f"<bo_{i}>" for i in range(16)) + "."
    assert text.index(concept_prompt("bo", 16)) < text.index(vlm.processor.image_token) < text.index("Is <bo> in")
    bo_id = vlm.tokenizer.convert_tokens_to_ids("<bo>")
    assert bo_id in vlm.prompts.tokenize("Is <bo> here?")  # one token, not pieces
    # our placeholder expansion (from cached features) equals the processor's own
    reference = vlm.processor(images=[photo()], text=text, return_tensors="pt")["input_ids"][0]
    assert torch.equal(vlm.prompts.encode(prompt).input_ids, reference)


def test_plain_forward_matches_the_models_own_image_path(vlm):
    prompt = Prompt("What is this?", [photo()])
    text = vlm.prompts.render(prompt)
    inputs = vlm.processor(images=[photo()], text=text, return_tensors="pt")
    ours = vlm.forward(vlm.prompts.collate([vlm.prompts.encode(prompt)]))
    with torch.no_grad(), vlm.conversation([], True):  # as every pass of ours runs
        theirs = vlm.model(**inputs).logits  # pixel_values path inside transformers
    finite = torch.isfinite(ours)
    assert torch.allclose(ours[finite], theirs[..., : ours.shape[-1]][finite], atol=1e-5)


def test_two_concepts_at_once_and_unloading(vlm):
    bo_ids = vlm.tokens.add("bo", 4, seed=1)
    mam_ids = vlm.tokens.add("mam", 4, seed=2)
    assert not set(bo_ids) & set(mam_ids)
    scale = getattr(vlm.tokens.embedding.base, "embed_scale", 1.0)  # Gemma 3 scales every row it looks up
    rows = vlm.tokens.embedding(torch.tensor([bo_ids + mam_ids]))[0]
    assert torch.equal(rows[:5], vlm.tokens.embedding.tables["bo"].data * scale)
    assert torch.equal(rows[5:], vlm.tokens.embedding.tables["mam"].data * scale)
    prompt = Prompt("Is <bo> with <mam>?", [photo()], concepts=["bo", "mam"])
    assert concept_prompt("bo", 4) in vlm.prompts.render(prompt) and concept_prompt("mam", 4) in vlm.prompts.render(prompt)
    vlm.tokens.remove("bo")
    rows = vlm.tokens.embedding(torch.tensor([mam_ids]))[0]
    assert torch.equal(rows, vlm.tokens.embedding.tables["mam"].data * scale)
    assert 0.0 < vlm.yes_probabilities([Prompt("Is <mam> here?", [photo()], concepts=["mam"])])[0] < 1.0


def test_labels_cover_only_the_answer(vlm):
    vlm.tokens.add("bo", 2)
    answer = "Yes, <bo> is in this photo."
    encoded = vlm.prompts.encode(Prompt("Is <bo> in this photo?", [photo()], concepts=["bo"]), answer)
    kept = encoded.labels[encoded.labels != -100]
    first = int((encoded.labels != -100).nonzero()[0])
    assert (encoded.labels[:first] == -100).all()
    assert vlm.tokenizer.decode(kept, skip_special_tokens=True).strip() == answer
    assert kept.tolist()[-1] != vlm.image_token_id


def test_labels_do_not_depend_on_the_templates_separators(vlm):
    vlm.processor.chat_template = vlm.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + vlm.processor.image_token + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
        "{% else %}ANSWER >> {{ m['content'][0]['text'] }}<|im_end|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ANSWER >> {% endif %}"
    )
    encoded = vlm.prompts.encode(Prompt("What color?", [photo()]), "Red.")
    kept = encoded.labels[encoded.labels != -100]
    assert vlm.tokenizer.decode(kept).replace(" ", "") == "Red.<|im_end|>"


def test_training_step_changes_only_concept_rows(vlm):
    vlm.tokens.add("bo", 4)
    before = {name: t.detach().clone() for name, t in vlm.model.state_dict().items()}
    params = vlm.tokens.parameters("bo")
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    batch = vlm.prompts.collate([
        vlm.prompts.encode(Prompt("Is <bo> in this photo?", [photo()], concepts=["bo"]), "Yes, <bo> is here."),
        vlm.prompts.encode(Prompt("What does <bo> look like?", concepts=["bo"]), "<bo> is red."),
    ])
    for _ in range(3):
        optimizer.zero_grad()
        loss = vlm.loss(batch)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    after = vlm.model.state_dict()
    concept_keys = {k for k in after if ".tables." in k or ".rows." in k}
    assert len(concept_keys) == 2
    for name, tensor in before.items():
        if name not in concept_keys:
            assert torch.equal(tensor, after[name]), f"{name} changed"
    assert all(not torch.equal(a, p) for a, p in zip(start, params))
    frozen = [p for n, p in vlm.model.named_parameters() if n not in concept_keys]
    assert all(p.grad is None for p in frozen)


def test_streaming_generation_delivers_text_in_order(vlm):
    vlm.model.generation_config.suppress_tokens = list(vlm.tokenizer.get_added_vocab().values())  # a random model may say only those
    pieces = []
    answer = vlm.generate(Prompt("What is this?", [photo()]), max_new_tokens=12, on_text=pieces.append)
    assert pieces and "".join(pieces).strip() == answer
    again = vlm.generate(Prompt("What is this?", [photo()]), max_new_tokens=12)
    assert again == answer  # greedy by default: reproducible


def test_generation_stops_when_asked(tmp_path):
    """On tiny LLaVA only: tiny OneVision's greedy answer is empty, so no stop could show there.
    Seed 1: its answer runs past 40 tokens in fp32 and bf16 alike (seed 0's loops after 21 in fp32)."""
    vlm = VLM(*tiny_llava(seed=1), "tiny-llava", cache_dir=tmp_path)
    vlm.guards = decoding.Guards(whole_sentences=False)  # its gibberish has no sentence end to stream at
    prompt = Prompt("What is this?", [photo()])
    unstopped = vlm.generate(prompt, max_new_tokens=40)
    # long without the stop, else an answer that ends early by itself would pass for a stopped one
    assert len(vlm.prompts.tokenize(unstopped)) >= 30, unstopped
    stop = threading.Event()
    pieces = []

    def stop_after_first_piece(text):
        pieces.append(text)
        stop.set()

    stopped = vlm.generate(prompt, max_new_tokens=40, on_text=stop_after_first_piece, stop=stop)
    assert pieces and len(stopped) < len(unstopped) and unstopped.startswith(stopped)


def test_loading_a_concept_reads_the_vocabulary_once(vlm, monkeypatch):
    calls = []
    get_vocab = vlm.tokenizer.get_vocab
    monkeypatch.setattr(vlm.tokenizer, "get_vocab", lambda: calls.append(1) or get_vocab())
    vlm.tokens.add("bo", 16)  # a whole vocabulary dict per token would slow `ask`'s start
    assert len(calls) == 1


def looping_vlm() -> tuple[VLM, list[list[int]]]:
    """The tiny model, which never ends an answer by itself and greedily loops, and the list each
    answer's generated token ids are appended to."""
    model, processor = tiny_llava()
    model.generation_config.suppress_tokens = [processor.tokenizer.eos_token_id]
    vlm = VLM(model, processor, "tiny")
    vlm.tokens.add("bo", 4)
    answers, generate = [], model.generate

    def kept(*args, **kwargs):
        out = generate(*args, **kwargs)
        answers.append(out[0, kwargs["input_ids"].shape[1]:].tolist())
        return out

    model.generate = kept
    return vlm, answers


def repeated_ngrams(tokens: list[int], n: int = 4) -> int:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


def test_no_answer_holds_the_same_four_tokens_twice():
    vlm, answers = looping_vlm()
    prompt = Prompt("what should I buy <bo>?", concepts=["bo"])
    vlm.guards = decoding.Guards(0, 1.0, False)  # the old guard: stop at an 8-token repeat
    vlm.generate(prompt, 80)
    vlm.guards = decoding.Guards()
    vlm.generate(prompt, 80)
    old, new = answers
    assert repeated_ngrams(old) > 0  # the tiny model loops (a name included: "<bo><bo><bo>...")
    assert repeated_ngrams(new) == 0 and len(new) == 80, new
    first = next(i for i in range(4, len(old) + 1) if repeated_ngrams(old[:i]))
    assert new[: first - 1] == old[: first - 1]  # the same greedy answer until it would repeat


def test_an_answer_cut_short_ends_at_its_last_full_sentence_as_streamed():
    vlm, answers = looping_vlm()
    prompt = Prompt("what should I buy <bo>?", concepts=["bo"])
    vlm.guards = decoding.Guards(whole_sentences=False, no_stutter=0, name_penalty=0.0)
    whole = vlm.generate(prompt, 40)
    vlm.guards = decoding.Guards(no_stutter=0, name_penalty=0.0)  # this gibberish then ends a sentence at 40 tokens
    pieces = []
    cut = vlm.generate(prompt, 40, on_text=pieces.append)
    assert "".join(pieces).strip() == cut  # the streamed user reads what is returned, no more
    assert cut == decoding.last_full_sentence(whole).strip() and cut != whole
    assert last_sentence_end(cut), cut


def last_sentence_end(text: str) -> bool:
    return text.endswith("…") or text[-1] in ".!?\"')]"


def test_the_same_words_in_another_case_are_a_repeat_too():
    """Token n-grams miss "The answer is not ... the answer is not" (" The" and " the" are two
    tokens; "built-in" and "built in" likewise): the guard also blocks repeated word 4-grams."""
    tok = tiny_llava()[1].tokenizer
    answer = tok.encode("Is this a photo? No. is this a", add_special_tokens=False)
    assert not decoding.repeated_continuations(answer, 4)  # "Is" and " is" are different tokens
    keys = decoding.WordKeys(tok)
    scores = decoding.NoRepeats(0, 4, 1.0, [], keys)(torch.tensor([answer]), torch.zeros(1, len(tok)))
    banned = set(torch.isinf(scores[0]).nonzero()[:, 0].tolist())
    photo = tok.encode(" photo", add_special_tokens=False)[0]
    assert photo in banned and banned == keys.ids[keys.key(photo)]


def test_no_phrase_of_up_to_three_words_follows_itself():
    """The 4-gram block lets "<bo>-friendly <bo>-friendly" and "as as" through: a phrase said twice
    in a row, shorter than any n-gram it blocks. It is stopped at the piece that would complete it;
    a sentence's end starts afresh, and numbers may repeat."""
    tok = tiny_llava()[1].tokenizer
    keys = decoding.WordKeys(tok)

    def banned_after(text: str) -> set[str]:
        answer = tok.encode(text, add_special_tokens=False)
        scores = decoding.NoRepeats(0, 0, 1.0, [], keys, stutter=3)(torch.tensor([answer]), torch.zeros(1, len(tok)))
        return {tok.decode([i]) for i in torch.isinf(scores[0]).nonzero()[:, 0].tolist()}

    # this tokenizer spells most words in pieces: the repeat is stopped at the piece that completes it
    assert "y" in banned_after("Get a dog-friendly toy or a dog-friendly dog-friendl")
    assert "s" in banned_after("It is as a")  # "as as"
    assert "s" in banned_after("He loves tennis balls tennis ball")  # "tennis balls tennis balls"
    assert "s" not in banned_after("He loves tennis balls and ball")
    assert banned_after("He loves it.") == set()  # a new sentence: "it. It" is no stutter
    assert not banned_after("He was born in 200") & {"0", " 0"}
    off = decoding.NoRepeats(0, 0, 1.0, [], keys)(torch.tensor([tok.encode("It is as", add_special_tokens=False)]),
                                                 torch.zeros(1, len(tok)))
    assert not torch.isinf(off).any()  # stutter=0: off


def test_a_name_the_answer_has_said_loses_a_nat_each_time():
    """A trained identifier's output row lifts the name everywhere: pocket wrote "a <dog>-friendly
    <dog> food that is <dog> meat". Each time the answer said it, the name's score drops by
    name_penalty; its first mention is free, other tokens and other names do not move."""
    bo, mam, word = 5, 6, 7
    answer = torch.tensor([[1, bo, 2, bo, 3, word]])
    scores = decoding.NoRepeats(0, 0, 1.0, [bo, mam], name_penalty=1.0)(answer, torch.zeros(1, 10))
    assert scores[0, bo] == -2.0 and scores[0, mam] == 0 and scores[0, word] == 0
    assert decoding.NoRepeats(2, 0, 1.0, [bo, mam], name_penalty=1.0)(answer, torch.zeros(1, 10))[0, bo] == -1.0  # the prompt's own: free
    assert not decoding.NoRepeats(0, 0, 1.0, [bo, mam])(answer, torch.zeros(1, 10)).any()  # 0: off


def test_onednn_is_back_on_after_blocks_that_overlap():
    """Two threads' answers overlapping (eval's thread executor): the block that ended last restored
    the "off" it found, and every later bf16 product in the process ran on the slow path."""
    assert torch.backends.mkldnn.enabled
    first, second = decoding.without_onednn(), decoding.without_onednn()
    first.__enter__()
    second.__enter__()
    assert not torch.backends.mkldnn.enabled
    first.__exit__(None, None, None)
    assert not torch.backends.mkldnn.enabled  # the second block still runs
    second.__exit__(None, None, None)
    assert torch.backends.mkldnn.enabled


def test_last_full_sentence():
    cut = decoding.last_full_sentence
    assert cut("He likes balls. Get him a") == "He likes balls."
    assert cut('She said "yes!" and then') == 'She said "yes!"'
    assert cut("Toys:\n- a ball\n- a rope, or a") == "Toys:\n- a ball"
    assert cut("It costs 3.5 euros") == "It costs 3.5 euros…"  # no sentence end: kept, marked cut
    assert cut("Done.") == "Done." and cut("Done. ") == "Done."


def test_a_concept_token_after_a_word_is_decoded_with_a_space(vlm):
    vlm.tokens.add("dog", 2)
    tok = vlm.tokenizer
    dog = tok.convert_tokens_to_ids("<dog>")
    ids = (tok.encode("A", add_special_tokens=False) + [dog] + tok.encode(". He is (", add_special_tokens=False) + [dog]
           + tok.encode(") is:", add_special_tokens=False) + [dog])
    assert decode_answer(tok, ids) == "A <dog>. He is (<dog>) is: <dog>"
    pieces = []
    streamer = CallbackStreamer(tok, pieces.append)
    streamer.put(torch.tensor([0]))  # the prompt, skipped
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(pieces) == "A <dog>. He is (<dog>) is: <dog>"


def test_yes_probability_is_deterministic_and_batch_independent(vlm):
    prompts = [Prompt("Is this red?", [photo()]), Prompt("Is this a long question about the colour?", [photo((0, 0, 255))])]
    batched = vlm.yes_probabilities(prompts)
    single = [vlm.yes_probabilities([p])[0] for p in prompts]
    assert batched == pytest.approx(single, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in batched)
    assert vlm.yes_probabilities(prompts) == batched


def test_scoring_shares_the_common_opening_and_equals_a_full_pass(vlm):
    vlm.tokens.add("bo", 4, seed=1)
    prompts = [Prompt("Is <bo> in this photo?", [photo()], concepts=["bo"]),
               Prompt("Is <bo> in this photo, the blue one?", [photo((0, 0, 255), (60, 20))], concepts=["bo"]),
               Prompt("Is <bo> here?", concepts=["bo"], history=[("Hi", "Hello")])]
    scored = vlm.next_token_logits(prompts)
    for prompt, logits in zip(prompts, scored):
        full = vlm.forward(vlm.prompts.collate([vlm.prompts.encode(prompt)]))[0, -1].float()
        finite = torch.isfinite(full)
        assert torch.equal(finite, torch.isfinite(logits))
        assert torch.allclose(logits[finite], full[finite], atol=0.01)  # a few bf16 ulps
        assert logits.argmax() == full.argmax()


def test_feature_cache_runs_the_vision_tower_once_per_photo(vlm, tmp_path):
    image = photo()
    first = vlm.image_features([image], ["a" * 64])[0]
    again = vlm.image_features([image], ["a" * 64])[0]
    assert vlm.vision_calls == 1 and torch.equal(first, again)
    model, processor = vlm.model, vlm.processor
    fresh = VLM(model, processor, vlm.ref, cache_dir=tmp_path)  # a later process: reads the disk cache
    assert torch.equal(fresh.image_features([image], ["a" * 64])[0], first)
    assert fresh.vision_calls == 0
    vlm.image_features([image])  # no key: never cached
    vlm.image_features([image])
    assert vlm.vision_calls == 3


def test_concept_refuses_another_base_model(tmp_path):
    a = VLM(*tiny_llava(seed=0), "tiny-a")
    a.tokens.add("bo", 4, seed=3)
    a.tokens.save("bo", tmp_path / "bo.safetensors", {"epochs": 1})
    same = VLM(*tiny_llava(seed=0), "tiny-a")
    meta = same.tokens.load(tmp_path / "bo.safetensors")
    assert meta["k"] == 4 and torch.equal(same.tokens.rows("bo")[0], a.tokens.rows("bo")[0])
    other = VLM(*tiny_llava(seed=1), "tiny-b")
    with pytest.raises(UserError, match="trained on base model 'tiny-a'"):
        other.tokens.load(tmp_path / "bo.safetensors")


def test_load_local_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLLAVA_HOME", str(tmp_path / "home"))
    model, processor = tiny_llava()
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    loaded = load_vlm(str(tmp_path / "m"))
    assert loaded.fingerprint == VLM(*tiny_llava(), "x").fingerprint
    with pytest.raises(UserError, match="not a model directory"):
        load_vlm(str(tmp_path / "missing"))


def test_loading_pocket_says_so_first(tmp_path, monkeypatch):
    from yollava_cli.models.pocket import model as pocket

    monkeypatch.setenv("YOLLAVA_HOME", str(tmp_path))
    def stand_in(cache):  # no real build
        model, processor = tiny_llava()
        model.model.grounding = None  # pocket's photo switch, absent from the stand-in
        return model, processor

    monkeypatch.setattr(pocket, "load_pocket", stand_in)
    with collecting() as said:
        load_vlm("pocket")
    assert said == [Status("Loading pocket...")]


def test_unreachable_hub_id_is_one_line_suggesting_pocket(tmp_path):
    code = (
        "from yollava_cli.models.loading import load_vlm\n"
        "from yollava_cli.errors import UserError\n"
        "try:\n    load_vlm('llava-hf/no-such-model-here')\n"
        "except UserError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "YOLLAVA_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "--model pocket" in result.stdout and len(result.stdout.strip().splitlines()) == 1


def test_a_loaded_concept_never_leaks_into_a_conversation_without_it(vlm):
    """Trained identifier rows compete with ordinary words in the head: one that scores above every
    word must still never be generated where its concept is not in the prompt (issue: pocket ended
    "What is in this photo?" on a loaded concept's identifier nobody mentioned)."""
    names = ["bo", "mam", "rex"]
    asked = Prompt("What is <bo> doing?", [photo()], concepts=["bo"])
    for seed, name in enumerate(names):
        vlm.tokens.add(name, 2, seed=seed)
        with torch.no_grad():  # an output row that beats every word on the answer's first hidden state
            vlm.head.rows[name].copy_(vlm.head.base.weight.float().sum(0) * 1e3)
            if vlm.next_token_logits([asked])[0].argmax() != vlm.head.identifier_ids["bo"]:
                vlm.head.rows[name].neg_()
    generic = vlm.generate(Prompt("What is in this photo?", [photo()]), max_new_tokens=8)
    assert not any(f"<{n}>" in generic for n in names), generic
    with_bo = vlm.generate(asked, max_new_tokens=8)
    assert "<bo>" in with_bo  # the mentioned concept still can be said
    assert "<mam>" not in with_bo and "<rex>" not in with_bo
    logits = vlm.next_token_logits([Prompt("What is this?", [photo()])])[0]
    assert all(logits[vlm.head.identifier_ids[n]] == float("-inf") for n in names)


def test_a_verdict_opens_the_answer_and_decides_nothing_else():
    """`yes=` makes the answer open with the verdict's yes or no word, whatever the model would
    have opened with; every later token is the model's own greedy choice."""
    vlm = VLM(*tiny_llava(), "tiny")
    prompt = Prompt("Is <bo> in this photo?", [photo()])
    free = vlm.generate(prompt, max_new_tokens=6)
    assert not free.lower().startswith(("yes", "no"))  # the tiny model opens with another word
    said_yes = vlm.generate(prompt, max_new_tokens=6, yes=True)
    said_no = vlm.generate(prompt, max_new_tokens=6, yes=False)
    assert said_yes.lower().startswith("yes") and said_no[:1] in ("N", "n") and not said_no.lower().startswith("yes")
    yes_id = vlm.tokenizer.encode("Yes", add_special_tokens=False)[0]
    with torch.no_grad():  # now the model opens every answer with "Yes"
        vlm.head.base.weight[yes_id] = vlm.head.base.weight.float().sum(0).to(vlm.head.base.weight.dtype) * 1e3
    assert vlm.generate(prompt, max_new_tokens=1).startswith("Yes")
    assert vlm.generate(prompt, max_new_tokens=1, yes=True).startswith("Yes")
    settled = vlm.generate(prompt, max_new_tokens=2, yes=False)  # the tiny vocabulary spells "No" in pieces
    assert settled[:1] in ("N", "n") and not settled.startswith("Yes")


def test_an_opening_streams_first_and_the_model_writes_what_follows():
    """`opening=` puts given text at the start of the answer (an owner's note, use.ask.quoted_note):
    it streams before any generated token, and the continuation is the model's greedy choice after
    it, the same as if the opening had been part of the prompt, up to its first line break."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.guards = decoding.Guards(0, 1.0, False, 0, 0.0)  # compared with plain greedy decoding, cut at 6 tokens
    vlm.tokens.add("bo", 4)
    prompt = Prompt("How old is <bo>?", concepts=["bo"])
    pieces = []
    answer = vlm.generate(prompt, max_new_tokens=6, on_text=pieces.append, opening="<bo> is 4 years old.")
    assert pieces[0].startswith("<bo> is 4 years old.") and "".join(pieces).strip() == answer
    assert answer.startswith("<bo> is 4 years old.") and len(answer) > len("<bo> is 4 years old.")
    ids = vlm.prompts.encode(prompt).input_ids.tolist() + vlm.tokenizer.encode("<bo> is 4 years old.", add_special_tokens=False)
    with torch.no_grad(), vlm.conversation(["bo"], False):
        expected = vlm.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                      pad_token_id=vlm.tokenizer.eos_token_id)[0, len(ids):].tolist()
    breaks = [i for i, token in enumerate(expected) if "\n" in vlm.tokenizer.decode([token])]
    expected = expected[: breaks[0] + 1] if breaks else expected
    assert answer == (decode_answer(vlm.tokenizer, vlm.tokenizer.encode("<bo> is 4 years old.", add_special_tokens=False) + expected)).strip()


def test_a_contrast_prompt_moves_every_token_by_what_the_notes_change(monkeypatch):
    """`contrast=` (context-aware decoding): each answer token is the argmax of
    logits + CONTRAST_WEIGHT * (logits - logits without the notes), checked against plain
    uncached passes over both prompts; on this model that choice differs from the plain greedy
    one at some step, so a generate that ignored the contrast fails here."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    notes = ["<bo> loves chasing tennis balls in the park.", "<bo> is scared of the vacuum cleaner."]
    prompt = Prompt("What should I buy <bo>?", concepts=["bo"], notes=notes)
    contrast = Prompt("What should I buy <bo>?", concepts=["bo"])
    generate, generated = vlm.model.generate, []

    def spy(**kwargs):  # the answer's token ids (decoded text does not round-trip on a tiny vocabulary)
        out = generate(**kwargs)
        generated.extend(out[0, kwargs["input_ids"].shape[1]:].tolist())
        return out

    monkeypatch.setattr(vlm.model, "generate", spy)
    vlm.generate(prompt, max_new_tokens=8, contrast=contrast)
    answer_ids = [t for t in generated if t != vlm.tokenizer.eos_token_id]
    with_ids, without_ids = (vlm.prompts.encode(p).input_ids.tolist() for p in (prompt, contrast))
    moved = False
    with torch.no_grad(), vlm.conversation(["bo"], False):
        for i, token in enumerate(answer_ids):
            given = vlm.model(input_ids=torch.tensor([with_ids + answer_ids[:i]])).logits[0, -1].float()
            plain = vlm.model(input_ids=torch.tensor([without_ids + answer_ids[:i]])).logits[0, -1].float()
            leaned = given + decoding.CONTRAST_WEIGHT * torch.nan_to_num(given - plain, nan=0.0, neginf=0.0)
            assert leaned[token] >= leaned.max() - 1e-3, (i, token)  # the tiny model's logits are flat
            moved |= bool(leaned[given.argmax()] < leaned.max() - 2e-3)
    assert moved


def test_a_concept_name_is_never_glued_to_a_word_piece(monkeypatch):
    """After `<bo>` the answer starts a new word or a punctuation mark: a trained name row that
    wins over the word "dog" must not go on into "<dog>gy". Sampled near-uniformly 20 times after
    the name, a generate without the rule draws a word piece (28% of this vocabulary) almost surely."""
    vlm = VLM(*tiny_llava(), "tiny")
    vlm.tokens.add("bo", 4)
    pieces = set(vlm.word_pieces.tolist())
    tokens = vlm.tokenizer.convert_ids_to_tokens(sorted(pieces))
    assert vlm.tokenizer.convert_tokens_to_ids("<bo>") not in pieces and "Ġthis" not in tokens and "h" in tokens
    generate, drawn = vlm.model.generate, []

    def spy(**kwargs):
        out = generate(**kwargs)
        drawn.append(int(out[0, kwargs["input_ids"].shape[1]]))
        return out

    monkeypatch.setattr(vlm.model, "generate", spy)
    for seed in range(20):
        vlm.generate(Prompt("What should I buy <bo>?", concepts=["bo"]), max_new_tokens=1, temperature=50.0,
                     seed=seed, opening="<bo>")
    assert not pieces & set(drawn)


@pytest.mark.parametrize("with_photo", [False, True])
def test_answer_logprobs_share_the_prompt_pass_and_match_plain_passes(vlm, with_photo):
    """log P(answer | prompt) from one prompt pass copied to every answer (and the head only at
    answer tokens) equals what a plain pass over each whole prompt + answer gives."""
    vlm.tokens.add("bo", 4)
    prompt = Prompt("How old is <bo>?", [photo()] if with_photo else [], [None] if with_photo else [], ["bo"])
    answers = ["<bo> is 4 years old.", "<bo> is scared of the vacuum cleaner and of thunder.", "No."]
    got = vlm.answer_logprobs(prompt, answers)
    for answer, score in zip(answers, got):
        batch = vlm.prompts.collate([vlm.prompts.encode(prompt, answer)])
        with torch.no_grad():
            logits = vlm.forward(batch)[0, :-1].float()
        labels = batch["labels"][0, 1:]
        kept = labels != -100
        plain = torch.log_softmax(logits[kept], -1).gather(-1, labels[kept][:, None]).sum()
        assert score == pytest.approx(float(plain), abs=1e-2)
    assert len(set(round(s, 3) for s in got)) == 3
