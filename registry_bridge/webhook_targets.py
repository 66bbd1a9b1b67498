"""Where a webhook may point: an ``http``/``https`` URL whose host resolves only to public
addresses (unless ``webhooks.allow_private``), checked when it is added and again before
every send.

A webhook URL makes the registry send a request wherever it says: to 127.0.0.1, the LAN
or the cloud's metadata service (169.254.169.254) it would be a request forgery. Every
address the host resolves to is checked, and the sender connects to one of those checked
addresses itself (:func:`resolve`), so a name that resolves to a public address when
checked and to a private one when connecting (DNS rebinding) is not followed there.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

# Longer URLs are refused: they are stored, printed and sent on every delivery.
MAX_URL_CHARS = 2000
SCHEMES = {"http": 80, "https": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """The URL or the address it resolves to is not allowed; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses to connect to, in the resolver's order."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]


def parse_url(url: str) -> SplitResult:
    """The parts of an ``http``/``https`` URL with a host and no credentials.

    Raises:
        TargetRefused: naming what is wrong with the URL.
    """
    if not isinstance(url, str) or not url:
        raise TargetRefused("the URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise TargetRefused(f"the URL is {len(url)} characters long; at most {MAX_URL_CHARS}")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise TargetRefused("the URL holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise TargetRefused(
            f"only http and https URLs are accepted, got {parts.scheme or 'none'!r}"
        )
    if not parts.hostname:
        raise TargetRefused(f"{url!r} names no host")
    if parts.username is not None or parts.password is not None:
        # It would be stored and printed: a secret belongs in --secret-env.
        raise TargetRefused("the URL holds credentials (user:password@); use --secret-env")
    if parts.fragment:
        raise TargetRefused("the URL holds a fragment (#...), which is never sent")
    if port == 0:
        raise TargetRefused("the URL's port is 0")
    return parts


def refusal(address: Address) -> str | None:
    """Why ``address`` is not a public one (loopback, private...), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:  # shared address space (100.64/10), NAT64, ...
        return "not public"
    return None


def resolve(url: str, allow_private: bool) -> Target:
    """Check ``url`` and resolve its host; every address must be public unless ``allow_private``.

    Raises:
        TargetRefused: a bad URL, a host that does not resolve, or a refused address.
    """
    parts = parse_url(url)
    host = parts.hostname or ""
    port = parts.port or SCHEMES[parts.scheme]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"host {host!r} does not resolve: {exc}") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not addresses:
        raise TargetRefused(f"host {host!r} resolves to no address")
    if not allow_private:
        for text in addresses:
            why = refusal(ipaddress.ip_address(text))
            if why is not None:
                raise TargetRefused(
                    f"{host} resolves to {text}, a {why} address; webhooks go to public "
                    "addresses unless the setting webhooks.allow_private is true"
                )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(url, parts.scheme, host, port, path, addresses)
