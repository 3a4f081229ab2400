"""The figures an eval reports and how they are summed up: AUC, bootstrap intervals over subjects,
the facts settings, and folds and subjects merged into one summary."""

import numpy as np

PROTOCOLS = ("isolated", "library")  # how subjects are trained (see runs.run_eval); the first is the default

# The facts metric's settings, two per run: with and without the facts in the prompt, on tokens
# trained without them (facts_in_tokens off) or with them (on).
FACT_SETTINGS = {False: (("facts_prompt", True), ("facts_none", False)), True: (("facts_both", True), ("facts_tokens", False))}

FACT_LABELS = {"facts_none": "no facts (control)", "facts_prompt": "in the prompt", "facts_tokens": "in the tokens",
               "facts_both": "prompt and tokens"}


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


def summarise(per_subject: dict[str, dict], methods: list[str]) -> dict:
    overall = {}
    for method in methods:
        rows = [r[method] for r in per_subject.values() if method in r]
        entry = {}
        for group, fields in (("recognition", ("positive", "negative", "weighted", "auc", "weighted_at_threshold")),
                              ("text_mcq", ("accuracy",)), ("visual_mcq", ("accuracy",)), ("caption_recall", ("recall",)),
                              ("agreement_with_fused", ("rate",)), *((setting, ("accuracy",)) for setting in FACT_LABELS)):
            present = [r[group] for r in rows if group in r]
            if not present:
                continue
            entry[group] = {}
            for name in fields:
                values = [p[name] for p in present if p.get(name) is not None]
                entry[group][name] = float(np.mean(values)) if values else None
                entry[group][f"{name}_ci95"] = bootstrap_ci(values)
            if "n" in present[0]:
                entry[group]["n"] = sum(p["n"] for p in present)
            if "gift_hits" in present[0]:
                gifts = [p["gift_hits"] for p in present if p["gift_hits"] is not None]
                entry[group]["gift_hits"], entry[group]["gift_asked"] = sum(gifts), len(gifts)
        overall[method] = entry
    return overall


def merge_folds(results: list[dict]) -> dict:
    """One subject's results over folds: counts add up, everything else is averaged."""
    merged = {}
    for method, groups in results[0].items():
        merged[method] = {}
        for group, values in groups.items():
            merged[method][group] = {}
            for key in values:
                found = [r[method][group][key] for r in results if r[method][group][key] is not None]
                counted = key in ("n", "gift_hits")
                merged[method][group][key] = None if not found else sum(found) if counted else float(np.mean(found))
    return merged
