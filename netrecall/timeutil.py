"""Parsing the times users type: RFC 3339, relative (-30m), durations (5m, 72h) and byte sizes."""

import re
import time
from datetime import UTC, datetime

from netrecall.errors import NetrecallError

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?i?B?)?\s*$", re.IGNORECASE)


def parse_duration_ns(text: str) -> int:
    """'5m', '1h30m', '250ms', '72h' -> nanoseconds (Go/CEL duration syntax)."""
    compact = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(compact):
        raise NetrecallError(f"invalid duration {text!r}: expected forms like 30s, 5m, 72h, 1h30m")
    return int(total)


# Times (and durations) are signed 64-bit nanoseconds, as the store's DateTime64(9) and KFL's bound
# parameters hold them: 1677 to 2262.
MIN_TIME_NS = -(2**63)
MAX_TIME_NS = 2**63 - 1


def parse_time_ns(text: str, now_ns: int | None = None) -> int:
    """RFC 3339 ('2026-03-14T22:00:00Z', ns precision kept), relative ('-30m', 'now') or epoch seconds."""
    value = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if value == "now":
        return now
    if value.startswith("-"):
        ts = now - parse_duration_ns(value[1:])
    elif re.fullmatch(r"\d+(\.\d+)?", value):
        whole, _, frac = value.partition(".")
        ts = int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    else:
        ts = _parse_rfc3339_ns(value)
    if not MIN_TIME_NS <= ts <= MAX_TIME_NS:
        raise NetrecallError(f"time {text!r} is out of range: times lie between 1677 and 2262")
    return ts


def _parse_rfc3339_ns(value: str) -> int:
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?", value
    )
    if not match:
        raise NetrecallError(
            f"invalid time {value!r}: expected RFC 3339 (2026-03-14T22:00:00Z) or relative (-30m)"
        )
    date_part, clock, fraction, zone = match.groups()
    if clock.count(":") == 1:
        clock += ":00"
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        parsed = datetime.fromisoformat(f"{date_part}T{clock}{zone}")
    except ValueError as exc:
        raise NetrecallError(f"invalid time {value!r}: {exc}") from None
    nanos = int(((fraction or "") + "000000000")[:9])
    return int(parsed.timestamp()) * 1_000_000_000 + nanos


def format_time_ns(ts_ns: int) -> str:
    """Nanoseconds since the epoch -> RFC 3339 with nanoseconds, UTC ('2026-03-14T22:00:00.123456789Z')."""
    seconds, nanos = divmod(int(ts_ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def parse_size_bytes(text: str) -> int:
    """'10GiB', '500MB', '1024' -> bytes (binary for KiB/MiB/GiB, decimal for KB/MB/GB)."""
    match = _SIZE.match(text)
    if not match:
        raise NetrecallError(f"invalid size {text!r}: expected forms like 500MiB, 10GiB, 2GB")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    prefix = unit[:1] if unit[:1] != "b" else ""
    base = 1024 if "i" in unit else 1000
    factor = base ** "kmgtp".index(prefix) * base if prefix else 1
    return int(number * factor)
