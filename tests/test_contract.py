"""The run contract's shared rules: version numbers and the family list."""

from __future__ import annotations

import pytest

from conf.contract import (
    FAMILIES,
    MAX_VERSION,
    ContractError,
    check_model_name,
    parse_version,
)
from conf.settings import load_settings


@pytest.mark.parametrize(
    "given, expected", [(1, 1), ("7", 7), (" v12 ", 12), ("V3", 3), (str(MAX_VERSION), MAX_VERSION)]
)
def test_versions_accepted(given, expected):
    """Check that whole numbers of ASCII digits (optionally v-prefixed) parse to the int."""
    assert parse_version(given) == expected


@pytest.mark.parametrize(
    "given, problem",
    [
        ("٢", "not a whole number"),  # Arabic-Indic two: int() would take it
        ("1_0", "not a whole number"),  # int() would read 10
        ("+3", "not a whole number"),
        ("1.0", "not a whole number"),
        ("", "not a whole number"),
        (2.0, "not a whole number"),
        (True, "not a whole number"),
        (None, "missing"),
        (0, "not positive"),
        ("0", "not positive"),
        (-4, "not positive"),
        (2**63, "too large"),
        (str(2**63), "too large"),
        pytest.param("9" * 100_000, "too large", id="100k-digit-text"),
        pytest.param(10**5000, "too large", id="5000-digit-int"),
    ],
)
def test_versions_refused_name_the_field(given, problem):
    """Check that each refused version names the field and the problem, and echoes little."""
    with pytest.raises(ContractError) as caught:
        parse_version(given)
    assert (caught.value.field, caught.value.problem) == ("version", problem)
    assert str(caught.value).startswith("'version' must be") and len(str(caught.value)) < 200


def test_settings_default_to_every_contract_family():
    """Check that the default settings search exactly the contract's families, in its order."""
    from pipelines.families import FAMILIES as SPECS

    assert load_settings().training.families == FAMILIES
    assert tuple(SPECS) == FAMILIES


@pytest.mark.parametrize("name", ["vertebral-column", "m1", "A.b_c-2", "x" * 100])
def test_model_names_accepted(name):
    """Check that plain ASCII names within the rule pass unchanged."""
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name, problem",
    [
        ("../x", "not allowed"),
        ("a/b", "not allowed"),
        (".hidden", "not allowed"),
        ("a\nb", "not allowed"),
        ("ab\n", "not allowed"),
        ("$ne", "not allowed"),
        ("a b", "not allowed"),
        ("модель", "not allowed"),
        ("x" * 101, "too long"),
        ("", "missing"),
        (None, "missing"),
        ({"$ne": None}, "not a text"),
    ],
)
def test_model_names_refused_name_the_field(name, problem):
    """Check that each name outside the rule is refused naming the field and the problem."""
    with pytest.raises(ContractError) as caught:
        check_model_name(name)
    assert (caught.value.field, caught.value.problem) == ("name", problem)
    assert str(caught.value).startswith("'name' must be")


def test_a_module_over_500_lines_says_why_at_its_top():
    """Check the layout rule: a module of api/, registry_bridge/ or pipelines/ longer than
    500 lines says in its docstring's first lines why it is ("Over 500 lines...")."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    silent = []
    for package in ("api", "registry_bridge", "pipelines"):
        for path in sorted((root / package).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            if len(lines) > 500 and not any("Over 500 lines" in line for line in lines[:8]):
                silent.append(f"{path.relative_to(root)} ({len(lines)} lines)")
    assert silent == []
