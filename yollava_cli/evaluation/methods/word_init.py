"""Training's starting point: the identifier at the base model's word for the subject, zero epochs,
in the concept prompt."""

from yollava_cli.evaluation.methods import Method, register


@register
class WordInit(Method):
    name, order, language = "word-init", 90, False

    def concepts(self, subject):
        return [subject]

    def start_rows(self, run, subject):
        return {"seed": run.config.seed, "init_word": run.subject_word(subject)}
