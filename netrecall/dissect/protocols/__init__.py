"""Protocol modules, one per protocol: each has a detector by content, a parser and the mapping to api_calls
columns. `stream_dissectors()` lists the TCP ones in the order they are tried (strict detectors first);
docs/protocols.md explains how to add one."""

from __future__ import annotations

from netrecall.dissect.protocols import dns, http1, http2, kafka, postgresql, redis, tls
from netrecall.dissect.protocols.base import StreamDissector


def stream_dissectors() -> list[StreamDissector]:
    """Fresh dissector instances for one run (some keep per-run state, such as DNS matching)."""
    return [
        tls.TlsDissector(),
        http2.Http2Dissector(),
        http1.HttpDissector(),
        postgresql.PostgresDissector(),
        redis.RedisDissector(),
        kafka.KafkaDissector(),
        dns.DnsTcpDissector(),
    ]


# every protocol name a run may count calls or parse errors for, in summary order
PROTOCOLS = ("http", "grpc", "dns", "redis", "postgresql", "kafka", "tls", "tcp", "udp")
