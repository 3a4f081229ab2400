"""The trained soft tokens, in the concept prompt: the paper's method."""

from yollava_cli.evaluation.methods import Method, register


@register
class Yollava(Method):
    name, order, trained = "yollava", 10, True

    def __init__(self):
        self.scored: dict[tuple, list[float]] = {}  # fused and ask build on these

    def concepts(self, subject):
        return [subject]

    def scores(self, run, subject, photos):
        key = (subject, tuple(photos))
        if key not in self.scored:
            self.scored[key] = run.yes_probabilities(self, subject, photos)
        return self.scored[key]

    def threshold(self, run, subject, concept):
        return run.registry.thresholds(concept.id)["tokens"]
