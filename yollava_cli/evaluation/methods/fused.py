"""The head and the tokens, fused."""

from yollava_cli.evaluation.methods import Method, register
from yollava_cli.evaluation.methods.yollava import Yollava


@register
class Fused(Method):
    name, order, requires, language, trained = "fused", 70, ("yollava",), False, True

    def __init__(self, tokens: Yollava):
        self.tokens = tokens

    def scores(self, run, subject, photos):
        return run.recognizer(subject).fused_probabilities(run.vectors(photos), self.tokens.scores(run, subject, photos))

    def threshold(self, run, subject, concept):
        return run.registry.thresholds(concept["id"]).get("fused", 0.5)
