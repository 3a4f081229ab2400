"""What a user sees: the free-text answer to the recognition question, with the fused verdict as
its grounding line and settling its yes/no as `ask` does, read as yes (1) or no (0)."""

from dataclasses import replace

from yollava_cli.evaluation.methods import Method, register
from yollava_cli.evaluation.methods.fused import Fused
from yollava_cli.evaluation.records import Agreement
from yollava_cli.learning.synthesis import score_question

ASK_TOKENS = 4


@register
class Ask(Method):
    name, order, requires, language, trained = "ask", 80, ("fused",), False, True

    def __init__(self, fused: Fused):
        self.fused = fused
        self.agreement: dict[str, list[bool]] = {}  # per subject: each answer's yes/no against the fused verdict

    def scores(self, run, subject, photos):
        fused, cut = self.fused.scores(run, subject, photos), self.fused.threshold(run, subject, run.registry.concept(subject))
        answers = []
        for path, probability in zip(photos, fused):
            prompt = run.prompt(self.fused.tokens, subject, score_question(subject), [path])
            prompt.notes = [f"<{subject}> is {'' if probability >= cut else 'not '}in this photo."]
            answer = run.vlm.generate(prompt, max_new_tokens=ASK_TOKENS, yes=probability >= cut)
            answers.append(float(answer.lower().startswith("yes")))
            self.agreement.setdefault(subject, []).append(answers[-1] == (probability >= cut))
        return answers

    def extra(self, run, subject, entry):
        agreed = self.agreement.pop(subject, [])
        return replace(entry, agreement_with_fused=Agreement(sum(agreed) / len(agreed), len(agreed))) if agreed else entry
