"""The concept head alone."""

from yollava_cli.evaluation.methods import Method, register


@register
class Head(Method):
    name, order, language, trained = "head", 60, False, True

    def scores(self, run, subject, photos):
        return run.recognizer(subject).head_probabilities(run.vectors(photos))

    def threshold(self, run, subject, concept):
        return run.cuts(subject).get("head", 0.5)
