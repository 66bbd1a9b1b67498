"""Check the API as another machine would reach it: HTTPS by setting, and slow clients.

Both start ``python -m api`` (granian, api/front.py) on loopback. The
certificate is self-signed and made here; the slow clients send a request head one
byte every 2 s, as many as the workers have threads twice over.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import select
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from api_fixtures import record
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from servers import ApiServer

from api.__main__ import main as api_main
from api.front import THREADS as THREADS_PER_WORKER

# Latency, memory and timeouts measured: run alone, after the parallel part (Makefile).
pytestmark = [pytest.mark.slow, pytest.mark.serial]

WORKERS = 2
SLOW_CLIENTS = 2 * WORKERS * THREADS_PER_WORKER
BYTE_EVERY_S = 2.0


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_predict_over_https_with_the_configured_certificate(published, tmp_path, monkeypatch):
    """Check that api.tls_cert/api.tls_key make the API serve /predict over HTTPS only."""
    cert, key = self_signed(tmp_path)
    server = ApiServer(
        published.settings,
        tmp_path,
        workers=1,
        config={"api": {"tls_cert": str(cert), "tls_key": str(key)}},
    )
    server.base = server.base.replace("http://", "https://")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trust this certificate only
    with server:
        answer = requests.post(server.url("/predict"), json=record(published.inputs[0]), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["version"] == published.versions["logistic_regression"]
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url("/health").replace("https://", "http://"), timeout=5)
        with pytest.raises(requests.exceptions.SSLError):  # the usual CAs do not vouch for it
            requests.get(server.url("/health"), timeout=5, verify=requests.certs.where())


class SlowClient(threading.Thread):
    """Sends a /predict request head one byte every 2 s until told to stop (bounded)."""

    HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

    def __init__(self, port: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.sent = 0
        self.answer = b""

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            for byte in self.HEAD:  # bounded: never more bytes than the head has
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return  # the server closed the connection
                self.sent += 1
                # The next byte in 2 s, unless the server answers or the test stops first (a
                # single 2 s select made each stop wait up to 2 s for the clients to join).
                answered: list = []
                deadline = time.monotonic() + BYTE_EVERY_S
                while not answered and not self.stop.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    answered, _, _ = select.select([sock], [], [], min(left, 0.05))
                if answered:  # the server answered (or closed) before the head was complete
                    try:
                        self.answer = sock.recv(200)
                    except OSError:
                        pass
                    return
                if self.stop.is_set():
                    return


def test_slow_header_clients_do_not_hold_the_workers(published, tmp_path):
    """Check /predict answers while 2 x workers x threads clients trickle their headers."""
    server = ApiServer(published.settings, tmp_path, workers=WORKERS)
    body = record(published.inputs[0])
    stop = threading.Event()
    clients = [SlowClient(server.port, stop) for _ in range(SLOW_CLIENTS)]
    with server:
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while any(c.sent < 2 for c in clients) and time.monotonic() < deadline:
            time.sleep(0.05)  # every slow client is connected and has sent bytes
        assert all(c.sent >= 2 for c in clients)
        try:
            for _ in range(10):
                # gthread alone gives every thread to a slow client: this would wait for
                # as long as they trickle (over a minute). 5 s is a generous bound.
                answer = requests.post(
                    server.url("/predict"), json=body, timeout=5, headers={"Connection": "close"}
                )
                assert answer.status_code == 200
            assert all(c.is_alive() for c in clients), "the slow clients must still be sending"
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=10)


def test_a_client_too_slow_for_the_timeout_is_closed(published, tmp_path):
    """Check that a head not complete within api.client_timeout_s is closed then, without
    an answer (granian, as nginx's client_header_timeout: nothing was asked yet)."""
    timeout = {"api": {"client_timeout_s": 3}}
    server = ApiServer(published.settings, tmp_path, workers=1, config=timeout)
    stop = threading.Event()
    client = SlowClient(server.port, stop)
    with server:
        started = time.monotonic()
        client.start()
        client.join(timeout=30)
        took = time.monotonic() - started
    stop.set()
    assert client.answer == b"", client.answer
    assert client.sent < len(SlowClient.HEAD)
    assert 3 <= took <= 3 + 2, took


@pytest.mark.parametrize(("given", "missing"), [("tls_cert", "tls_key"), ("tls_key", "tls_cert")])
def test_half_a_tls_setting_is_refused(tmp_path, capsys, given, missing):
    """Check that a certificate without its key (or the reverse) exits 2 naming both keys."""
    pem = tmp_path / "only.pem"
    pem.write_text("not used")
    config = tmp_path / "api.yaml"
    config.write_text(f"api:\n  {given}: {pem}\n")
    assert api_main(["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"api.{given} is set but api.{missing} is not" in error


def test_a_client_expecting_100_continue_gets_it_before_sending_its_body(published, tmp_path):
    """Check a small body awaiting '100 Continue' (as curl sends uploads) is not waited for."""
    body = json.dumps(record(published.inputs[0])).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with ApiServer(published.settings, tmp_path, workers=1) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head)
            sock.settimeout(5)  # curl itself gives up waiting after 1 s and sends anyway
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
