"""URIs as logs, errors and the CLI may show them: passwords and secret options masked.

In ``conf`` because every layer shows a URI it was configured with: the registry's
``MONGODB_URI`` (registry_bridge.database), MLflow's tracking URI (pipelines.mlflow_ui).
"""

from __future__ import annotations

import re

# Query options that carry a secret (matched case-insensitively, as the driver does).
_SECRET_OPTIONS = re.compile(
    r"(?i)([?&](?:tlsCertificateKeyFilePassword|authMechanismProperties|password)=)[^&#]*"
)


def mask_uri(uri: str) -> str:
    """The URI with its password and secret options replaced by ``***`` (for logs and the CLI).

    Works on the raw text, not a URL parser: a password holding ``#``, ``/`` or ``?``
    (which a user may forget to escape) would end a parsed netloc early and leak the rest.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "<URI without scheme://, not shown>" if "@" in uri else uri
    if "@" in rest:
        # The userinfo ends at the LAST "@": everything before it may be a secret.
        userinfo, _, hosts = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{hosts}" if colon else f"{userinfo}@{hosts}"
    return f"{scheme}://" + _SECRET_OPTIONS.sub(r"\1***", rest)


def scrub(text: str, uri: str) -> str:
    """``text`` (a driver's message about ``uri``) without the URI's password or secret options."""
    secrets = []
    _, sep, rest = uri.partition("://")
    if sep and "@" in rest:
        userinfo = rest.rpartition("@")[0]
        secrets += [userinfo.partition(":")[2], userinfo]
    secrets += [m.group(0).split("=", 1)[1] for m in _SECRET_OPTIONS.finditer(uri)]
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text.replace(uri, mask_uri(uri))
