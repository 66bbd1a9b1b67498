"""The promotion gate: a candidate must do as well as the active version, on the same patients.

``bridge activate`` (and ``POST /models/activate``) scores the candidate and the active
version on the name's reference set (registry_bridge/reference.py) and applies the rules
of ``promotion.rules``. A failing rule refuses the switch (CONFLICT: 409, one line per
rule with both values) unless it is forced with a reason; either way the report goes
into the activation's audit entry. Rollback is never gated: it is the way back.

A rule is MLflow's ``MetricThreshold`` (``mlflow.validate_evaluation_results``): a
``threshold`` the candidate must reach, and a ``min_absolute_change`` /
``min_relative_change`` it must improve on the active version by. :func:`check_rules`
is that rule on plain numbers rather than a call into MLflow: importing MLflow costs an
API worker about 2 s of CPU, twice the gate's budget, and tests/test_promotion.py checks
the two agree on every bound, both directions and a zero baseline.

The metrics are training's own (pipelines.metrics.evaluation_metrics), so a version's
gate figures read like its test metrics; binary ones are at the version's threshold.
They are numpy only: scikit-learn's metrics cost a fresh ``bridge activate`` about 1 s
to import, most of the gate's time in a new process (issue 24).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from conf.contract import GATE_METRICS
from conf.settings import GateRule
from pipelines.metrics import evaluation_metrics
from registry_bridge import onnx_check
from registry_bridge.entities import ModelVersion, ReferenceSet
from registry_bridge.errors import RegistryError
from registry_bridge.reference import ReferenceRows
from registry_bridge.scoring.threshold import decide

# MLflow's fallback when the active version's value is 0: the candidate must beat it by this.
ZERO_BASELINE_EPSILON = 1e-10


@dataclass(frozen=True)
class RuleOutcome:
    """One rule applied: both values and what failed (nothing: it passed).

    ``skipped`` says why a rule did not apply (a binary metric on a 3-class version).
    """

    metric: str
    candidate: float | None
    active: float | None
    bounds: dict[str, float]
    failures: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


def _bounds(rule: GateRule) -> dict[str, float]:
    return {k: v for k, v in asdict(rule).items() if k != "metric" and v is not None}


def check_rules(
    rules: Sequence[GateRule],
    candidate: Mapping[str, float],
    active: Mapping[str, float],
    candidate_label: str = "the candidate",
    active_label: str = "the active version",
) -> list[RuleOutcome]:
    """Apply ``rules`` to the candidate's metrics against the active version's (MLflow's
    ``MetricThreshold`` semantics, comparisons included); one outcome per rule."""
    outcomes = []
    for rule in rules:
        bounds = _bounds(rule)
        if rule.metric not in candidate:
            reason = f"{rule.metric} is not computed for {candidate_label} (binary versions only)"
            outcomes.append(RuleOutcome(rule.metric, None, None, bounds, skipped=reason))
            continue
        value, base = float(candidate[rule.metric]), active.get(rule.metric)
        greater = GATE_METRICS[rule.metric]
        better, word = (
            ((lambda a, b: a >= b), "at least") if greater else ((lambda a, b: a <= b), "at most")
        )
        sign = 1.0 if greater else -1.0
        failures = []
        said = f"{rule.metric} {value:.4f} on {candidate_label}"
        if rule.threshold is not None and not better(value, rule.threshold):
            failures.append(f"{said}; the threshold is {word} {rule.threshold:g}")
        if rule.min_absolute_change is not None or rule.min_relative_change is not None:
            if base is None:
                failures.append(f"{said}; {active_label} has no {rule.metric} to compare with")
            else:
                base = float(base)
                against = f"{said} vs {base:.4f} on {active_label}"
                if rule.min_absolute_change is not None:
                    needed = base + sign * rule.min_absolute_change
                    if not better(Decimal(value), Decimal(needed)):
                        failures.append(
                            f"{against}: needs {word} {needed:.4f} "
                            f"(a change of {sign * rule.min_absolute_change:+g})"
                        )
                if rule.min_relative_change is not None:
                    if base == 0:
                        needed = base + sign * ZERO_BASELINE_EPSILON
                        ok = better(Decimal(value), Decimal(needed))
                    else:
                        ok = sign * (value - base) / abs(base) >= rule.min_relative_change
                        needed = base + sign * rule.min_relative_change * abs(base)
                    if not ok:
                        failures.append(
                            f"{against}: needs {word} {needed:.4f} "
                            f"(a change of {sign * rule.min_relative_change:+.1%})"
                        )
        outcomes.append(
            RuleOutcome(
                rule.metric, value, None if base is None else float(base), bounds, tuple(failures)
            )
        )
    return outcomes


def reference_metrics(session: Any, version: ModelVersion, rows: ReferenceRows) -> dict[str, float]:
    """The gate's metrics of ``version`` on ``rows``: labels as the API serves them (a
    binary version's at its threshold), metrics as training computes its test ones.

    Raises:
        RegistryError: CONFLICT naming the version when its graph cannot score the rows.
    """
    what = f"cannot score the reference set with {version.label}"
    scores = onnx_check.score(session, rows.features, version.onnx_io, what)
    classes = [str(c) for c in version.classes]
    labels: Sequence[str] = scores.labels
    positive = None
    if version.threshold is not None and version.positive_class is not None:
        positive = version.positive_class
        labels = [
            str(c) for c in decide(scores.probabilities, classes, version.threshold, positive)[0]
        ]
    # onnxruntime's float32 rows sum to 1 only within ~1e-7: scored renormalised.
    probabilities = scores.probabilities / scores.probabilities.sum(axis=1, keepdims=True)
    computed = evaluation_metrics(rows.labels, labels, probabilities, classes, positive)
    computed["roc_auc"] = computed["roc_auc_ovr"]
    return {name: float(computed[name]) for name in GATE_METRICS if name in computed}


@dataclass(frozen=True)
class GateReport:
    """What the gate decided, as the audit entry keeps it."""

    candidate: int
    active: int
    reference: dict[str, Any] | None
    rules: list[RuleOutcome]
    seconds: float
    forced: bool = False
    problem: str | None = None  # why the gate could not decide (no reference set)
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        ok = self.problem is None and all(r.passed for r in self.rules)
        object.__setattr__(self, "passed", ok)

    def lines(self) -> list[str]:
        """One line per failed rule (or the problem): what a refusal and history say."""
        if self.problem is not None:
            return [self.problem]
        return [failure for rule in self.rules for failure in rule.failures]

    def to_dict(self) -> dict[str, Any]:
        """The audit entry's ``gate``: each rule's values for both versions."""
        return {
            "passed": self.passed,
            "forced": self.forced,
            "candidate_version": self.candidate,
            "active_version": self.active,
            "reference": self.reference,
            "seconds": round(self.seconds, 3),
            **({"problem": self.problem} if self.problem else {}),
            "rules": [
                {
                    "metric": r.metric,
                    "candidate": r.candidate,
                    "active": r.active,
                    **r.bounds,
                    "passed": r.passed,
                    **({"failures": list(r.failures)} if r.failures else {}),
                    **({"skipped": r.skipped} if r.skipped else {}),
                }
                for r in self.rules
            ],
        }

    def refusal(self, candidate_label: str) -> RegistryError:
        """The CONFLICT refusing the switch: one line per failed rule, with both values."""
        failed = self.lines()
        return RegistryError(
            "CONFLICT",
            f"the promotion gate refused {candidate_label}:\n"
            + "\n".join(f"- {line}" for line in failed)
            + "\nnothing changed; --force --reason TEXT activates it anyway",
            details=[{"field": "version", "rule": line} for line in failed],
        )


def run_gate(
    rules: Sequence[GateRule],
    candidate: ModelVersion,
    active: ModelVersion,
    reference: tuple[ReferenceSet, ReferenceRows] | None,
    session_of: Callable[[ModelVersion], Any],
    forced: bool,
) -> GateReport:
    """Score both versions on the reference set and apply ``rules``."""
    started = time.monotonic()
    if reference is None:
        return GateReport(
            candidate.version,
            active.version,
            None,
            [],
            time.monotonic() - started,
            forced=forced,
            problem=(
                f"{candidate.name!r} has promotion rules but no reference set to apply them on; "
                f"add one with `bridge reference set {candidate.name} --data FILE`"
            ),
        )
    ref, rows = reference
    theirs = reference_metrics(session_of(active), active, rows)
    ours = reference_metrics(session_of(candidate), candidate, rows)
    outcomes = check_rules(rules, ours, theirs, f"{candidate.label}", f"active {active.label}")
    summary = {"version": ref.version, "rows": ref.rows, "sha256": ref.sha256, "source": ref.source}
    passed = all(outcome.passed for outcome in outcomes)
    return GateReport(
        candidate.version,
        active.version,
        summary,
        outcomes,
        time.monotonic() - started,
        forced=forced and not passed,  # forced only when it overrode a refusal
    )
