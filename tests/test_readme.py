"""The README's commands and links must exist: a newcomer types them as written."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry_bridge.cli import main as bridge

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SHELL_LINES = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.replace("\\\n", " ").splitlines()
    if line.strip()
]


def commands(prefix: str) -> list[list[str]]:
    found = []
    for line in SHELL_LINES:
        if not line.startswith(prefix):
            continue  # curl lines with JSON spread over several lines are not parsed
        for part in line.split(";"):
            words = shlex.split(part.split("#")[0])
            if words and words[0] == prefix:
                found.append(words)
    return found


def test_readme_shows_the_two_commands_first():
    """Check `make demo` and `make test` come before any other command."""
    assert SHELL_LINES[0].startswith("make demo") and SHELL_LINES[1].startswith("make test")


@pytest.mark.parametrize("words", commands("make"), ids=lambda w: " ".join(w))
def test_make_targets_exist(words):
    """Check every `make X` in the README is a Makefile target."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), words


@pytest.mark.parametrize("words", commands(".venv/bin/bridge"), ids=lambda w: " ".join(w))
def test_bridge_commands_and_options_exist(words):
    """Check every `bridge` line names a real subcommand with real options."""
    group, args = bridge, words[1:]
    while args and hasattr(group, "commands") and args[0] in group.commands:
        group, args = group.commands[args[0]], args[1:]
    assert group is not bridge, f"unknown command in {' '.join(words)}"
    help_text = CliRunner().invoke(group, ["--help"]).output
    for option in (a for a in args if a.startswith("--")):
        assert option in help_text, f"{option} is not an option of {' '.join(words[:3])}"


def test_python_modules_exist():
    """Check every `python -m X` the README mentions can be imported."""
    modules = set(re.findall(r"python -m ([\w.]+)", README))
    assert {"pipelines.train", "api", "demo"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_relative_links_point_at_files():
    """Check the README's links to docs and code exist in the repository."""
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).exists(), f"broken link: {target}"


def test_examples_write_under_outputs():
    """Check every file or directory an example writes (curl -o, --dst-path, --output,
    OUTPUT=, --plots) is under outputs/ or reports/, not the repository's root (issue 26);
    the cluster examples write to cluster storage (hdfs://, s3a://)."""
    targets = re.findall(
        r"(?:\s-o|--dst-path|--output|OUTPUT=|--plots)[ =]?(\S+)", "\n".join(SHELL_LINES)
    )
    assert targets, "no example writes anything?"
    for target in targets:
        if target in ("-",) or target.startswith(("hdfs:", "s3a:", "score-env")):
            continue
        assert target.startswith(("outputs/", "reports/")), f"an example writes {target}"


def test_the_data_path_is_a_placeholder_and_its_source_is_named():
    """Check the README names the UCI page and zip, and no example uses this machine's layout."""
    assert "https://archive.ics.uci.edu/dataset/212/vertebral+column" in README
    assert "vertebral+column.zip" in README
    assert "../shared" not in README
    exports = [line for line in SHELL_LINES if line.startswith("export VERTEBRAL_DATA=")]
    assert exports and all("/path/to/" in e or "/ruta/a/" in e for e in exports), exports


def test_every_make_variable_is_documented():
    """Check each variable the Makefile passes on ($(X_ARGS), INPUT, ...) is in the README."""
    makefile = (ROOT / "Makefile").read_text()
    internal = {"PY", "VENV", "STAMP", "MAKEFILE_LIST"}
    used = set(re.findall(r"\$\(([A-Z_]+)\)", makefile)) - internal
    used |= {"DEMO_TRIALS"}  # read by python -m demo from the environment
    missing = sorted(v for v in used if f"`{v}`" not in README)
    assert not missing, f"make variables the README does not document: {missing}"
