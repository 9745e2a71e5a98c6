"""Hostile answers a provider server can give: bodies that echo a secret in every form a client
must mask (raw, URL-encoded, base64, a Basic auth pair, JSON-escaped, in a redirect, padded so
the secret crosses any cut), and bodies with `Infinity`/`NaN` for numbers.

`secret_echoes(secret, partner)` returns (name, fault kwargs) pairs for `faults.add(**kwargs)`.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

# Where code has cut bodies and messages: a secret straddling each must still be masked.
CUTS = (200, 300, 1000)


def encodings(secret: str, partner: str | None = None) -> dict[str, str]:
    """Every form of `secret` a server may send back."""
    forms = {
        "raw": secret,
        "url": quote(secret, safe=""),
        "url_lower_hex": re.sub(
            r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe="")
        ),
        "url_plus": quote_plus(secret),
        "url_twice": quote(quote(secret, safe=""), safe=""),
        "base64": base64.b64encode(secret.encode()).decode(),
        "base64_url": base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        "json_escaped": json.dumps(secret).strip('"').replace("/", "\\/"),
    }
    if partner:
        pair = base64.b64encode(f"{partner}:{secret}".encode()).decode()
        forms["basic_pair"] = f"Basic {pair}"
        forms["basic_pair_first"] = base64.b64encode(f"{secret}:{partner}".encode()).decode()
    return forms


def padded(text: str, cut: int) -> str:
    """`text` placed so that it crosses character `cut` of the body."""
    return "x" * max(0, cut - len(text) // 2) + text + " end"


def secret_echoes(secret: str, partner: str | None = None) -> list[tuple[str, dict]]:
    """Faults whose bodies (or headers) carry `secret`, across the status codes of every path."""
    faults: list[tuple[str, dict]] = []
    for name, form in encodings(secret, partner).items():
        faults.append((f"401-json-{name}", {"status": 401, "body": {"error": f"bad key {form}"}}))
        faults.append((f"500-text-{name}", {"status": 500, "body": f"failed: {form}".encode()}))
    for cut in CUTS:
        body = padded(secret, cut)
        faults.append((f"500-padded-{cut}", {"status": 500, "body": body.encode()}))
        faults.append((f"400-padded-json-{cut}", {"status": 400, "body": {"message": body}}))
        faults.append((f"200-malformed-{cut}", {"status": 200, "body": body.encode()}))
    faults.append(
        (
            "302-redirect",
            {"status": 302, "body": b"", "headers": {"Location": f"/login?apikey={quote(secret)}"}},
        )
    )
    faults.append(("429-echo", {"status": 429, "body": {"error": f"limit for {secret}"}}))
    echoed = json.dumps({"error": secret}).encode()
    faults.append(("200-truncated", {"status": 200, "body": echoed, "truncate": len(echoed) - 3}))
    return faults


def non_finite(body: dict) -> bytes:
    """`body` as JSON with Python's Infinity/NaN literals (what json.dumps writes for them)."""
    return json.dumps(body, allow_nan=True).encode()
