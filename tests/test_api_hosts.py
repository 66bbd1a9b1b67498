"""The Host check: a loopback API answers its own names only (DNS rebinding), or a setting's."""

from __future__ import annotations

import io

import pytest
from api_fixtures import FAMILIES, MODEL, make_app, with_api

from api.hosts import allowed_hosts, host_name
from conf.contract import FEATURES
from conf.settings import ApiSettings, SettingsError, load_settings


@pytest.mark.parametrize(
    "header, name",
    [
        ("localhost:8000", "localhost"),
        ("LocalHost", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("::1", "::1"),
        ("api.example.org.", "api.example.org"),
    ],
)
def test_host_name_drops_port_brackets_and_case(header, name):
    """Check how a Host header reduces to the name compared."""
    assert host_name(header) == name


def test_allowed_hosts_follow_the_bind_unless_set():
    """Check the defaults: loopback bind -> its aliases; wildcard -> any; setting wins."""
    assert allowed_hosts(ApiSettings(host="127.0.0.1")) == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts(ApiSettings(host="10.1.2.3")) == {"10.1.2.3"}
    assert allowed_hosts(ApiSettings(host="0.0.0.0")) is None
    assert allowed_hosts(ApiSettings(host="127.0.0.1", allowed_hosts=("a.example",))) == {
        "a.example"
    }
    assert allowed_hosts(ApiSettings(allowed_hosts=("*",))) is None


def test_allowed_hosts_setting_is_parsed_and_checked():
    """Check API_ALLOWED_HOSTS: comma-separated, lower-cased; a port or path is refused."""
    parsed = load_settings(env={"API_ALLOWED_HOSTS": "API.example.org, 10.0.0.5"})
    assert parsed.api.allowed_hosts == ("api.example.org", "10.0.0.5")
    with pytest.raises(SettingsError, match="API_ALLOWED_HOSTS: expected host names"):
        load_settings(env={"API_ALLOWED_HOSTS": "evil.example/x"})


@pytest.mark.parametrize(
    "changes, host, status",
    [
        ({}, "localhost:8000", 200),
        ({}, "127.0.0.1:8000", 200),
        ({}, "[::1]:8000", 200),
        ({}, "rebind.attacker.example:8000", 400),
        ({}, "localhost.attacker.example", 400),
        ({"allowed_hosts": ("api.example.org",)}, "api.example.org", 200),
        ({"allowed_hosts": ("api.example.org",)}, "localhost", 400),
        ({"allowed_hosts": ("*",)}, "anything.example", 200),
        ({"host": "0.0.0.0"}, "anything.example", 200),
    ],
)
def test_requests_for_other_hosts_get_400_naming_the_header(
    settings, mongo_client, changes, host, status
):
    """Check that every endpoint, admin ones included, refuses a Host it does not serve."""
    app = make_app(with_api(settings, **{"host": "127.0.0.1", **changes}), mongo_client)
    client = app.test_client()
    health = client.get("/health", headers={"Host": host})
    assert health.status_code == status, health.json
    if status == 400:
        error = health.json["error"]
        assert error["code"] == "INVALID_INPUT" and "Host" in error["message"]
        assert error["details"] == [{"field": "Host", "problem": "not allowed"}]
        admin = client.post(
            "/models/activate", json={"name": "m", "version": 1}, headers={"Host": host}
        )
        assert admin.status_code == 400 and "Host" in admin.json["error"]["message"]


@pytest.mark.parametrize(
    "headers, field",
    [
        ({"Origin": "http://evil.example"}, "Origin"),
        ({"Origin": "null"}, "Origin"),
        ({"Origin": "http://localhost:9999"}, "Origin"),  # another port is another site
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://localhost"}, "Sec-Fetch-Site"),
    ],
)
def test_cross_site_writes_are_403_and_write_nothing(client, published, headers, field):
    """Check CSRF: a browser's multipart /batch-predict or activation from another site is
    refused with 403 naming the header, and predicciones.csv is not written."""
    from api_fixtures import output_dir

    saved = output_dir(published.settings) / "predicciones.csv"
    saved.unlink(missing_ok=True)
    batch = _upload(client, headers)
    assert batch.status_code == 403, batch.json
    assert batch.json["error"]["details"] == [{"field": field, "problem": "cross-site"}]
    assert not saved.exists()
    version = published.versions[FAMILIES[1]]
    for path, body in (
        ("/models/activate", {"name": MODEL, "version": version}),
        ("/models/rollback", {"name": MODEL}),
        ("/predict", {name: 50.0 for name in FEATURES}),
    ):
        answer = client.post(path, json=body, headers={"Host": "localhost", **headers})
        assert answer.status_code == 403, (path, answer.json)
    active = published.store.get_active_version(MODEL)
    assert active is not None and active.active_version == published.versions[FAMILIES[0]]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, requests, MLflow: no browser headers
        {"Origin": "http://localhost"},  # the console, served by this API
        {"Origin": "http://LOCALHOST", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # a URL typed by the user
    ],
)
def test_same_origin_and_non_browser_writes_pass(client, published, headers):
    """Check that the origin check refuses only other sites."""
    batch = _upload(client, headers)
    assert batch.status_code == 200, batch.data[:300]


def _upload(client, headers):
    """A browser-like multipart /batch-predict of one patient, with ``headers``."""
    csv = ",".join(FEATURES) + "\n" + ",".join(["50"] * len(FEATURES)) + "\n"
    return client.post(
        "/batch-predict",
        data={"file": (io.BytesIO(csv.encode()), "in.csv")},
        content_type="multipart/form-data",
        headers={"Host": "localhost", **headers},
    )
