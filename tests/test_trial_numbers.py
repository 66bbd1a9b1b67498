"""One trial numbering (issue 26): the progress line said ``trial 13/40`` for the trial the
best-trial table called ``trial 12`` and MLflow named ``trial-012-…``."""

from __future__ import annotations

from pipelines.results import TrialOutcome
from pipelines.study import trial_run_name
from pipelines.train import ProgressPrinter


def test_the_progress_line_the_table_and_the_run_name_share_one_number(capsys):
    """Check trial 12 is "trial 12" on its progress line (13 done of 40) and trial-012 in MLflow."""
    outcome = TrialOutcome(12, "svc", "complete", 0.8123, 1.5, "run", {}, {})
    ProgressPrinter(40, "f1_macro")(outcome)
    line = capsys.readouterr().out
    assert line.split()[:3] == ["trial", "12", "(13/40)"], line
    assert trial_run_name(outcome.number, outcome.family) == "trial-012-svc"
