"""The base model's own summary of the train photos before the question (paper Table 27)."""

from yollava_cli.evaluation.methods import Method, register


@register
class AutoDescription(Method):
    name, order = "auto-description", 40

    def prefix(self, run, subject):
        return run.auto_description(subject)
