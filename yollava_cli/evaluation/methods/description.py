"""The human-written description of the subject before the question."""

from yollava_cli.evaluation.methods import Method, register


@register
class Description(Method):
    name, order = "description", 30

    def prefix(self, run, subject):
        return run.dataset.descriptions.get(subject, "")
