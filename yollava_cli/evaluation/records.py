"""Typed records of an eval's figures, handed between the runner, the run, the summary and the
report instead of string-keyed dicts: a misspelt figure fails where it is read. `to_json` and
`from_json` are the JSON edge (the results files a run resumes from, report.json, `eval --json`,
the registry's eval runs), and keep its keys and their order."""

from dataclasses import asdict, dataclass, field, fields

# The facts metric's settings, two per run: with and without the facts in the prompt, on tokens
# trained without them (facts_in_tokens off) or with them (on).
FACT_SETTINGS = {False: (("facts_prompt", True), ("facts_none", False)), True: (("facts_both", True), ("facts_tokens", False))}

FACT_LABELS = {"facts_none": "no facts (control)", "facts_prompt": "in the prompt", "facts_tokens": "in the tokens",
               "facts_both": "prompt and tokens"}


@dataclass(frozen=True)
class Mean:
    """A figure over subjects: its mean and the bootstrap 95% interval of the mean (None without values)."""

    value: float | None
    ci95: list[float] | None


class Figures:
    """A group of figures, written as one JSON object: a key per field, in field order; a Mean as
    two keys, the figure and its `_ci95`."""

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mean):
                out[f.name], out[f"{f.name}_ci95"] = value.value, value.ci95
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict):
        """Its fields exactly: a file with a key more or less fails here, not where it is read."""
        return cls(**data)


@dataclass(frozen=True)
class Recognition(Figures):
    """One method's recognition of one subject: its photos and the others' cut at one half (or at the
    threshold, for scores that are not probabilities), the AUC, and the cut at its own threshold."""

    positive: float | None
    negative: float | None
    weighted: float | None
    auc: float | None
    threshold: float | None
    weighted_at_threshold: float | None


@dataclass(frozen=True)
class Choices(Figures):
    """Multiple-choice questions (text or visual): the share answered right, of n."""

    accuracy: float | None
    n: int


@dataclass(frozen=True)
class Recall(Figures):
    """Captions of the test photos: the share that named the subject, of n."""

    recall: float | None
    n: int


@dataclass(frozen=True)
class Facts(Figures):
    """Questions about the noted facts in one setting (FACT_SETTINGS): the share right, of n, and
    whether the gift answer built on a fact (None where the subject has no gift question)."""

    accuracy: float | None
    n: int
    gift_hits: int | None


@dataclass(frozen=True)
class Agreement(Figures):
    """`ask`'s answers against the fused verdict it was handed: the share that agreed, of n."""

    rate: float | None
    n: int


GROUPS: dict[str, type[Figures]] = {"recognition": Recognition, "text_mcq": Choices, "visual_mcq": Choices,
                                    "caption_recall": Recall, "agreement_with_fused": Agreement,
                                    **{setting: Facts for setting in FACT_LABELS}}


@dataclass(frozen=True)
class MethodResult:
    """One method's figures on one subject (in one fold, or merged over folds); the language groups
    only for a method asked the language questions, facts only where the subject has some."""

    recognition: Recognition
    text_mcq: Choices | None = None
    visual_mcq: Choices | None = None
    caption_recall: Recall | None = None
    facts: dict[str, Facts] = field(default_factory=dict)  # by setting, in FACT_SETTINGS' order
    agreement_with_fused: Agreement | None = None

    def groups(self) -> dict[str, Figures]:
        """Its groups under their JSON names, in the results file's order, absent ones left out."""
        named = {"recognition": self.recognition, "text_mcq": self.text_mcq, "visual_mcq": self.visual_mcq,
                 "caption_recall": self.caption_recall, **self.facts, "agreement_with_fused": self.agreement_with_fused}
        return {name: group for name, group in named.items() if group is not None}

    @classmethod
    def from_groups(cls, groups: dict[str, Figures]) -> "MethodResult":
        facts = {name: group for name, group in groups.items() if name in FACT_LABELS}
        return cls(facts=facts, **{name: group for name, group in groups.items() if name not in FACT_LABELS})

    def to_json(self) -> dict:
        return {name: group.to_json() for name, group in self.groups().items()}

    @classmethod
    def from_json(cls, data: dict) -> "MethodResult":
        return cls.from_groups({name: GROUPS[name].from_json(values) for name, values in data.items()})


SubjectResults = dict[str, MethodResult]  # one subject's figures by method


def subjects_to_json(subjects: dict[str, SubjectResults]) -> dict:
    """Figures by subject and method as the results files and the run's "subjects" hold them."""
    return {name: {method: result.to_json() for method, result in methods.items()} for name, methods in subjects.items()}


def subjects_from_json(data: dict) -> dict[str, SubjectResults]:
    """A results file's subjects, as `subjects_to_json` wrote them."""
    return {name: {method: MethodResult.from_json(result) for method, result in methods.items()}
            for name, methods in data.items()}


@dataclass(frozen=True)
class RecognitionMeans(Figures):
    """Recognition over subjects (the threshold, each subject's own, is not averaged)."""

    positive: Mean
    negative: Mean
    weighted: Mean
    auc: Mean
    weighted_at_threshold: Mean


@dataclass(frozen=True)
class ChoicesMeans(Figures):
    accuracy: Mean
    n: int


@dataclass(frozen=True)
class RecallMeans(Figures):
    recall: Mean
    n: int


@dataclass(frozen=True)
class AgreementMeans(Figures):
    rate: Mean
    n: int


@dataclass(frozen=True)
class FactsMeans(Figures):
    """One facts setting over subjects: the gift answers that built on a fact, of those asked one."""

    accuracy: Mean
    n: int
    gift_hits: int
    gift_asked: int


@dataclass(frozen=True)
class MethodSummary:
    """One method's figures over subjects; a group no subject has is left out."""

    recognition: RecognitionMeans | None = None
    text_mcq: ChoicesMeans | None = None
    visual_mcq: ChoicesMeans | None = None
    caption_recall: RecallMeans | None = None
    agreement_with_fused: AgreementMeans | None = None
    facts: dict[str, FactsMeans] = field(default_factory=dict)  # by setting, in FACT_LABELS' order

    def to_json(self) -> dict:
        named = {"recognition": self.recognition, "text_mcq": self.text_mcq, "visual_mcq": self.visual_mcq,
                 "caption_recall": self.caption_recall, "agreement_with_fused": self.agreement_with_fused, **self.facts}
        return {name: group.to_json() for name, group in named.items() if group is not None}


@dataclass(frozen=True)
class Forgetting(Figures):
    """Generic answers about photos with every concept loaded against the bare model's: identical
    ones, of those compared; passed when all were."""

    identical: int
    compared: int
    passed: bool


@dataclass(frozen=True)
class RunResult:
    """An eval run's result: the summary by method, each subject's figures merged over folds, the
    forgetting check over folds and how the run was made; `evaluate` adds where it ran, its id in
    the user's registry and the report's files."""

    model: str
    dataset: str
    methods: dict[str, MethodSummary]
    subjects: dict[str, SubjectResults]
    forgetting: Forgetting
    folds: int
    negatives: str  # where negatives were mined from, in words
    protocol: str
    wall_s: float
    finished_at: str
    ray: dict | None = None  # the Ray executor's own report (already JSON)
    run_id: int | None = None
    report_files: list[str] | None = None

    def to_json(self) -> dict:
        out = {"model": self.model, "dataset": self.dataset,
               "methods": {method: summary.to_json() for method, summary in self.methods.items()},
               "subjects": subjects_to_json(self.subjects), "forgetting": self.forgetting.to_json(), "folds": self.folds,
               "negatives": self.negatives, "protocol": self.protocol, "wall_s": self.wall_s, "finished_at": self.finished_at}
        added = {"ray": self.ray, "run_id": self.run_id, "report_files": self.report_files}
        return out | {key: value for key, value in added.items() if value is not None}


@dataclass(frozen=True)
class PastRun:
    """A recorded eval run as `eval --history` lists it."""

    id: int
    finished_at: str
    model: str
    dataset: str
    wall_s: float | None  # None where the stored run has none
    weighted: dict[str, float | None]  # weighted recognition by method

    def to_json(self) -> dict:
        return asdict(self)
