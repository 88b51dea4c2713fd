"""Redaction of secrets in answers: credentials in headers, query strings and JSON/form bodies.

Every answer that carries call contents (REST, MCP, CLI) passes through `redact_call`, unless redaction
was switched off (`--no-redact` or NETRECALL_REDACT=0). Raw bytes stay reachable only through PCAP export,
which is an audited, deliberate act.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

MASK = "[REDACTED]"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Key names whose values are secrets wherever they appear: query strings, form and JSON bodies.
SECRET_KEY = re.compile(r"pass(?:word|wd)?|token|secret|api[_-]?key|apikey", re.IGNORECASE)
_HEADER_FIELDS = ("request_headers", "response_headers", "headers")
_BODY_FIELDS = ("request_body", "response_body", "body")
_QUERY_FIELDS = ("query_string",)
_URL_FIELDS = ("url", "path")


def redaction_enabled() -> bool:
    """On unless NETRECALL_REDACT is 0/false/no/off."""
    return os.environ.get("NETRECALL_REDACT", "1").strip().lower() not in ("0", "false", "no", "off")


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def redact_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Mask the credential headers; header names compare case-insensitively."""
    return {k: (MASK if str(k).lower() in SECRET_HEADERS else v) for k, v in headers.items()}


def redact_query(query: str) -> str:
    """Mask values of secret-looking keys in `a=1&token=x` (order and the other pairs kept as they were)."""
    if not query or "=" not in query:
        return query
    out = []
    for part in query.split("&"):
        key, sep, value = part.partition("=")
        if sep and is_secret_key(_unquote(key)) and value:
            out.append(f"{key}={MASK}")
        else:
            out.append(part)
    return "&".join(out)


def _unquote(text: str) -> str:
    pairs = parse_qsl(f"{text}=x", keep_blank_values=True)
    return pairs[0][0] if pairs else text


def redact_url(url: str) -> str:
    """Mask secrets in the query part of a URL or path."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    fragment = ""
    if "#" in query:
        query, _, frag = query.partition("#")
        fragment = "#" + frag
    return f"{base}?{redact_query(query)}{fragment}"


def redact_json_value(value: Any) -> Any:
    """Walk parsed JSON and mask values under secret-looking keys (any depth)."""
    if isinstance(value, dict):
        return {
            k: (MASK if is_secret_key(str(k)) and not isinstance(v, dict | list) else redact_json_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_json_value(v) for v in value]
    return value


def redact_body(body: Any) -> Any:
    """A JSON body has secret keys masked; a form body (a=1&b=2) too; anything else passes unchanged."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            return body
    if not isinstance(body, str) or not body:
        return body
    stripped = body.strip()
    if stripped[:1] in ("{", "["):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            return _redact_json_text(body)
        return json.dumps(redact_json_value(parsed), ensure_ascii=False, separators=(",", ":"))
    if "=" in stripped and "\n" not in stripped and " " not in stripped:
        return redact_query(body)
    return body


# A truncated JSON body does not parse: mask "secret_key": "value" pairs by pattern instead.
_JSON_PAIR = re.compile(r'("(?:[^"\\]|\\.)*"\s*:\s*)("(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*|true|false)')


def _redact_json_text(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        key = match.group(1).rsplit(":", 1)[0].strip().strip('"')
        return f'{match.group(1)}"{MASK}"' if is_secret_key(key) else match.group(0)

    return _JSON_PAIR.sub(mask, text)


def redact_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """A call record (compact or full) with its secrets masked; the input is not modified."""
    out = dict(call)
    for field in _HEADER_FIELDS:
        if isinstance(out.get(field), Mapping):
            out[field] = redact_headers(out[field])
    for field in _BODY_FIELDS:
        body = out.get(field)
        if isinstance(body, Mapping):  # {"encoding": "utf-8", "data": "..."} as get_call answers it
            if body.get("encoding", "utf-8") != "base64" and "data" in body:
                out[field] = {**body, "data": redact_body(body["data"])}
        elif field in out:
            out[field] = redact_body(body)
    for field in _QUERY_FIELDS:
        if isinstance(out.get(field), str):
            out[field] = redact_query(out[field])
    for field in _URL_FIELDS:
        if isinstance(out.get(field), str):
            out[field] = redact_url(out[field])
    for side in ("request", "response"):  # nested shapes: {"request": {"headers": ..., "body": ...}}
        if isinstance(out.get(side), Mapping):
            out[side] = redact_call(out[side])
    return out


def maybe_redact(call: Mapping[str, Any], enabled: bool | None = None) -> dict[str, Any]:
    """redact_call unless redaction is off (explicitly, or by environment when `enabled` is None)."""
    on = redaction_enabled() if enabled is None else enabled
    return redact_call(call) if on else dict(call)
