"""The fallback: a TCP connection or UDP flow no protocol module recognised becomes one `tcp`/`udp` row
(endpoints, byte counts as body sizes, times), flagged with an error text saying why it was not parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netrecall.dissect.calls import Call, Context, call_id

if TYPE_CHECKING:
    from netrecall.dissect.tcp import TcpConn

UNRECOGNISED = "no protocol module recognised this stream"


class GenericTcpSession:
    """Counts bytes each way; one row when the connection ends."""

    protocol = "tcp"

    def __init__(self, conn: TcpConn, client: int, error: str = UNRECOGNISED) -> None:
        self.conn = conn
        self.client = client
        self.error = error
        self.partial = False

    def feed(self, side: int) -> None:
        half = self.conn.halves[side]
        half.consume(len(half.buf))

    def on_gap(self, side: int, missing: int) -> None:
        self.partial = True
        self.feed(side)

    def close(self) -> None:
        conn = self.conn
        client, server = conn.halves[self.client], conn.halves[1 - self.client]
        if not client.total and not server.total:
            return  # a handshake or scan without data is not a call
        first = min(t for t in (client.first_ts, server.first_ts) if t)
        last = max(client.last_ts, server.last_ts)
        call = conn.call("tcp", self.client, first)
        call.update(
            id=call_id("tcp", conn.flow_id, conn.port[self.client], 0, first),
            request_body_size=client.total,
            response_body_size=server.total,
            has_response=bool(server.total),
            elapsed_time=max(0, server.first_ts - client.first_ts) // 1000
            if client.first_ts and server.first_ts
            else 0,
            partial=self.partial or client.mid_start or server.mid_start,
            error=self.error,
            first_packet_ts=first,
            last_packet_ts=last,
        )
        call["has_request"] = True  # never dropped as an orphan: it is the whole connection
        conn.ctx.emit(call)

    def pending_ts(self) -> int | None:
        return None


class UdpFlow:
    """A UDP flow that is not a known protocol: totals each way until it goes idle."""

    __slots__ = ("bytes", "call", "error", "first_ts", "last_ts")

    def __init__(self, call: Call, ts: int) -> None:
        self.call = call
        self.error = UNRECOGNISED
        self.first_ts = ts
        self.last_ts = ts
        self.bytes = [0, 0]  # client->server, server->client


class GenericUdp:
    """One `udp` row per unrecognised flow (the first sender is the client)."""

    def __init__(self) -> None:
        self.flows: dict[int, UdpFlow] = {}

    def add(
        self,
        flow_id: int,
        src: tuple[bytes, int],
        dst: tuple[bytes, int],
        ts: int,
        size: int,
        error: str = "",
    ) -> None:
        flow = self.flows.get(flow_id)
        if flow is None:
            call: Call = {
                "protocol": "udp",
                "flow_id": flow_id,
                "src_ip": src[0],
                "src_port": src[1],
                "dst_ip": dst[0],
                "dst_port": dst[1],
                "ts": ts,
            }
            flow = self.flows[flow_id] = UdpFlow(call, ts)
        is_client = flow.call["src_port"] == src[1] and flow.call["src_ip"] == src[0]
        flow.bytes[0 if is_client else 1] += size
        flow.last_ts = ts
        if error:
            flow.error = error

    def expire(self, ctx: Context, now_ts: int | None) -> None:
        timeout = ctx.config.idle_timeout_ns
        for flow_id, flow in list(self.flows.items()):
            if now_ts is None or now_ts - flow.last_ts > timeout:
                del self.flows[flow_id]
                call = flow.call
                call.update(
                    id=call_id("udp", flow_id, call["src_port"], 0, flow.first_ts),
                    request_body_size=flow.bytes[0],
                    response_body_size=flow.bytes[1],
                    has_response=bool(flow.bytes[1]),
                    error=flow.error,
                    partial=flow.error != UNRECOGNISED,
                    first_packet_ts=flow.first_ts,
                    last_packet_ts=flow.last_ts,
                    has_request=True,
                )
                ctx.emit(call)
