"""Figures of the reliability tests: each test records what it measured; the session writes
them to ``reports/reliability/summary.json`` and prints them as a table at the end."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import ROOT

SUMMARY = ROOT / "reports" / "reliability" / "summary.json"

# Filled by the ``figure`` fixture during the session, in the order tests record them.
_FIGURES: list[dict[str, Any]] = []


class Figures:
    """Records one row of the summary table: (area, what was measured, value, bound)."""

    def __init__(self, area: str):
        self.area = area

    def __call__(self, name: str, value: Any, bound: str = "") -> Any:
        _FIGURES.append({"area": self.area, "figure": name, "value": value, "bound": bound})
        return value


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figures:
    """``figure(name, value, bound)`` adds a row to the reliability summary."""
    area = getattr(request.module, "AREA", request.module.__name__.rsplit(".", 1)[-1])
    return Figures(area)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The summary as Markdown table lines (what the terminal and docs/reliability.md show)."""
    lines = ["| area | figure | value | bound |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {r['area']} | {r['figure']} | {_format(r['value'])} | {r['bound']} |" for r in rows
    ]
    return lines


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by area (the issue's points 1-6), each area's rows in the order recorded."""
    return sorted(rows, key=lambda row: row["area"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the figures of this session (nothing when no reliability test ran, and
    nothing from a pytest-xdist worker: it holds only its share; `make reliability` runs
    the whole table in one process)."""
    if not _FIGURES or hasattr(session.config, "workerinput"):
        return
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(
        json.dumps(
            {
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "exit_status": int(exitstatus),
                "figures": ordered(_FIGURES),
            },
            indent=2,
            default=str,
        )
        + "\n"
    )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the figures as a table after the test results."""
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for line in table(ordered(_FIGURES)):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {SUMMARY.relative_to(ROOT)})")
