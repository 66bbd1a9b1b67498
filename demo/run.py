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
    lab: Any = None  # 2C: the lab's model (pipelines.lab.LabBaseline) on the same test rows
