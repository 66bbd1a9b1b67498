"""What one demo run did: the record the steps fill in and the report reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conf.settings import Settings
from demo.http import Exchange
from pipelines.results import StudyResult


@dataclass
class DemoRun:
    """What the demo did, for the report."""

    settings: Settings
    timings: list[tuple[str, float]] = field(default_factory=list)
    study: StudyResult | None = None
    study_report: str = ""
    cli_outputs: list[tuple[str, str]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    batch_input: Path | None = None
    batch_output: Path | None = None
    monitoring: dict[str, Any] | None = None  # the drift report after the shifted batch
    monitoring_plots: list[Path] = field(default_factory=list)
    console_url: str | None = None
    aliases: list[str] = field(default_factory=list)  # where MLflow's alias pointed, in order
    gate_refusal: list[str] = field(default_factory=list)  # the gate's lines, when it refused
    shadow: dict[str, Any] | None = None  # bridge compare's JSON after the shadow traffic
    canary_abort: dict[str, Any] | None = None  # the guardrail's canary-abort audit entry
    canary_promote: dict[str, Any] | None = None  # the healthy canary's promotion entry
    quality: list[dict[str, Any]] = field(default_factory=list)  # bridge monitor's quality
    webhook_events: list[dict[str, Any]] = field(default_factory=list)  # what the receiver got
    lab: Any = None  # 2C: the lab's model (pipelines.lab.LabBaseline) on the same test rows
