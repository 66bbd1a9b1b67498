"""The project's settings: ``conf/default.yaml`` overridden by environment variables.

Every module reads its knobs from :func:`load_settings`, so a value has one source
of truth. A bad value fails here, at start-up, with a one-line
:class:`SettingsError` that names the key (``API_PORT``, ``api.port``...).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from conf.contract import FAMILIES, GATE_METRICS, check_model_name

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
CONFIG_ENV = "VERTEBRAL_CONFIG"


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class EmbeddedSettings:
    host: str = "127.0.0.1"
    port: int = 27018
    data_dir: Path = Path(".registry")


@dataclass(frozen=True)
class RegistrySettings:
    mongodb_uri: str | None = None
    database: str = "model_registry"
    bucket: str = "models"
    timeout_ms: int = 3000
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: Path = Path("mlruns/artifacts")
    experiment: str = "vertebral-column"
    mirror: bool = True
    alias: str = "production"


@dataclass(frozen=True)
class DataSettings:
    path: Path | None = None
    cache_dir: Path = Path("data")
    url: str = "https://archive.ics.uci.edu/static/public/212/vertebral+column.zip"
    variant: str = "auto"


@dataclass(frozen=True)
class TrainingSettings:
    trials: int = 40
    timeout: float | None = None
    seed: int = 42
    test_size: float = 0.2
    cv_folds: int = 5
    objective: str = "f1_macro"
    families: tuple[str, ...] = FAMILIES
    reports_dir: Path = Path("reports/training")
    threshold_rule: str = "youden"
    validation_size: float = 0.0


@dataclass(frozen=True)
class OutputRetention:
    """Per-job batch files kept when a job ends: the newest ``count``, or those younger
    than ``max_age_s`` (``api.output_retention``: ``20`` or ``7d``, ``12h``, ``30m``)."""

    count: int | None = 20
    max_age_s: float | None = None


@dataclass(frozen=True)
class ApiSettings:
    model_name: str = "vertebral-column"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    admin_token: str | None = None
    feedback_token: str | None = None
    max_records: int = 10000
    max_upload_mb: int = 512
    max_request_mb: int = 16
    output_retention: OutputRetention = field(default_factory=OutputRetention)
    batch_chunk_rows: int = 50000
    output_dir: Path = Path("outputs")
    pointer_lease_ms: int = 250
    prepare_timeout_s: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_timeout_s: float = 10.0
    max_pending_connections: int = 10000
    max_buffered_mb: int = 64
    allowed_hosts: tuple[str, ...] = ()  # empty: the bind host and its loopback aliases
    models: tuple[str, ...] = ()  # empty: every registered name is served
    max_loaded_versions: int = 8


@dataclass(frozen=True)
class CaptureSettings:
    sample_percent: float = 20.0
    retention_days: float = 30.0
    queue_size: int = 10000
    max_rows_per_request: int = 1000
    max_records_per_minute: int = 60000


@dataclass(frozen=True)
class MonitorSettings:
    psi_threshold: float = 0.2
    ks_threshold: float = 0.2
    min_samples: int = 50
    max_quality_drop: float = 0.10
    min_labelled: int = 50


@dataclass(frozen=True)
class GateRule:
    """One promotion rule: MLflow's ``MetricThreshold`` on one metric (any subset of the
    three bounds; ``greater_is_better`` comes from conf.contract.GATE_METRICS)."""

    metric: str
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None


@dataclass(frozen=True)
class PromotionSettings:
    rules: tuple[GateRule, ...] = ()  # empty: activation is not gated


@dataclass(frozen=True)
class CanarySettings:
    """The canary's guardrails (registry_bridge/canary.py), per worker over ``window_s``."""

    max_error_rate_increase: float = 0.05
    max_p99_ratio: float = 3.0
    min_requests: int = 20
    window_s: float = 60.0


@dataclass(frozen=True)
class WebhookSettings:
    allow_private: bool = False
    max_webhooks: int = 20
    max_attempts: int = 10
    backoff_s: float = 2.0
    backoff_max_s: float = 600.0
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    lease_s: float = 60.0
    poll_s: float = 0.25
    send_from_api: bool = True
    retention_days: float = 30.0


@dataclass(frozen=True)
class ShadowSettings:
    queue_records: int = 20_000  # per worker: copies beyond it are dropped, never requests


@dataclass(frozen=True)
class Settings:
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    config_file: Path = DEFAULT_CONFIG


# --- value parsers: each raises ValueError with what was expected -------------------


def _text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or str(value).strip() == "":
        raise ValueError("expected a non-empty text")
    return str(value).strip()


def _optional_text(value: Any) -> str | None:
    return None if value in (None, "") else _text(value)


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            number = int(str(value).strip())
        except (TypeError, ValueError):
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < low or (high is not None and number > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"expected a number in {bounds}, got {number}")
        return number

    return parse


def _port(value: Any) -> int:
    try:
        return _int(1, 65535)(value)
    except ValueError:
        raise ValueError(f"expected a port number 1..65535, got {value!r}") from None


def _checked_float(
    value: Any, ok: Callable[[float], bool], expected: str, not_a_number: str | None = None
) -> float:
    """``value`` as a float when ``ok``; else ValueError "expected <expected>, got <value>"."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {not_a_number or expected}, got {value!r}") from None
    if not ok(number):
        raise ValueError(f"expected {expected}, got {value!r}")
    return number


def _fraction(value: Any) -> float:
    return _checked_float(value, lambda n: 0.0 < n < 1.0, "a number between 0 and 1")


def _number(
    low: float, high: float | None = None, *, above: bool = False
) -> Callable[[Any], float]:
    """A parser of numbers in [low, high] (or (low, high] when ``above``)."""

    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number) or number < low or (above and number == low):
            raise ValueError(
                f"expected a finite number {'>' if above else '>='} {low:g}, got {value!r}"
            )
        if high is not None and number > high:
            raise ValueError(f"expected a number <= {high:g}, got {value!r}")
        return number

    return parse


def _share(value: Any) -> float:
    return _checked_float(value, lambda n: 0.0 <= n < 1.0, "a number in [0, 1)")


def _threshold_rule(value: Any) -> str:
    text = _text(value).lower()
    if text in ("youden", "f1"):
        return text
    try:
        number = float(text)
    except ValueError:
        raise ValueError(
            f"expected youden, f1 or a fixed threshold between 0 and 1, got {value!r}"
        ) from None
    if not 0.0 < number < 1.0:
        raise ValueError(f"expected a fixed threshold between 0 and 1, got {value!r}")
    return repr(number)


def _optional_seconds(value: Any) -> float | None:
    if value in (None, ""):
        return None
    return _checked_float(
        value, lambda n: n > 0, "a positive number of seconds", "seconds as a number"
    )


def _seconds(value: Any) -> float:
    return _checked_float(
        value, lambda n: 0 <= n <= 3600, "a number of seconds in 0..3600", "seconds as a number"
    )


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _retention(value: Any) -> OutputRetention:
    text = str(value).strip().lower()
    found = re.fullmatch(r"([0-9]+)\s*([smhd]?)", text)
    if found is None or int(found.group(1)) < 1:
        raise ValueError(
            f"expected a number of files (e.g. 20) or an age (e.g. 7d, 12h, 30m), got {value!r}"
        )
    amount, unit = int(found.group(1)), found.group(2)
    if not unit:
        return OutputRetention(count=amount)
    return OutputRetention(count=None, max_age_s=float(amount * _AGE_UNITS[unit]))


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


# The least length of a bearer token that only sends feedback: long enough not to guess.
FEEDBACK_TOKEN_MIN_CHARS = 16


def _feedback_token(value: Any) -> str | None:
    token = _optional_text(value)
    if token is not None and len(token) < FEEDBACK_TOKEN_MIN_CHARS:
        raise ValueError(
            f"expected at least {FEEDBACK_TOKEN_MIN_CHARS} characters, got {len(token)}"
        )
    return token


def _alias(value: Any) -> str:
    text = _text(value)
    # MLflow's alias rule: letters, digits, _ and -, not a version-like "v<number>"/"latest".
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", text) or re.fullmatch(r"[vV]\d+|latest", text):
        raise ValueError(f"expected an MLflow alias (letters, digits, _ or -), got {text!r}")
    return text


def _path(value: Any) -> Path:
    return Path(_text(value)).expanduser()


def _existing_file(value: Any) -> Path | None:
    if value in (None, ""):
        return None
    path = _path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


def _families(value: Any) -> tuple[str, ...]:
    known = FAMILIES
    if value is None:  # left empty in the YAML: every family of the contract
        return known
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a non-empty list of model families")
    unknown = [name for name in value if name not in known]
    if unknown:
        raise ValueError(f"unknown model families {unknown}; known: {', '.join(known)}")
    return tuple(value)


def _listed(value: Any, what: str) -> list[Any]:
    """A list setting, given as a YAML list or (from the environment) comma-separated text."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of {what} (or a comma-separated text)")
    return list(value)


def _host_names(value: Any) -> tuple[str, ...]:
    names = tuple(str(name).strip().lower() for name in _listed(value, "host names"))
    bad = [name for name in names if not name or any(c in name for c in " /@\t\r\n")]
    if bad:
        raise ValueError(f"expected host names without ports, paths or spaces, got {bad}")
    return names


def _model_names(value: Any) -> tuple[str, ...]:
    names = _listed(value, "model names")
    return tuple(dict.fromkeys(check_model_name(_text(name)) for name in names))


_BOUNDS = ("threshold", "min_absolute_change", "min_relative_change")


def _gate_rules(value: Any) -> tuple[GateRule, ...]:
    """``{metric: {threshold, min_absolute_change, min_relative_change}}`` (any subset), with
    MLflow's ``MetricThreshold`` limits: a positive absolute change, a relative one in [0, 1]."""
    if value in (None, ""):
        return ()
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of metric names to their bounds")
    rules = []
    for metric, bounds in value.items():
        if metric not in GATE_METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(GATE_METRICS)}")
        if not isinstance(bounds, Mapping) or not bounds:
            raise ValueError(f"{metric}: expected one or more of {', '.join(_BOUNDS)}")
        unknown = [key for key in bounds if key not in _BOUNDS]
        if unknown:
            raise ValueError(f"{metric}: unknown bound(s) {unknown}; known: {', '.join(_BOUNDS)}")
        parsed = {}
        for key, raw in bounds.items():
            try:
                parsed[key] = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{metric}.{key}: expected a number, got {raw!r}") from None
            if not math.isfinite(parsed[key]):
                raise ValueError(f"{metric}.{key}: expected a finite number, got {raw!r}")
        if parsed.get("min_absolute_change", 1.0) <= 0:
            raise ValueError(f"{metric}.min_absolute_change: expected a number > 0")
        if not 0.0 <= parsed.get("min_relative_change", 0.0) <= 1.0:
            raise ValueError(f"{metric}.min_relative_change: expected a number in [0, 1]")
        rules.append(GateRule(str(metric), **parsed))
    return tuple(rules)


# (section, key) -> parser; "embedded.x" keys live under registry.embedded.
_SCHEMA: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("registry", "mongodb_uri"): _optional_text,
    ("registry", "database"): _text,
    ("registry", "bucket"): _text,
    ("registry", "timeout_ms"): _int(100),
    ("registry.embedded", "host"): _text,
    ("registry.embedded", "port"): _port,
    ("registry.embedded", "data_dir"): _path,
    ("mlflow", "tracking_uri"): _text,
    ("mlflow", "artifact_root"): _path,
    ("mlflow", "experiment"): _text,
    ("mlflow", "mirror"): _bool,
    ("mlflow", "alias"): _alias,
    ("data", "path"): _existing_file,
    ("data", "cache_dir"): _path,
    ("data", "url"): _text,
    ("data", "variant"): _choice("3C", "2C", "auto"),
    ("training", "trials"): _int(1),
    ("training", "timeout"): _optional_seconds,
    ("training", "seed"): _int(0),
    ("training", "test_size"): _fraction,
    ("training", "cv_folds"): _int(2, 20),
    ("training", "objective"): _choice("f1_macro", "balanced_accuracy", "accuracy", "roc_auc_ovr"),
    ("training", "families"): _families,
    ("training", "reports_dir"): _path,
    ("training", "threshold_rule"): _threshold_rule,
    ("training", "validation_size"): _share,
    ("api", "model_name"): lambda value: check_model_name(_text(value)),
    ("api", "host"): _text,
    ("api", "port"): _port,
    ("api", "workers"): _int(1, 64),
    ("api", "admin_token"): _optional_text,
    ("api", "feedback_token"): _feedback_token,
    ("api", "max_records"): _int(1),
    ("api", "max_upload_mb"): _int(1),
    ("api", "max_request_mb"): _int(1),
    ("api", "output_retention"): _retention,
    ("api", "batch_chunk_rows"): _int(1),
    ("api", "output_dir"): _path,
    ("api", "pointer_lease_ms"): _int(0, 10000),
    ("api", "prepare_timeout_s"): _seconds,
    ("api", "tls_cert"): _existing_file,
    ("api", "tls_key"): _existing_file,
    ("api", "client_timeout_s"): _seconds,
    ("api", "max_pending_connections"): _int(4, 100000),
    ("api", "max_buffered_mb"): _int(4, 4096),
    ("api", "allowed_hosts"): _host_names,
    ("api", "models"): _model_names,
    ("api", "max_loaded_versions"): _int(1, 1000),
    ("capture", "sample_percent"): _number(0, 100),
    # Ten years at most: a longer TTL overflows MongoDB's and datetime's ranges.
    ("capture", "retention_days"): _number(0, 3650, above=True),
    ("capture", "queue_size"): _int(1),
    ("capture", "max_rows_per_request"): _int(1),
    ("capture", "max_records_per_minute"): _int(1),
    ("monitor", "psi_threshold"): _number(0, above=True),
    ("monitor", "ks_threshold"): _number(0, 1, above=True),
    ("monitor", "min_samples"): _int(1),
    ("monitor", "max_quality_drop"): _number(0, 1),
    ("monitor", "min_labelled"): _int(1),
    # A mapping, read whole (not walked into as sections).
    ("promotion", "rules"): _gate_rules,
    ("canary", "max_error_rate_increase"): _number(0, 1),
    ("canary", "max_p99_ratio"): _number(1),
    ("canary", "min_requests"): _int(1),
    ("canary", "window_s"): _number(1, 3600),
    ("shadow", "queue_records"): _int(1, 10_000_000),
    ("webhooks", "allow_private"): _bool,
    ("webhooks", "max_webhooks"): _int(1, 1000),
    ("webhooks", "max_attempts"): _int(1, 50),
    ("webhooks", "backoff_s"): _number(0, 3600, above=True),
    ("webhooks", "backoff_max_s"): _number(0, 86400, above=True),
    ("webhooks", "connect_timeout_s"): _number(0, 60, above=True),
    ("webhooks", "read_timeout_s"): _number(0, 120, above=True),
    ("webhooks", "lease_s"): _number(0, 3600, above=True),
    ("webhooks", "poll_s"): _number(0, 60, above=True),
    ("webhooks", "send_from_api"): _bool,
    ("webhooks", "retention_days"): _number(0, 3650, above=True),
}

# The environment variables of DESIGN.md and the key each overrides.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "MONGODB_URI": ("registry", "mongodb_uri"),
    "REGISTRY_DB": ("registry", "database"),
    "MLFLOW_TRACKING_URI": ("mlflow", "tracking_uri"),
    "VERTEBRAL_DATA": ("data", "path"),
    "MODEL_NAME": ("api", "model_name"),
    "API_HOST": ("api", "host"),
    "API_PORT": ("api", "port"),
    "API_WORKERS": ("api", "workers"),
    "API_ADMIN_TOKEN": ("api", "admin_token"),
    "API_FEEDBACK_TOKEN": ("api", "feedback_token"),
    "API_TLS_CERT": ("api", "tls_cert"),
    "API_TLS_KEY": ("api", "tls_key"),
    "API_ALLOWED_HOSTS": ("api", "allowed_hosts"),
    "OUTPUT_DIR": ("api", "output_dir"),
    "CAPTURE_SAMPLE_PERCENT": ("capture", "sample_percent"),
}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(
            f"config file {path} is not valid YAML: {exc}".splitlines()[0]
        ) from None
    if not isinstance(loaded, dict):
        raise SettingsError(f"config file {path} must hold a mapping of sections")
    return loaded


def _flatten(tree: Mapping[str, Any], path: Path) -> dict[tuple[str, str], Any]:
    """Turn the YAML tree into (section, key) pairs, rejecting unknown keys."""
    flat: dict[tuple[str, str], Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and (prefix, str(key)) not in _SCHEMA:
                walk(dotted, value)
                continue
            section, _, leaf = dotted.rpartition(".")
            if (section, leaf) not in _SCHEMA:
                raise SettingsError(f"{dotted}: unknown setting in {path}")
            flat[(section, leaf)] = value

    walk("", tree)
    return flat


def load_settings(
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the config file, apply environment overrides, validate every value.

    Args:
        config: YAML file; default ``$VERTEBRAL_CONFIG`` or ``conf/default.yaml``.
        env: environment to read (default ``os.environ``); tests pass their own.
        overrides: ``{"section.key": value}`` from a CLI's options (highest
            precedence; ``None`` values are ignored).

    Raises:
        SettingsError: a value is invalid; the message starts with the key.
    """
    env = os.environ if env is None else env
    config_path = Path(config or env.get(CONFIG_ENV) or DEFAULT_CONFIG)
    values: dict[tuple[str, str], tuple[str, Any]] = {}
    defaults = _read_yaml(DEFAULT_CONFIG) if config_path != DEFAULT_CONFIG else {}
    for source, tree in ((DEFAULT_CONFIG, defaults), (config_path, _read_yaml(config_path))):
        for key, value in _flatten(tree, source).items():
            values[key] = (f"{key[0]}.{key[1]}", value)
    for var, key in ENV_OVERRIDES.items():
        if var in env:
            values[key] = (var, env[var])
    for dotted, value in (overrides or {}).items():
        group, _, leaf = dotted.rpartition(".")
        if (group, leaf) not in _SCHEMA:
            raise SettingsError(f"{group}.{leaf}: unknown setting")
        if value is not None:
            values[(group, leaf)] = (f"{group}.{leaf}", value)

    parsed: dict[tuple[str, str], Any] = {}
    for key, (label, raw) in values.items():
        try:
            parsed[key] = _SCHEMA[key](raw)
        except ValueError as exc:
            raise SettingsError(f"{label}: {exc}") from None

    def section(name: str, cls: type) -> Any:
        return cls(**{leaf: v for (sec, leaf), v in parsed.items() if sec == name})

    registry = replace(
        section("registry", RegistrySettings),
        embedded=section("registry.embedded", EmbeddedSettings),
    )
    return Settings(
        registry=registry,
        mlflow=section("mlflow", MlflowSettings),
        data=section("data", DataSettings),
        training=section("training", TrainingSettings),
        api=section("api", ApiSettings),
        capture=section("capture", CaptureSettings),
        monitor=section("monitor", MonitorSettings),
        promotion=section("promotion", PromotionSettings),
        canary=section("canary", CanarySettings),
        shadow=section("shadow", ShadowSettings),
        webhooks=section("webhooks", WebhookSettings),
        config_file=config_path,
    )
