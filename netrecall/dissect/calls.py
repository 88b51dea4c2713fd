"""What every protocol module shares: dissection settings, the per-run context (calls out, error counters),
deterministic call ids and the skeleton of an api_calls row.

A call is a plain dict keyed by api_calls column names; columns a protocol does not set take the table's
DEFAULT on insert. Keeping rows as dicts (not objects) keeps the hot path cheap and the writer generic.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Call = dict[str, Any]

DEFAULT_BODY_LIMIT = 64 * 1024


@dataclass
class DissectConfig:
    """Knobs of one dissection run."""

    body_limit: int = DEFAULT_BODY_LIMIT  # bytes of each (decoded) body kept in api_calls
    gap_timeout_ns: int = 10_000_000_000  # a hole not filled within this capture time is a capture loss
    ooo_limit_bytes: int = 1 << 20  # ... or when this much data waits behind it
    idle_timeout_ns: int = 300_000_000_000  # a connection silent this long is closed and flushed
    dns_timeout_ns: int = 10_000_000_000  # a DNS query unanswered this long is kept without a response


@dataclass
class Context:
    """The run-wide sink: finished calls and counters. Protocol sessions only ever append to it."""

    config: DissectConfig = field(default_factory=DissectConfig)
    calls: list[Call] = field(default_factory=list)
    parse_errors: Counter = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    # In a run resumed from a watermark, a response whose request lies before the watermark was already
    # produced (with its request) by the previous run: such orphans older than this time are dropped.
    drop_orphans_before_ns: int = 0
    # Called when `flush_every` calls are waiting: writing them out in small batches keeps memory flat
    # (a call with its header maps weighs a few KB of Python objects).
    on_full: Callable[[], None] | None = None
    flush_every: int = 5_000

    def parse_error(self, protocol: str, message: str) -> None:
        self.parse_errors[protocol] += 1
        self.error_samples.setdefault(protocol, message)

    def emit(self, call: Call) -> None:
        if (
            not call.get("has_request", True)
            and self.drop_orphans_before_ns
            and call["ts"] < self.drop_orphans_before_ns
        ):
            return
        call.pop("has_request", None)
        first, last = call.get("first_packet_ts"), call.get("last_packet_ts")
        if first is not None and last is not None and first > last:
            # bytes reassembled out of capture order (a response captured before the request it was
            # paired with, a message's head retransmitted after its tail): the call's packets still lie
            # between the two times, and readers take them as a range (fuzz/http1)
            call["first_packet_ts"], call["last_packet_ts"] = last, first
        self.calls.append(call)
        if self.on_full is not None and len(self.calls) >= self.flush_every:
            self.on_full()


def call_id(protocol: str, flow_id: int, port: int, seq: int, ts_ns: int) -> str:
    """A stable id from what identifies a message on the wire, whatever range the run covered.

    (protocol, flow, sending port, TCP sequence number or DNS id, time of the first packet) is the same
    every time the same packets are dissected, so re-dissection overwrites rather than duplicates.
    """
    return call_id_in(id_prefix(protocol, flow_id, port), seq, ts_ns)


def id_prefix(protocol: str, flow_id: int, port: int) -> str:
    """The part of a call id's key fixed for one sender of one connection (a session computes it once)."""
    return f"{protocol}|{flow_id}|{port}|"


def call_id_in(prefix: str, seq: int, ts_ns: int) -> str:
    """call_id() from an id_prefix(): the same id, without formatting the fixed part per call."""
    return _blake2b(f"{prefix}{seq}|{ts_ns}".encode(), digest_size=10).hexdigest()


_blake2b = hashlib.blake2b
