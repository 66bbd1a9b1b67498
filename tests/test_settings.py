"""Configuration: conf/default.yaml, environment overrides, one-line errors naming the key."""

from pathlib import Path

import pytest

from conf.settings import DEFAULT_CONFIG, ENV_OVERRIDES, SettingsError, load_settings


def test_defaults_match_design():
    """Check that the defaults are DESIGN.md's configuration table."""
    s = load_settings(env={})
    assert s.registry.mongodb_uri is None
    assert s.registry.database == "model_registry"
    assert (s.registry.embedded.host, s.registry.embedded.port) == ("127.0.0.1", 27018)
    assert s.registry.embedded.data_dir == Path(".registry")
    assert s.mlflow.tracking_uri == "sqlite:///mlruns/mlflow.db"
    assert s.data.path is None and s.data.cache_dir == Path("data")
    assert s.api.model_name == "vertebral-column"
    assert (s.api.host, s.api.port, s.api.workers) == ("127.0.0.1", 8000, 2)
    assert s.api.admin_token is None
    assert s.api.output_dir == Path("outputs")


def test_every_default_key_is_commented():
    """Check that each key in default.yaml sits under a comment (its own or its group's)."""
    commented = False
    for line in DEFAULT_CONFIG.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            commented = True
        elif stripped.endswith(":"):  # a section header starts a new group
            commented = False
        else:
            assert commented, f"no comment explains {stripped!r}"


def test_environment_wins_over_file(tmp_path):
    """Check that every DESIGN.md variable overrides its key."""
    data = tmp_path / "d.csv"
    data.write_text("x")
    env = {
        "MONGODB_URI": "mongodb://db.example:27017/",
        "REGISTRY_DB": "other_db",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "VERTEBRAL_DATA": str(data),
        "MODEL_NAME": "my-model",
        "API_HOST": "0.0.0.0",
        "API_PORT": "9000",
        "API_WORKERS": "4",
        "API_ADMIN_TOKEN": "s3cret",
        "API_FEEDBACK_TOKEN": "feedback-0123456789",
        "OUTPUT_DIR": str(tmp_path / "out"),
        "CAPTURE_SAMPLE_PERCENT": "100",
        "API_TLS_CERT": str(data),
        "API_TLS_KEY": str(data),
        "API_ALLOWED_HOSTS": "api.example.org,10.0.0.5",
    }
    assert set(env) == set(ENV_OVERRIDES)
    s = load_settings(env=env)
    assert s.registry.mongodb_uri == "mongodb://db.example:27017/"
    assert s.registry.database == "other_db"
    assert s.mlflow.tracking_uri == "http://127.0.0.1:5000"
    assert s.data.path == data
    assert s.api.model_name == "my-model"
    assert (s.api.host, s.api.port, s.api.workers) == ("0.0.0.0", 9000, 4)
    assert s.api.admin_token == "s3cret"
    assert s.api.feedback_token == "feedback-0123456789"
    assert (s.api.tls_cert, s.api.tls_key) == (data, data)
    assert s.api.output_dir == tmp_path / "out"
    assert s.capture.sample_percent == 100
    assert s.api.allowed_hosts == ("api.example.org", "10.0.0.5")


def test_config_file_overrides_defaults_and_cli_overrides_win(tmp_path):
    """Check the precedence: default.yaml < --config file < environment < CLI overrides."""
    config = tmp_path / "my.yaml"
    config.write_text("training:\n  trials: 7\n  seed: 3\napi:\n  port: 8100\n")
    s = load_settings(config, env={"API_PORT": "8200"}, overrides={"training.seed": 11})
    assert s.training.trials == 7
    assert s.training.seed == 11
    assert s.api.port == 8200
    assert s.api.workers == 2  # untouched keys keep the default
    assert s.config_file == config


@pytest.mark.parametrize(
    "env, message",
    [
        ({"API_PORT": "eighty"}, r"^API_PORT: expected a port number"),
        ({"API_PORT": "70000"}, r"^API_PORT: expected a port number"),
        ({"API_WORKERS": "0"}, r"^API_WORKERS: expected a number in 1\.\.64"),
        (
            {"VERTEBRAL_DATA": "/no/such/file.csv"},
            r"^VERTEBRAL_DATA: no such file: /no/such/file.csv",
        ),
        ({"MODEL_NAME": " "}, r"^MODEL_NAME: expected a non-empty text"),
    ],
)
def test_bad_environment_value_names_the_variable(env, message):
    """Check that a bad value fails with one line starting with the variable's name."""
    with pytest.raises(SettingsError, match=message) as info:
        load_settings(env=env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("api:\n  port: abc\n", r"^api\.port: expected a port number"),
        ("data:\n  variant: 4C\n", r"^data\.variant: expected one of 3C, 2C"),
        # A retention the writer cannot turn into a date or a TTL (it used to die silently).
        ("capture:\n  retention_days: inf\n", r"^capture\.retention_days: expected a finite"),
        ("capture:\n  retention_days: .nan\n", r"^capture\.retention_days: expected a finite"),
        ("capture:\n  retention_days: 1e6\n", r"^capture\.retention_days: expected a number <="),
        ("capture:\n  max_records_per_minute: 0\n", r"^capture\.max_records_per_minute: "),
        ("training:\n  test_size: 2\n", r"^training\.test_size: expected a number between 0 and 1"),
        (
            "training:\n  families: [nope]\n",
            r"^training\.families: unknown model families",
        ),
        ("training:\n  threshold_rule: best\n", r"^training\.threshold_rule: expected youden, f1"),
        ("training:\n  threshold_rule: 1.5\n", r"^training\.threshold_rule: expected a fixed"),
        ("training:\n  validation_size: 1\n", r"^training\.validation_size: expected a number"),
        ("api:\n  colour: blue\n", r"^api\.colour: unknown setting"),
        ("api: [1, 2\n", r"is not valid YAML"),
    ],
)
def test_bad_config_file_value_names_the_key(tmp_path, text, message):
    """Check that a bad file value fails with the dotted key named."""
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(config, env={})


@pytest.mark.parametrize(
    ("given", "stored"), [("youden", "youden"), ("F1", "f1"), ("0.65", "0.65"), (0.7, "0.7")]
)
def test_threshold_rule_is_a_rule_or_a_fixed_value(given, stored):
    """Check that training.threshold_rule takes youden, f1 or a number in (0, 1)."""
    settings = load_settings(env={}, overrides={"training.threshold_rule": given})
    assert settings.training.threshold_rule == stored


def test_missing_config_file_is_named(tmp_path):
    """Check that a --config path that does not exist is named."""
    with pytest.raises(SettingsError, match="config file not found: .*nope.yaml"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_empty_mongodb_uri_means_embedded():
    """Check that MONGODB_URI='' (as docker compose may pass) selects the embedded server."""
    assert load_settings(env={"MONGODB_URI": ""}).registry.mongodb_uri is None


@pytest.mark.parametrize(
    ("variable", "value"), [("CAPTURE_SAMPLE_PERCENT", "101"), ("CAPTURE_SAMPLE_PERCENT", "-1")]
)
def test_capture_share_outside_0_to_100_is_refused(variable, value):
    """Check that a sampling percentage outside 0..100 fails at start-up naming the variable."""
    with pytest.raises(SettingsError, match=variable):
        load_settings(env={variable: value})


def test_the_dataclass_defaults_are_conf_default_yaml():
    """Check that every default is written once in effect: conf/default.yaml, read with no
    environment, gives exactly the dataclasses' defaults (code that builds Settings()
    directly, like the tests and the bench, sees what a user's file says)."""
    from dataclasses import fields, is_dataclass

    from conf.settings import Settings

    def differences(read, coded, path="settings"):
        if not is_dataclass(read):
            return [] if read == coded else [f"{path}: yaml {read!r}, dataclass {coded!r}"]
        return [
            d
            for f in fields(read)
            for d in differences(getattr(read, f.name), getattr(coded, f.name), f"{path}.{f.name}")
        ]

    assert differences(load_settings(env={}), Settings()) == []
