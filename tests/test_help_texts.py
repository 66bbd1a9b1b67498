"""Consistent help texts (issue 26): every command describes --config the same way, takes
-h, shows no reStructuredText markup, and `bridge --help` prints whole summaries."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

CONFIG_HELP = "YAML settings file (default: $VERTEBRAL_CONFIG or conf/default.yaml)."


def click_help(module: str) -> str:
    import importlib

    command = importlib.import_module(module).main
    result = CliRunner().invoke(command, ["-h"], terminal_width=200)
    assert result.exit_code == 0, f"{module} -h: {result.output}"
    return result.output


@pytest.mark.parametrize(
    "module", ["registry_bridge.cli", "pipelines.train", "pipelines.mlflow_ui", "demo.__main__"]
)
def test_click_commands_take_h_and_describe_config_alike(module):
    """Check -h works and --config reads the same everywhere, with no RST markup."""
    text = click_help(module)
    assert CONFIG_HELP in " ".join(text.split()), text
    assert "``" not in text


def test_python_m_api_help_is_plain_and_describes_config_alike(capsys):
    """Check `python -m api --help` shows no RST markup and the same --config wording."""
    from api.__main__ import _parse

    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "``" not in text and CONFIG_HELP.rstrip(".") in text


def test_bridge_help_prints_whole_summaries():
    """Check no command summary is cut short with '...' (Click cuts at the terminal width)."""
    from registry_bridge.cli import main

    text = CliRunner().invoke(main, ["--help"]).output
    assert "..." not in text.split("Commands:")[1], text
    assert "(a worker silent for 3 heartbeats is shown as gone, then removed)" in " ".join(
        text.split()
    )
