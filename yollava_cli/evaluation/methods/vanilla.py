"""The bare model: the question names the identifier, which carries nothing."""

from yollava_cli.evaluation.methods import Method, register


@register
class Vanilla(Method):
    name, order = "vanilla", 20
