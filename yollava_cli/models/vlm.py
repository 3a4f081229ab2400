"""One interface to the vision-language models yollava runs (`architectures`), used by train, ask,
find and eval: the model passes (forward, loss, scoring; writing answers is `decoding`'s) over three
parts with one job each, the concept token rows (`concept_tokens`), prompt to tokens (`prompts`) and
the image-feature cache (`feature_cache`). The base model is frozen: no weight of it is ever trained.

Images go through `image_inputs` (cached per photo hash and model fingerprint, since the vision
tower and projector are frozen) and reach the model as transformers' `mm_encoder_outputs`, for
training, scoring and generation alike. Every pass also gets its `layout`: the per-token inputs an
architecture needs beside the ids (M-RoPE positions, token types), computed over the whole sequence
and sliced for each part of it that runs, so a cached prefix and what follows it agree.
"""

import functools
import hashlib
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from yollava_cli.models import decoding, families
from yollava_cli.models.architectures import Architecture, architecture
from yollava_cli.models.compute import Policy, current_policy
from yollava_cli.models.concept_tokens import (
    ConceptEmbedding,
    ConceptHead,
    ConceptTokens,
)
from yollava_cli.models.decoding import NO_WORDS, YES_WORDS
from yollava_cli.models.feature_cache import FeatureCache
from yollava_cli.models.images import ImageInput, PooledImages, compute_image_input
from yollava_cli.models.prompts import Prompt, PromptEncoder, part

SCORE_BATCH = 16  # prompts per yes/no scoring pass (find, training validation, eval): bounded memory


class VLM:
    """A loaded base model with its processor: `tokens` (the concepts' rows), `prompts` (prompt to
    tokens) and `features` (the image-feature cache, which a caller may pass in)."""

    def __init__(self, model, processor, ref: str, cache_dir: Path | None = None, features: FeatureCache | None = None,
                 policy: Policy | None = None, family: families.Family | None = None):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.ref = ref
        self.device = next(model.parameters()).device
        self.dtype = model.dtype  # of activations and image features
        self.policy = policy or current_policy()
        self.family = family or families.for_ref(ref)
        self.arch: Architecture = architecture(model.config.model_type, ref)
        self.image_token_id = image_token_id(model.config, processor)
        self.vision_calls = 0  # photos run through the vision tower: the feature cache's misses
        self.generated_tokens = 0  # tokens the model has generated, all answers together (an opening given is not generated)
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        if isinstance(embedding, ConceptEmbedding):  # the same model wrapped again: start clean
            embedding, head = embedding.base, head.base
        else:  # before wrapping: the concept tables must not enter the hash
            model.yollava_fingerprint = fingerprint(embedding.weight, model)
        self.fingerprint = model.yollava_fingerprint
        self.feature_dtype = torch.bfloat16 if self.cpu_bf16 else self.dtype  # what the projector computes in
        folder = cache_dir / "features" / feature_cache_name(self.fingerprint, self.feature_dtype, processor) if cache_dir else None
        self.features = features if features is not None else FeatureCache(folder, feature_cache_bytes())
        embedding = ConceptEmbedding(embedding)
        model.set_input_embeddings(embedding)
        if self.cpu_bf16 and self.family.bf16_matrices_on_cpu:
            head = store_matrices_in_bf16(model.get_decoder(), head)
        self.head = ConceptHead(head, len(self.tokenizer), [self.image_token_id])
        model.set_output_embeddings(self.head)
        self.tokens = ConceptTokens(self.tokenizer, embedding, self.head, self.device, self.fingerprint, ref)
        self.prompts = PromptEncoder(processor, self.tokens, self.image_token_id, self.image_inputs)
        self.grounding = self.family.photo_switch(model)  # on only for the rows that hold a photo
        self.guards = decoding.Guards()  # what keeps answers readable (a benchmark swaps in the old ones)

    # -- passes -------------------------------------------------------------------------

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits for a collated batch (image features spliced in at the placeholders)."""
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        inputs = {"input_ids": ids, "attention_mask": mask, **self.layout(ids, mask, batch["images"]),
                  **self.image_outputs(batch["images"])}
        with self.conversation(batch["concepts"], batch["photo_rows"]):
            return self.model(**inputs).logits

    def image_outputs(self, images: list[ImageInput]) -> dict:
        """Precomputed image features as transformers' `mm_encoder_outputs`, in the form the
        architecture takes them; empty without images."""
        if not images:
            return {}
        features = [image.features.to(self.device, self.dtype) for image in images]
        pooled = torch.cat(features) if self.arch.pooled_as_tensor else features
        deepstack = None
        if images[0].deepstack is not None:  # per layer, one tensor per image
            deepstack = [[image.deepstack[layer].to(self.device, self.dtype) for image in images]
                         for layer in range(len(images[0].deepstack))]
        return {"mm_encoder_outputs": {"image": PooledImages(pooler_output=pooled, deepstack_features=deepstack)}}

    def layout(self, ids: torch.Tensor, mask: torch.Tensor, images: list[ImageInput]) -> dict:
        """The per-token inputs this architecture takes beside the ids, for a whole (rows, T)
        sequence whose images are `images` in row order: M-RoPE positions (3, rows, T), token
        types (rows, T). `part` slices them for a piece of the sequence."""
        out = {}
        if self.arch.mrope:
            types = (ids == self.image_token_id).int()
            grids = torch.stack([image.grid for image in images]).to(ids.device) if images else None
            out["position_ids"], _ = self.model.base_model.get_rope_index(
                ids, mm_token_type_ids=types, image_grid_thw=grids, attention_mask=mask)
        if self.arch.token_types:
            out["token_type_ids"] = (ids == self.image_token_id).long()
        return out

    def rope_deltas(self, layout: dict, ids: torch.Tensor) -> None:
        """Hand an M-RoPE model the offset of the text positions after the prompt `layout` covers,
        which its own generate adds to every new token (it keeps it as state between calls)."""
        if self.arch.mrope:
            self.model.base_model.rope_deltas = layout["position_ids"].amax(dim=(0, 2))[:, None] + 1 - ids.shape[1]

    def loss(self, batch: dict) -> torch.Tensor:
        """Mean cross-entropy over answer tokens only."""
        logits = self.forward(batch)[:, :-1].float()
        labels = batch["labels"][:, 1:].to(self.device)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    # -- answers ------------------------------------------------------------------------

    @property
    def context_tokens(self) -> int | None:
        """How many positions the language model reads, prompt and answer together: its config's
        max_position_embeddings (the text config's in a multimodal model), or None when it does not say."""
        config = self.model.config
        for section in (getattr(config, "text_config", None), config):
            limit = getattr(section, "max_position_embeddings", None)
            if isinstance(limit, int) and limit > 0:
                return limit
        return None

    @property
    def cpu_bf16(self) -> bool:
        """Whether this fp32 model on CPU computes in bf16 (the compute policy's choice)."""
        return self.device.type == "cpu" and self.dtype == torch.float32 and self.policy.cpu_bf16

    def fast(self):
        """bf16 autocast on CPU around every model pass where the policy computes in bf16 (the image
        features included, so every path computes them alike): the language model's matrices are
        stored in bf16 there, and autocast keeps the residual stream, norms and softmax in fp32."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)

    @contextmanager
    def conversation(self, concepts: list[str], photo_rows: torch.Tensor | bool):
        """Every language-model pass runs inside this: `fast()`, only the conversation's concepts
        can be generated, and the family's photo switch is on exactly for the rows that hold a photo."""
        active, rows = self.head.active, self.grounding.rows if self.grounding else None
        self.head.active = set(concepts)
        if self.grounding:
            self.grounding.rows = photo_rows
        try:
            with self.fast():
                yield
        finally:
            self.head.active = active
            if self.grounding:
                self.grounding.rows = rows

    def next_token_logits(self, prompts: list[Prompt]) -> torch.Tensor:
        """(n, vocab) logits of the first answer token of each prompt, in one batch. The opening the
        prompts share (chat header, concept prompt) runs once, its cache copied to every row, and
        the head runs only at each prompt's last position: `find` scores ~1.7x more photos/s."""
        encoded = [self.prompts.encode(p) for p in prompts]
        batch = self.prompts.collate(encoded)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        lengths = torch.tensor([len(e.input_ids) for e in encoded], device=self.device)
        photos = batch["photo_rows"]
        # rows with and without a photo may run with different weights (a photo switch): no common cache then
        same_weights = bool(photos.all()) or not bool(photos.any())
        shared = shared_opening(ids, int(lengths.min()) - 1, self.image_token_id) if same_weights else 0
        layout = self.layout(ids, mask, batch["images"])
        base = self.model.base_model  # the multimodal model without the head
        with torch.no_grad(), self.conversation(batch["concepts"], photos):
            inputs = {"input_ids": ids[:, shared:], "attention_mask": mask, **part(layout, cols=slice(shared, None)),
                      **self.image_outputs(batch["images"])}
            if shared:
                inputs["cache"] = self.prefill(ids[:1, :shared], len(encoded), part(layout, slice(0, 1), slice(0, shared)))
            hidden = base(**inputs)[0]
            return self.head(hidden[torch.arange(len(encoded), device=self.device), lengths - 1 - shared]).float()

    def yes_probabilities(self, prompts: list[Prompt]) -> list[float]:
        """P(yes) from the next-token logits of yes vs no words: deterministic and calibrated. Runs
        SCORE_BATCH prompts a pass (bounded memory)."""
        yes, no, out = self.word_ids(YES_WORDS), self.word_ids(NO_WORDS), []
        for start in range(0, len(prompts), SCORE_BATCH):
            final = self.next_token_logits(prompts[start : start + SCORE_BATCH])
            out += torch.sigmoid(torch.logsumexp(final[:, yes], -1) - torch.logsumexp(final[:, no], -1)).tolist()
        return out

    def prefill(self, ids: torch.Tensor, rows: int = 1, layout: dict | None = None, images: list[ImageInput] = ()):
        """The cache of a one-row prompt, run without the head (only what follows needs logits),
        copied to `rows` rows. `layout`: this piece's part of the sequence's layout. Call inside
        `conversation`."""
        cache = self.model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                                      **(layout or {}), **self.image_outputs(list(images))).cache
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def answer_logprobs(self, prompt: Prompt, answers: list[str]) -> list[float]:
        """log P(answer | prompt) for each answer, summed over its tokens (the end of the turn
        included). The prompt runs once and its cache is copied to every answer, and the head runs
        only where an answer token is predicted: ranking a concept's notes (chat.quoted_note) runs
        this over up to 100 notes before the first word of an answer."""
        question = self.prompts.encode(prompt)
        full = [self.prompts.encode(prompt, answer) for answer in answers]
        n = len(question.input_ids)  # every full encoding starts with these (encode checks it)
        tails = [e.input_ids[n - 1:] for e in full]  # the prompt's last token, then the answer's
        width = max(len(t) for t in tails)
        ids = torch.zeros((len(tails), width), dtype=torch.long)
        mask = torch.zeros((len(tails), n - 1 + width), dtype=torch.long)
        labels = torch.full((len(tails), width), -100, dtype=torch.long)
        for row, (tail, e) in enumerate(zip(tails, full)):
            ids[row, : len(tail)], mask[row, : n - 1 + len(tail)] = tail, 1
            labels[row, : len(tail) - 1] = e.labels[n:]
        ids, mask = ids.to(self.device), mask.to(self.device)
        opening = question.input_ids[None, : n - 1].to(self.device)
        layout = self.layout(torch.cat([opening.expand(len(tails), -1), ids], 1), mask, question.images * len(tails))
        with torch.no_grad(), self.conversation(question.concepts, bool(question.images)):
            cache = self.prefill(opening, len(tails), part(layout, slice(0, 1), slice(0, n - 1)), question.images)
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask, cache=cache,
                                           **part(layout, cols=slice(n - 1, None)))[0]
            labels = labels.to(self.device)
            predicted = labels != -100
            logits = self.head(hidden[predicted]).float()
        token_logprobs = torch.log_softmax(logits, -1).gather(-1, labels[predicted][:, None])[:, 0]
        rows = predicted.nonzero()[:, 0]  # the answer each predicted token belongs to
        return torch.zeros(len(tails), device=self.device).index_add(0, rows, token_logprobs).tolist()

    def choose(self, prompts: list[Prompt], letters: list[str]) -> list[str]:
        """Multiple choice scored from the option letters' next-token logits, not parsed text."""
        final = self.next_token_logits(prompts)
        ids = [self.word_ids((letter, f" {letter}")) for letter in letters]
        scores = torch.stack([torch.logsumexp(final[:, i], -1) for i in ids], dim=1)
        return [letters[i] for i in scores.argmax(1).tolist()]

    @functools.cached_property
    def word_pieces(self) -> torch.Tensor:
        """Ids of the tokens that continue a word rather than start one ("gy" in "dog|gy"): after a
        concept's identifier they would glue onto it, "<dog>gy". Read from the tokens' own text
        (no space marker, a letter or digit first); ~0.05 s, once, and only when first needed."""
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        text = backend.decoder.decode if backend is not None and backend.decoder is not None else (
            lambda pieces: self.tokenizer.convert_tokens_to_string(pieces))
        return torch.tensor([i for i, t in enumerate(tokens)
                             if t and t[0].isalnum() and not t.startswith("\u2581")  # sentencepiece's space marker
                             and text([t])[:1].isalnum()], dtype=torch.long)

    @functools.cached_property
    def word_keys(self) -> "decoding.WordKeys":
        """Each token as the repeat guard reads it (decoding.WordKeys); once, when first needed."""
        return decoding.WordKeys(self.tokenizer)

    def word_ids(self, words) -> list[int]:
        return sorted({self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words})

    def generate(self, prompt: Prompt, max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0, on_text: Callable[[str], None] | None = None,
                 stop: threading.Event | None = None, yes: bool | None = None, opening: str | None = None,
                 contrast: Prompt | None = None, kept_from: tuple[str, ...] = ()) -> str:
        """Answer a prompt (greedy by default); `on_text` receives the text as it is generated. The
        steering modes, each optional, are `decoding.generate`'s: `yes` (a recognizer's verdict opens
        the answer), `opening` (text the answer starts with), `contrast` (lean on the context that
        prompt lacks), `kept_from` (words written only where a sentence cautions)."""
        return decoding.generate(self, prompt, decoding.Sampling(max_new_tokens, temperature, seed),
                                 decoding.Steering(yes, opening, contrast, kept_from), on_text, stop, self.guards)

    # -- images -------------------------------------------------------------------------

    def image_inputs(self, images: list, keys: list[str | None] | None = None) -> list[ImageInput]:
        """Each image as the model sees it (features, placeholder text, grid), cached by photo hash."""
        keys = list(keys or []) + [None] * (len(images) - len(keys or []))
        out = []
        for image, key in zip(images, keys):
            cached = self.features.get(key)
            if cached is None:
                cached = self._compute_image(image() if callable(image) else image)
                self.features.put(key, cached)
            out.append(cached)
        return out

    def image_features(self, images: list, keys: list[str | None] | None = None) -> list[torch.Tensor]:
        """Projected image features, one (n_tokens, hidden) tensor per image, cached by photo hash."""
        return [image.features for image in self.image_inputs(images, keys)]

    def _compute_image(self, image: Image.Image) -> ImageInput:
        self.vision_calls += 1
        computed = compute_image_input(self.model, self.processor, image, self.dtype, self.device, self.fast)
        computed.features = computed.features.to(self.feature_dtype)
        if computed.deepstack is not None:
            computed.deepstack = computed.deepstack.to(self.feature_dtype)
        return computed


def image_token_id(config, processor) -> int:
    """The token the model puts image features at: its config's (Gemma 3's `<image_soft_token>`,
    not the `<start_of_image>` its chat template writes), else the processor's."""
    for name in ("image_token_id", "image_token_index"):
        if getattr(config, name, None) is not None:
            return getattr(config, name)
    return processor.tokenizer.convert_tokens_to_ids(processor.image_token)


def shared_opening(ids: torch.Tensor, limit: int, image_token_id: int) -> int:
    """How many leading tokens every row has in common, before any image and at most `limit`."""
    same = (ids == ids[:1]).all(0) & (ids[0] != image_token_id)
    differs = (~same[:limit]).nonzero()
    return int(differs[0]) if len(differs) else limit


def store_matrices_in_bf16(decoder: torch.nn.Module, head: torch.nn.Linear) -> torch.nn.Linear:
    """Keep the language model's Linear weights, and an untied copy of the output head, in bf16.

    Decoding a token on CPU reads every weight once: bf16 halves those bytes, and spares autocast
    from converting 135M fp32 weights on every call (with fp32 weights under autocast, decoding ran
    at half the speed). Every pass runs under bf16 autocast (`VLM.fast`), which would round these
    same weights anyway; embeddings, norms and the vision tower keep their fp32 weights. Returns the
    head to use."""
    # the head shares its weight with the fp32 input embedding: a bf16 copy, made in one step
    untied = torch.nn.utils.skip_init(torch.nn.Linear, head.in_features, head.out_features,
                                      bias=head.bias is not None, dtype=torch.bfloat16)
    with torch.no_grad():
        untied.weight.copy_(head.weight)
        if head.bias is not None:
            untied.bias.copy_(head.bias)
    untied.requires_grad_(head.weight.requires_grad)
    for module in decoder.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return untied


def feature_cache_name(fingerprint: str, dtype: torch.dtype, processor) -> str:
    """The feature cache's folder: the model, the precision the features are computed in, and the
    image processor's settings (size, crops, splitting), any of which changes the features."""
    settings = getattr(processor, "image_processor", None)
    settings = settings.to_json_string() if hasattr(settings, "to_json_string") else repr(settings)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    return f"{fingerprint.replace(':', '-')}-{str(dtype).removeprefix('torch.')}-{digest}"


def feature_cache_bytes() -> int:
    from yollava_cli.config import load_config

    return int(load_config()["feature_cache_mb"] * 2**20)


def fingerprint(weight: torch.Tensor, model) -> str:
    """Architecture, vocabulary size and a hash of the input embedding matrix plus the head of every
    other tensor: a concept's rows (and a cached image feature) mean something only next to the
    exact model they came from, and a model's projector or adapters may change without touching the
    embedding."""
    digest = hashlib.sha256(weight.detach().float().cpu().numpy())  # the array's own buffer: no 100 MB copy
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and tensor is not weight:
            digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return f"{type(model).__name__}:{weight.shape[0]}:{digest.hexdigest()[:16]}"
