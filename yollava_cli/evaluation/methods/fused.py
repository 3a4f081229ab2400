"""The head and the recognition signals (the tokens, and any other registered), fused."""

from yollava_cli.evaluation.methods import Method, register
from yollava_cli.evaluation.methods.yollava import Yollava
from yollava_cli.learning.signals import Photo
from yollava_cli.learning.signals import scores as signal_scores


@register
class Fused(Method):
    name, order, requires, language, trained = "fused", 70, ("yollava",), False, True

    def __init__(self, tokens: Yollava):
        self.tokens = tokens

    def scores(self, run, subject, photos):
        recognizer = run.recognizer(subject)
        loaded = [(path, *run.photo(path)) for path in photos]
        votes = signal_scores(recognizer.signals(), run.vlm, subject,
                              [Photo(sha, lambda image=image: image, path) for path, image, sha in loaded],
                              known={"tokens": self.tokens.scores(run, subject, photos)})
        return recognizer.fused_probabilities(run.vectors(photos), votes)

    def threshold(self, run, subject, concept):
        return run.cuts(subject).get("fused", 0.5)
