"""What a training step minimises: the answers' text, and the recognition answers' yes/no decision
scored apart from it.

With cross-entropy over every answer token alone, the decision is one or two tokens of a ~12-token
templated answer (and no token at all in templates that open with the identifier), and negatives
outnumber positives 2:1. The text's tokens are learned within an epoch or two; what is left to
lower is the decision, and its cheapest fall is the class prior: the tokens learn to say "no" to
every photo while the loss keeps falling. So the decision gets a term of its own: yes vs no at the
answer's first token (where `yes_probabilities` reads it), each class weighing half whatever the
epoch's mix, and the text loss leaves that token out.
"""

import math

import torch
import torch.nn.functional as F

POSITIVE, NEGATIVE = "positive", "negative"


def class_weights(labels: list[str]) -> dict[str, float]:
    """Per-example weights under which the epoch's positives and negatives weigh half each (the
    weights average 1 over the recognition examples)."""
    counts = {side: labels.count(side) for side in (POSITIVE, NEGATIVE)}
    total = sum(counts.values())
    return {side: total / (2 * n) for side, n in counts.items() if n}


def decision_targets(labels: list[str], weights: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, weight) per batch row: 1 for yes, 0 for no, nan where the example decides nothing."""
    targets = [1.0 if label == POSITIVE else 0.0 if label == NEGATIVE else math.nan for label in labels]
    return torch.tensor(targets), torch.tensor([weights.get(label, 0.0) for label in labels])


def step_losses(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                yes: list[int], no: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, decision) losses of a collated batch's logits (rows, T, vocab) and labels (rows, T).
    Text: mean cross-entropy over answer tokens, the deciding rows' first token left out. Decision:
    the class-weighted binary cross-entropy of log P(yes words) - log P(no words) at that token,
    averaged over the deciding rows (zero when none). A part with nothing to score is a plain zero:
    blocked vocabulary entries hold -inf logits (models.concept_tokens), and 0 x their sum is NaN,
    which a batch of attribute answers alone printed as the epoch's loss."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
    targets, weights = targets.to(logits.device), weights.to(logits.device)
    deciding = ~torch.isnan(targets)
    rows = torch.nonzero(deciding).flatten()
    first = (labels != -100).int().argmax(dim=1)[rows]  # each deciding row's first answer position
    text_labels = labels.clone()
    text_labels[rows, first] = -100
    zero = logits.new_zeros(())  # every row has answer tokens or a decision, so one part always has a gradient
    text = (F.cross_entropy(logits.reshape(-1, logits.shape[-1]), text_labels.reshape(-1), ignore_index=-100)
            if (text_labels != -100).any() else zero)
    if not len(rows):
        return text, zero
    at = logits[rows, first]
    margin = torch.logsumexp(at[:, yes], -1) - torch.logsumexp(at[:, no], -1)
    decision = F.binary_cross_entropy_with_logits(margin, targets[rows], weight=weights[rows], reduction="sum") / len(rows)
    return text, decision
