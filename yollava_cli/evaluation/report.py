"""An eval's report: report.json, report.md (tables with intervals) and chart.png; matplotlib is
imported only when a chart is drawn."""

import io
import json
from pathlib import Path

import numpy as np

from yollava_cli.evaluation.records import FACT_LABELS, FactsMeans, Mean, RunResult
from yollava_cli.store.fileio import atomic_write_bytes


def write_report(result: RunResult, folder: Path) -> list[Path]:
    """report.json, report.md and chart.png (weighted recognition and MCQ accuracy per method)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "report.json", json.dumps(result.to_json(), indent=2).encode())
    atomic_write_bytes(folder / "report.md", markdown(result).encode())
    chart(result, folder / "chart.png")
    return [folder / "report.json", folder / "report.md", folder / "chart.png"]


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_value(group, figure: str):
    """A summary's figure (a Mean's value), or None where the method has no such group."""
    return getattr(group, figure).value if group is not None else None


def markdown(result: RunResult) -> str:
    lines = [f"# yollava eval: {result.dataset}", "",
             f"Model `{result.model}`, {len(result.subjects)} subjects, {result.folds} fold(s), "
             f"negatives from {result.negatives}, {result.protocol} protocol, {result.wall_s} s.", "",
             "| method | positive | negative | weighted (95% CI) | AUC | text MCQ | visual MCQ | caption recall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, m in result.methods.items():
        r = m.recognition
        ci = r.weighted.ci95 if r else None
        lines.append(f"| {method} | {fmt(summary_value(r, 'positive'))} | {fmt(summary_value(r, 'negative'))} | "
                     f"{fmt(summary_value(r, 'weighted'))}"
                     f"{f' ({ci[0]:.2f}-{ci[1]:.2f})' if ci else ''} | {fmt(summary_value(r, 'auc'))} | "
                     f"{fmt(summary_value(m.text_mcq, 'accuracy'))} | {fmt(summary_value(m.visual_mcq, 'accuracy'))} | "
                     f"{fmt(summary_value(m.caption_recall, 'recall'))} |")
    lines += ["", "## Weighted recognition per subject", "",
              "| subject | " + " | ".join(result.methods) + " |", "| --- |" + " --- |" * len(result.methods)]
    for subject, methods in result.subjects.items():
        lines.append(f"| {subject} | " + " | ".join(fmt(methods[m].recognition.weighted if m in methods else None)
                                                     for m in result.methods) + " |")
    for method, m in result.methods.items():
        agreement = m.agreement_with_fused
        if agreement is not None and agreement.rate.value is not None:
            lines += ["", f"`{method}` answered with the fused verdict's yes or no on {agreement.rate.value:.3f} "
                          f"of {agreement.n} photos."]
    settings = [s for s in FACT_LABELS if any(s in m.facts for m in result.methods.values())]
    if settings:
        lines += ["", "## Personal facts (accuracy on questions about noted facts; gift answers that build on one)", "",
                  "| method | " + " | ".join(f"{FACT_LABELS[s]} | gift hits" for s in settings) + " |",
                  "| --- |" + " --- | --- |" * len(settings)]
        for method, m in result.methods.items():
            if any(s in m.facts for s in settings):
                lines.append(f"| {method} | " + " | ".join(fact_cells(m.facts.get(s)) for s in settings) + " |")
    f = result.forgetting
    lines += ["", f"Forgetting check: {'PASS' if f.passed else 'FAIL'} ({f.identical}/{f.compared} answers identical "
              "to the bare base model with every concept loaded).",
              "Generic questions about photos (no concept named) are asked with and without the trained concepts loaded; "
              "PASS means every answer came out identical, so loading concepts changed nothing else. FAIL means some "
              "answer changed: the concept tokens leak into unrelated answers.", ""]
    return "\n".join(lines)


def fact_cells(facts: FactsMeans | None) -> str:
    """A facts setting's accuracy and gift hits (of those asked), as two table cells."""
    if facts is None:
        return "- | 0/0"
    return f"{fmt(facts.accuracy.value)} | {facts.gift_hits}/{facts.gift_asked}"


def chart(result: dict, path: Path) -> None:
    """Bars per method for weighted recognition and the two multiple-choice accuracies, each with
    its 95% interval over subjects, and the chance line: 0.72 +- 0.08 reads apart from noise."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = [("weighted recognition", "recognition", "weighted"), ("text MCQ", "text_mcq", "accuracy"),
              ("visual MCQ", "visual_mcq", "accuracy")]
    methods = list(result.methods)
    figure, axes = plt.subplots(figsize=(1.4 * len(methods) + 2, 4.2))
    width = 0.8 / len(series)
    for j, (label, group, key) in enumerate(series):
        values, errors = [], [[], []]
        for method in methods:
            entry = getattr(result.methods[method], group)
            mean = getattr(entry, key) if entry is not None else Mean(None, None)
            value, interval = mean.value, mean.ci95
            values.append(value if value is not None else np.nan)
            errors[0].append(value - interval[0] if value is not None and interval else 0)
            errors[1].append(interval[1] - value if value is not None and interval else 0)
        axes.bar(np.arange(len(methods)) + (j - 1) * width, values, width, yerr=errors, capsize=3, label=label)
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    axes.set_xticks(np.arange(len(methods)), methods, rotation=20, ha="right", rotation_mode="anchor")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("mean over subjects (95% interval)")
    axes.set_title(f"{result.model}: n = {len(result.subjects)} subjects, {result.folds} fold(s), {result.protocol} protocol")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(series) + 1, fontsize=8)  # below: bars stay clear
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
