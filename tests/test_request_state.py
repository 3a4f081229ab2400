"""Per-request state on the model path: a sampled answer draws from its own generator, so the same
seed gives the same answer whatever else the process holds (other concepts loaded, the global RNG),
and the process's RNG is left alone. `yollava serve` answers many requests on one model."""

import torch
from tiny import tiny_llava

from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM

QUESTION = Prompt("What is <bo>?", concepts=["bo"])


def tiny_vlm(*concepts: str) -> VLM:
    vlm = VLM(*tiny_llava(seed=0), "tiny")
    for name in concepts:
        vlm.tokens.add(name, 4, seed=len(name))
    return vlm


def test_a_sampled_answer_is_the_same_whatever_other_concepts_are_loaded():
    alone = tiny_vlm("bo").generate(QUESTION, max_new_tokens=24, temperature=1.0, seed=3)
    crowded = tiny_vlm("mam", "zebra", "bo").generate(QUESTION, max_new_tokens=24, temperature=1.0, seed=3)
    assert alone == crowded and alone
    assert tiny_vlm("bo").generate(QUESTION, max_new_tokens=24, temperature=1.0, seed=4) != alone  # the seed matters


def test_sampling_neither_reads_nor_reseeds_the_process_rng():
    vlm = tiny_vlm("bo")
    first = vlm.generate(QUESTION, max_new_tokens=16, temperature=1.0, seed=3)
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    assert vlm.generate(QUESTION, max_new_tokens=16, temperature=1.0, seed=3) == first
    assert torch.equal(torch.rand(4), expected)  # the answer neither reseeded nor drew from the process's RNG
