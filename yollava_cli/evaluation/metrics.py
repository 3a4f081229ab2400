"""The figures an eval reports and how they are summed up: AUC, bootstrap intervals over subjects,
and folds and subjects merged into one summary."""

from dataclasses import fields

import numpy as np

from yollava_cli.evaluation.records import (
    FACT_LABELS,
    AgreementMeans,
    Choices,
    ChoicesMeans,
    Facts,
    FactsMeans,
    Figures,
    Mean,
    MethodResult,
    MethodSummary,
    RecallMeans,
    RecognitionMeans,
    SubjectResults,
)

PROTOCOLS = ("isolated", "library")  # how subjects are trained (see runs.run_eval); the first is the default


def auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def bootstrap_ci(values: list[float], rounds: int = 1000, seed: int = 0) -> list[float] | None:
    """95% interval of the mean, resampling subjects."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(rounds, len(values)), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def mean(values: list[float | None]) -> Mean:
    values = [v for v in values if v is not None]
    return Mean(float(np.mean(values)) if values else None, bootstrap_ci(values))


def summarise(per_subject: dict[str, SubjectResults], methods: list[str]) -> dict[str, MethodSummary]:
    """Each method's figures over the subjects that have them: means with their intervals, counts added up."""
    return {method: summary([r[method] for r in per_subject.values() if method in r]) for method in methods}


def summary(rows: list[MethodResult]) -> MethodSummary:
    if not rows:
        return MethodSummary()
    recognition = [r.recognition for r in rows]

    def present(groups: list) -> list:
        return [g for g in groups if g is not None]

    def choices(groups: list[Choices]) -> ChoicesMeans | None:
        return ChoicesMeans(mean([g.accuracy for g in groups]), sum(g.n for g in groups)) if groups else None

    def facts(groups: list[Facts]) -> FactsMeans:
        gifts = [g.gift_hits for g in groups if g.gift_hits is not None]
        return FactsMeans(mean([g.accuracy for g in groups]), sum(g.n for g in groups), sum(gifts), len(gifts))

    recalls, agreements = present([r.caption_recall for r in rows]), present([r.agreement_with_fused for r in rows])
    settings = {setting: present([r.facts.get(setting) for r in rows]) for setting in FACT_LABELS}
    return MethodSummary(
        RecognitionMeans(*(mean([getattr(g, f.name) for g in recognition]) for f in fields(RecognitionMeans))),
        choices(present([r.text_mcq for r in rows])), choices(present([r.visual_mcq for r in rows])),
        RecallMeans(mean([g.recall for g in recalls]), sum(g.n for g in recalls)) if recalls else None,
        AgreementMeans(mean([g.rate for g in agreements]), sum(g.n for g in agreements)) if agreements else None,
        {setting: facts(groups) for setting, groups in settings.items() if groups})


COUNTS = ("n", "gift_hits")  # figures that add up over folds; the others are averaged


def merge_folds(results: list[SubjectResults]) -> SubjectResults:
    """One subject's results over folds: counts add up, everything else is averaged."""
    return {method: MethodResult.from_groups({name: merged([r[method].groups()[name] for r in results])
                                              for name in first.groups()})
            for method, first in results[0].items()}


def merged(groups: list[Figures]) -> Figures:
    values = {}
    for f in fields(groups[0]):
        found = [getattr(g, f.name) for g in groups if getattr(g, f.name) is not None]
        values[f.name] = None if not found else sum(found) if f.name in COUNTS else float(np.mean(found))
    return type(groups[0])(**values)
