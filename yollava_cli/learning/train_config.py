"""Training settings, in a module without torch so the CLI can show their defaults as its own
without loading the model stack at start-up."""

from dataclasses import dataclass


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
    # Also train the owner's facts into the tokens (text-only conversations, one per fact per
    # epoch). Facts always ride in the prompt; eval's facts metric measures what this adds.
    facts_in_tokens: bool = False
