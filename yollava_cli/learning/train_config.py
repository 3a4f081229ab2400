"""Training settings, in a module without torch so the CLI can show their defaults as its own
without loading the model stack at start-up."""

from dataclasses import dataclass

# What training can use, for the CLI's options and a bundle's token count: at most 64 latent tokens
# (the paper uses 16; each is a row in every prompt about the concept), a rate from 1e-6 (below it
# the rows barely move in 15 epochs) to 0.1 (the default is the paper's 1e-3; 1e-2 already wiped the
# identifier's starting word out within an epoch), and seeds numpy's generators take.
RANGES = {"k": (1, 64), "epochs": (1, 500), "lr": (1e-6, 0.1), "batch_size": (1, 256), "seed": (0, 2**32 - 1)}


@dataclass
class TrainConfig:
    k: int = 16
    epochs: int = 15
    # The paper's rate. With the identifier starting at the base model's word for the subject,
    # the first epochs are the best ones; 1e-2 wiped that start out within an epoch.
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    positive_repeats: int = 2  # each photo and its mirror image, this many times per epoch
    negative_ratio: float = 2.0  # negatives per positive example in an epoch
    attributes_per_epoch: int = 12
    validation_fraction: float = 0.2  # of the negatives, held out for checkpoint selection
    patience: int = 3  # stop after this many epochs without a better validation score
    weight_decay: float = 0.01
    # The recognition answers' yes/no, scored apart from their text (learning/objective.py):
    # class-balanced, this many times the text's per-token loss. 0: one cross-entropy over every
    # answer token, under which the decision collapsed to "no" after a few epochs.
    decision_weight: float = 1.0
    # Also train the owner's facts into the tokens (text-only conversations, one per fact per
    # epoch). Facts always ride in the prompt; eval's facts metric measures what this adds.
    facts_in_tokens: bool = False
