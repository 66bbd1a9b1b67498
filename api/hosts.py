"""Which host names the API answers: the bind host and its loopback aliases, or a setting.

A browser sends the name it resolved in ``Host``. A page on another site can make its
own name resolve to 127.0.0.1 (DNS rebinding) and then call a loopback API as if it
were same-origin; checking ``Host`` against the names the API is bound to stops that.
"""

from __future__ import annotations

import ipaddress
import socket

from conf.settings import ApiSettings
from registry_bridge.errors import RegistryError
from registry_bridge.scoring.schema import shown

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names resolving only to loopback addresses."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    )


def allowed_hosts(api: ApiSettings) -> frozenset[str] | None:
    """The host names (lower case, no port) the API answers; None when it answers any."""
    if api.allowed_hosts:
        return None if "*" in api.allowed_hosts else frozenset(api.allowed_hosts)
    host = api.host.strip().strip("[]").lower()
    if host in _WILDCARDS:  # every interface: the names clients use are not known here
        return None
    return frozenset({host, *LOOPBACK_NAMES}) if is_loopback(host) else frozenset({host})


def host_name(header: str) -> str:
    """The name in a ``Host`` header, lower case, without port, brackets or final dot."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8000
        name = header[1 : header.find("]")] if "]" in header else header[1:]
    elif header.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        name = header.rpartition(":")[0]
    else:
        name = header
    return name.rstrip(".")


# Methods a browser may send across sites without asking first (no CORS preflight for a
# form post or a multipart upload): every state-changing route is one of these.
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values a page of this API itself (the console) or a typed URL sends.
_SAME_SITE = frozenset({"same-origin", "none"})


def cross_site_field(
    method: str, origin: str | None, fetch_site: str | None, host: str, allowed: frozenset[str]
) -> str | None:
    """The header showing a write comes from another site (CSRF), or None.

    A browser names the page that made a request in ``Origin`` and ``Sec-Fetch-Site``;
    clients that are not browsers (curl, requests, MLflow) send neither, so they pass.
    ``Origin: null`` (a sandboxed frame, a file) is refused: its page cannot be known.
    """
    if method not in _WRITES:
        return None
    if fetch_site is not None and fetch_site.strip().lower() not in _SAME_SITE:
        return "Sec-Fetch-Site"
    if origin is None:
        return None
    scheme, sep, netloc = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https"):
        return "Origin"
    if netloc == host.strip().lower() or host_name(netloc) in allowed:
        return None
    return "Origin"


class SiteCheck:
    """The two checks of where a request comes from, for every path that answers one:
    the Flask app's first hook, and api/fast.py, which hands a refused request to it."""

    def __init__(self, api: ApiSettings):
        self.allowed = allowed_hosts(api)
        self.named = frozenset(name for name in api.allowed_hosts if name != "*")

    def refusal(
        self, method: str, host: str, origin: str | None, fetch_site: str | None
    ) -> RegistryError | None:
        """The error a request from an unknown Host (400) or another site (403) gets."""
        if self.allowed is not None and host_name(host) not in self.allowed:
            return RegistryError(
                "INVALID_INPUT",
                f"the Host header {shown(host)!r} is not a name this API answers to "
                "(setting api.allowed_hosts)",
                [{"field": "Host", "problem": "not allowed"}],
            )
        field = cross_site_field(method, origin, fetch_site, host, self.named)
        if field is None:
            return None
        value = origin if field == "Origin" else fetch_site
        return RegistryError(
            "FORBIDDEN",
            f"a {method} from another site is refused: the {field} header "
            f"{shown(value or '')!r} is not this API's origin",
            [{"field": field, "problem": "cross-site"}],
        )
