"""The soft tokens' signal: the language model's P(yes) to "is <name> in this photo?", with the
concept's trained rows loaded. The costly one: `find --by fused` asks it only of the photos the
head ranks best or near its cut."""

from yollava_cli.learning.events import ScoringPhotos
from yollava_cli.learning.signals import Photo, Signal, register
from yollava_cli.learning.synthesis import score_question
from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import SCORE_BATCH
from yollava_cli.reporting import report


class Tokens(Signal):
    name = "tokens"

    def score(self, vlm, concept: str, photos: list[Photo]) -> list[float | None]:
        """Photos are decoded one scoring batch at a time (those with cached features not at all)
        and dropped after it; one that no longer reads scores None."""
        question, scores = score_question(concept), {}
        for start in range(0, len(photos), SCORE_BATCH):
            batch = [(i, p, p.load if p.key in vlm.features else p.load())
                     for i, p in enumerate(photos[start : start + SCORE_BATCH], start)]
            batch = [(i, p, image) for i, p, image in batch if image is not None]
            probabilities = vlm.yes_probabilities([Prompt(question, [image], [p.key], [concept]) for _, p, image in batch])
            scores.update({i: probability for (i, _, _), probability in zip(batch, probabilities)})
            report(ScoringPhotos(min(start + SCORE_BATCH, len(photos)), len(photos)))
        return [scores.get(i) for i in range(len(photos))]


register(Tokens())
