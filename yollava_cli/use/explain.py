"""What each of a concept's latent tokens stands for, read from its row in the model's input
embedding (the standard reading of soft prompts: the vocabulary words nearest it by cosine, Lester
et al. 2021, Khashabi et al. 2022), how far training moved it from where it started, the words
nearest the direction it moved (the row less its start), and the model's own few words about it
(paper appendix K) only where they differ between tokens. Every row starts a few percent from
'thing', so after a short training all 16 still read "thing, things, stuff" (shown once); what
training added is what differs between them. On a 135M model that reading is mostly noise ("sum, planes,
greater, sell") with a few words of the photos ("white, snow" for a white-chested corgi): it says
how little the tokens learned, which the shared reading hides."""

import re
from collections import Counter

import torch
import torch.nn.functional as F

from yollava_cli.learning.events import ExplainingTokens
from yollava_cli.models.concept_tokens import read_concept_file
from yollava_cli.models.decoding import Sampling
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import report
from yollava_cli.store.concepts import get_concept
from yollava_cli.store.registry import Registry

NEAREST = 5  # words shown per token


def explain(vlm: VLM, name: str, options: Sampling, seed: int = 0) -> dict:
    """Each latent token's reading; `seed`: the one training started the rows from (its config's).
    Nearest words or a description most tokens share are given once (`shared_nearest_words`,
    `shared_description`); `moved_together_toward` reads what training added to all of them."""
    rows = vlm.tokens.rows(name)[0][1:].float()
    learned = rows - vlm.tokens.starting_rows(len(rows), seed)[1:]
    near, toward = nearest_words(vlm, rows, NEAREST), nearest_words(vlm, learned, NEAREST)
    together = nearest_words(vlm, learned.mean(0, keepdim=True), NEAREST)[0]
    moved = (learned.norm(dim=-1) / rows.norm(dim=-1)).tolist()
    descriptions = []
    for i in range(len(rows)):
        prompt = Prompt(f"In a few words, what does <{name}_{i}> describe about <{name}>?", concepts=[name])
        descriptions.append(vlm.generate(prompt, options.max_new_tokens, options.temperature, options.seed))
        report(ExplainingTokens(i + 1, len(rows)))
    shared, shared_near = most_common(descriptions), most_common([tuple(n) for n in near])
    return {"concept": name, "shared_description": shared, "shared_nearest_words": list(shared_near or []) or None,
            "moved_together_toward": together,
            "tokens": [{"token": f"<{name}_{i}>", "nearest_words": near[i], "moved": round(moved[i], 4),
                        "moved_toward": toward[i], "description": None if d == shared else d}
                       for i, d in enumerate(descriptions)]}


def most_common(values: list):
    """The value most of them share, or None when no two do."""
    value, count = Counter(values).most_common(1)[0]
    return value if count > 1 else None


def training_seed(registry: Registry, name: str) -> int:
    """The seed the concept's current checkpoint was trained with (its rows started from it)."""
    checkpoint = registry.current_checkpoint(get_concept(registry, name).id)
    return read_concept_file(registry.root / checkpoint.file)[1].get("config", {}).get("seed", 0)


def nearest_words(vlm: VLM, rows: torch.Tensor, n: int) -> list[list[str]]:
    """The n vocabulary words nearest each row (cosine to the input embedding): whole words only
    (a token that starts a word, letters only), each once whatever its case."""
    weight = vlm.tokens.embedding.base.weight
    ids, texts = word_tokens(vlm.tokenizer, weight.shape[0])
    similarity = F.normalize(rows.float().to(weight.device), dim=-1) @ F.normalize(weight[ids].float(), dim=-1).T
    nearest = []
    for order in similarity.argsort(dim=-1, descending=True).tolist():
        seen: list[str] = []
        for j in order:
            if texts[j] not in seen:
                seen.append(texts[j])
                if len(seen) == n:
                    break
        nearest.append(seen)
    return nearest


def word_tokens(tokenizer, rows: int) -> tuple[torch.Tensor, list[str]]:
    """The ids of the base vocabulary's whole-word tokens (" dog", not "gy", "<|im_end|>" or a
    concept's own tokens), and each one's word, lowercased."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ids, texts = [], []
    for i, text in enumerate(tokenizer.batch_decode([[i] for i in range(min(rows, len(tokenizer)))])):
        if i not in special and text.startswith(" ") and re.fullmatch(r"[A-Za-z]{2,}", text[1:]):
            ids.append(i)
            texts.append(text[1:].lower())
    return torch.tensor(ids), texts
