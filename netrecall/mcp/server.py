"""The MCP server: Kubeshark's hub tools (same names) plus root-cause tools, over a local store or a hub.

`build_server(backend)` takes a `Service` (local store) or a `HubClient` (REST to a running hub): both
have the same methods. Answers are compact JSON text, bounded by default limits, with `truncated` and a
hint how to narrow. Write tools (snapshots, dissection, export) are annotated as not read-only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from netrecall import __version__
from netrecall.errors import NetrecallError
from netrecall.mcp.render import calls_table

INSTRUCTIONS = """netrecall answers questions about a Kubernetes cluster's recorded network traffic:
API calls (HTTP, DNS, gRPC, ...) dissected from stored packets, L4 flows, and who each IP was.

Filters are KFL (Kubeshark's filter language, CEL syntax). Examples:
  http && status_code >= 500
  dns && dns_response && status_code != 0          (DNS failures: status_code is the rcode)
  dst.namespace == "shop" && elapsed_time > 500000  (elapsed_time is microseconds)
  src.pod.name.startsWith("checkout") && path.contains("/pay")
  dns_questions.exists(q, q.endsWith(".svc.cluster.local"))
  request.headers["user-agent"].contains("curl")
  timestamp >= timestamp("2026-03-14T22:00:00Z")
Times (start/end) take RFC 3339 or relative ("-30m"); without them a query covers everything stored.

Root-cause workflow: get_data_boundaries -> create_snapshot (freeze the incident) -> summarize_errors
-> list_api_calls with a narrowing KFL -> trace_call on an example_id -> dns_failures -> export_pcap for
evidence. No error codes, but slow or flaky? find_slow_edges (latency against a baseline) and
list_l4_flows(aggregate="node", failing=true) (timeouts, refused, retransmissions). "It broke after a
change"? compare_windows.
Secrets (Authorization, Cookie, password/token/secret/api_key values) are redacted."""

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DELETE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)

Kfl = Annotated[
    str,
    Field(
        description=(
            "KFL filter (CEL). Examples: `http && status_code >= 500`, `dns && status_code != 0`, "
            '`dst.service.name == "payments" && method == "POST"`, '
            '`src.namespace == "shop" && elapsed_time > 1000000`. '
            "Empty: everything."
        )
    ),
]
Start = Annotated[
    str | None, Field(description='Start time: RFC 3339 ("2026-03-14T22:00:00Z") or relative ("-30m").')
]
End = Annotated[str | None, Field(description="End time (exclusive), same forms as start.")]
Snapshot = Annotated[
    str | None, Field(description="Read this snapshot's frozen copy instead of the live window.")
]


GENERIC_HINT = "narrow the filter (kfl, namespace, ip/port) or the time range (start/end), or raise limit"


def compact(value: Any) -> str:
    """JSON without indentation (tokens are the agent's budget); a cut answer always says how to narrow."""
    if isinstance(value, dict) and value.get("truncated") and not value.get("hint"):
        value = {**value, "hint": GENERIC_HINT}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _tool_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """NetrecallError (bad KFL, unknown id, refused SQL) reaches the agent as its one-line message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NetrecallError as exc:
            raise ToolError(str(exc)) from None

    return wrapper


def build_server(backend: Any) -> MCPServer:
    """All tools, bound to `backend` (a Service or a HubClient)."""
    server = MCPServer("netrecall", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")

    def tool(
        annotations: ToolAnnotations, description: str
    ) -> Callable[[Callable[..., str]], Callable[..., str]]:
        def register(fn: Callable[..., str]) -> Callable[..., str]:
            server.add_tool(
                _tool_errors(fn),
                name=fn.__name__,
                description=description,
                annotations=annotations,
                structured_output=False,
            )
            return fn

        return register

    @tool(
        READ,
        "Time range and volume of the stored data (packets, calls, flows, nodes). Call this first: "
        "`window.start`/`window.end` cover everything stored (pass them as start/end), and it says "
        "whether calls were dissected yet.",
    )
    def get_data_boundaries(snapshot: Snapshot = None) -> str:
        return compact(backend.boundaries(snapshot=snapshot))

    @tool(
        READ,
        "Workloads (pods, services, nodes) with their IPs, labels and owners, valid now or at a past "
        "moment (`at`), so an IP reused later still resolves to the right pod.",
    )
    def list_workloads(
        namespace: Annotated[str | None, Field(description="Only this namespace.")] = None,
        at: Annotated[str | None, Field(description="A past moment (RFC 3339 or -30m); default now.")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> str:
        return compact(backend.workloads(namespace=namespace, at=at, limit=limit))

    @tool(READ, "IPs seen in API calls, with the pod/service they belonged to and how many calls each made.")
    def list_ips(
        start: Start = None,
        end: End = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(backend.ips(since=start, until=end, limit=limit, snapshot=snapshot))

    @tool(
        READ,
        "API calls matching a KFL filter, newest first. format='table' (default) gives one line per "
        "call: `id time proto src dst method path status ms` (DNS: method=qtype, path=qname, "
        "status=rcode); format='json' gives records. Narrow with KFL rather than raising limit; "
        "open one call with get_api_call(id).",
    )
    def list_api_calls(
        kfl: Kfl = "",
        limit: Annotated[int, Field(ge=1, le=1000, description="Default 50.")] = 50,
        start: Start = None,
        end: End = None,
        format: Annotated[
            str, Field(description="table (compact, default) or json.", pattern="^(table|json)$")
        ] = "table",
        snapshot: Snapshot = None,
    ) -> str:
        answer = backend.calls(kfl=kfl, since=start, until=end, limit=limit, snapshot=snapshot)
        if format == "json":
            return compact(answer)
        return compact(calls_table(answer))

    @tool(
        READ,
        "One API call in full: headers, status, timings, DNS answers; with include_payload the bodies "
        "(truncated to max_payload_size). Secrets are redacted; raw bytes only via export_pcap.",
    )
    def get_api_call(
        id: Annotated[str, Field(description="The call id from list_api_calls or summarize_errors.")],
        include_payload: bool = False,
        max_payload_size: Annotated[int, Field(ge=0, le=65536)] = 4096,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(
            backend.call(
                id, include_payload=include_payload, max_payload_size=max_payload_size, snapshot=snapshot
            )
        )

    @tool(
        READ,
        "Traffic statistics: calls and errors by protocol, status codes, p50/p95 latency and the "
        "busiest endpoints, for a KFL filter and time range.",
    )
    def get_api_stats(kfl: Kfl = "", start: Start = None, end: End = None, snapshot: Snapshot = None) -> str:
        return compact(backend.stats(kfl=kfl, since=start, until=end, snapshot=snapshot))

    @tool(
        READ,
        "L4 flows (TCP/UDP connections) with TCP health: connection timeouts (SYN never answered), "
        "refused connections (RST to SYN), mid-connection resets, retransmissions and their rate, zero "
        "windows, handshake RTT (tcp_handshake_p50/p90/p99_us) and time to first byte, with the pods on "
        "both ends. aggregate=workload|pod|namespace|node|service groups them (failing groups first); "
        "failing=true keeps only flows with a failure, retransmissions or zero windows.",
    )
    def list_l4_flows(
        aggregate: Annotated[
            str | bool | None,
            Field(description="workload, pod, namespace, node or service (true: workload); none: per flow"),
        ] = None,
        ip: Annotated[str | None, Field(description="Only flows with this IP.")] = None,
        port: Annotated[int | None, Field(ge=0, le=65535)] = None,
        l4proto: Annotated[str | None, Field(description="tcp or udp.", pattern="^(tcp|udp)$")] = None,
        ns: Annotated[str | None, Field(description="Only flows with an end in this namespace.")] = None,
        pod: Annotated[str | None, Field(description="Only flows with an end on this pod.")] = None,
        svc: Annotated[str | None, Field(description="Only flows with an end behind this service.")] = None,
        failing: bool = False,
        start: Start = None,
        end: End = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(
            backend.flows(
                since=start,
                until=end,
                ip=ip,
                port=port,
                aggregate=aggregate,
                limit=limit,
                snapshot=snapshot,
                l4proto=l4proto,
                ns=ns,
                pod=pod,
                svc=svc,
                failing=failing,
            )
        )

    @tool(
        READ,
        "Latency per workload edge (source -> destination workload, protocol, method, route template "
        "such as /orders/{id}): calls, rate, p50/p90/p99, failures and unanswered requests, busiest "
        "first; step='5m' adds a series per edge. Read from per-minute histograms: cheap over days.",
    )
    def get_latency(
        kfl: Kfl = "",
        src: Annotated[str | None, Field(description="Source 'ns/name', or 'ns/' for a namespace.")] = None,
        dst: Annotated[str | None, Field(description="Destination 'ns/name', or 'ns/'.")] = None,
        protocol: str | None = None,
        by_route: Annotated[bool, Field(description="false: one row per edge, routes merged.")] = True,
        step: Annotated[str | None, Field(description="Series bucket, e.g. 1m, 5m, 1h.")] = None,
        start: Start = None,
        end: End = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(
            backend.latency(
                since=start,
                until=end,
                kfl=kfl,
                src=src,
                dst=dst,
                protocol=protocol,
                by_route=by_route,
                step=step,
                limit=limit,
                snapshot=snapshot,
            )
        )

    @tool(
        READ,
        "Edges whose latency rose most against a baseline window (default: the window of the same length "
        "just before), the cause first: an edge slowed by its destination's own slow call says "
        "explained_by. Each edge has before/now percentiles, its slowest calls (tail) and a KFL filter.",
    )
    def find_slow_edges(
        start: Start = None,
        end: End = None,
        baseline_start: Start = None,
        baseline_end: End = None,
        kfl: Kfl = "",
        limit: Annotated[int, Field(ge=1, le=100)] = 10,
        tail: Annotated[int, Field(ge=0, le=20)] = 3,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(
            backend.slow_edges(
                since=start,
                until=end,
                baseline_since=baseline_start,
                baseline_until=baseline_end,
                kfl=kfl,
                limit=limit,
                tail=tail,
                snapshot=snapshot,
            )
        )

    @tool(
        READ,
        "What changed between a window and a baseline (default: the window just before): new error "
        "kinds, new TCP failures (timeouts, refused, resets), retransmission and latency rises, new and "
        "vanished edges, new DNS names and TLS server names, rate shifts. Ranked with the likely cause "
        "first; each change has an example_id and a KFL filter (or list_l4_flows call) to drill in.",
    )
    def compare_windows(
        start: Start = None,
        end: End = None,
        baseline_start: Start = None,
        baseline_end: End = None,
        kfl: Kfl = "",
        limit: Annotated[int, Field(ge=1, le=100)] = 15,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(
            backend.changes(
                since=start,
                until=end,
                baseline_since=baseline_start,
                baseline_until=baseline_end,
                kfl=kfl,
                limit=limit,
                snapshot=snapshot,
            )
        )

    @tool(READ, "Snapshots: named, frozen copies of a time range (kept beyond the rolling window).")
    def list_snapshots() -> str:
        return compact(backend.snapshots())

    @tool(READ, "One snapshot: its time range, nodes, packet and byte counts.")
    def get_snapshot(name: str) -> str:
        return compact(backend.snapshot(name))

    @tool(
        WRITE,
        "Freeze a time range into a named snapshot so the evidence outlives the rolling window. "
        "Give duration (e.g. '30m', the last 30 minutes) or start and end.",
    )
    def create_snapshot(
        name: Annotated[
            str,
            Field(
                description="Letters, digits, _ . - (starting with a letter or digit).",
                pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
            ),
        ],
        duration: Annotated[str | None, Field(description="The last N: 30s, 15m, 2h.")] = None,
        start: Start = None,
        end: End = None,
        nodes: Annotated[list[str] | None, Field(description="Only these nodes' traffic.")] = None,
    ) -> str:
        return compact(
            backend.create_snapshot(
                name, last=duration, since=start, until=end, nodes=nodes, created_by="mcp"
            )
        )

    @tool(DELETE, "Delete a snapshot and its frozen data.")
    def delete_snapshot(name: str) -> str:
        return compact(backend.delete_snapshot(name))

    @tool(
        WRITE,
        "Dissect a snapshot's packets into API calls, in the background (or the live window when "
        "snapshot is omitted). Poll get_dissection_status with the returned job id.",
    )
    def start_snapshot_dissection(
        snapshot: Snapshot = None, start: Start = None, end: End = None, node: str | None = None
    ) -> str:
        return compact(backend.start_dissect(since=start, until=end, node=node, snapshot=snapshot))

    @tool(READ, "State of dissection jobs (one job by id, or the recent ones).")
    def get_dissection_status(job: str | None = None) -> str:
        return compact(backend.dissect_status(job))

    @tool(
        WRITE,
        "Write the matching packets as a PCAP file (Wireshark-compatible) into the hub's exports "
        "directory, for evidence. Filter by KFL (the packets of the matching calls) or by nodes, ips, "
        "ports, pods (namespace/name), start/end. Answers {path, sha256, packets, bytes}.",
    )
    def export_pcap(
        kfl: Kfl = "",
        nodes: list[str] | None = None,
        ips: list[str] | None = None,
        ports: list[int] | None = None,
        pods: Annotated[list[str] | None, Field(description="namespace/name")] = None,
        start: Start = None,
        end: End = None,
        snapshot: Snapshot = None,
    ) -> str:
        if not any([kfl, nodes, ips, ports, pods, start, end, snapshot]):
            raise ToolError("give at least one filter (kfl, ips, ports, pods, nodes, start/end or snapshot)")
        written = backend.export_pcap(
            kfl=kfl,
            nodes=nodes,
            ips=ips,
            ports=ports,
            pods=pods,
            since=start,
            until=end,
            snapshot=snapshot,
            created_by="mcp",
        )
        return compact({k: written[k] for k in ("path", "sha256", "packets", "bytes") if k in written})

    @tool(
        READ,
        "Read-only ClickHouse SQL over the tables (api_calls, flows, packets without `data`, "
        "workloads, snapshots). SELECT only; answers at most max_rows rows.",
    )
    def query_sql(sql: str, max_rows: Annotated[int, Field(ge=1, le=10000)] = 200) -> str:
        return compact(backend.sql(sql, max_rows=max_rows))

    @tool(
        READ,
        "Errors grouped by kind (http_5xx, http_4xx, dns_error, grpc_error, timeout, refused, tcp_reset, "
        "no_response, parse_error, ...), "
        "source workload, destination workload and code, with counts, first/last seen, a sample and "
        "an example_id to pass to trace_call. The fastest way into an incident.",
    )
    def summarize_errors(
        kfl: Kfl = "",
        start: Start = None,
        end: End = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
        include_4xx: bool = True,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(
            backend.errors(
                kfl=kfl, since=start, until=end, limit=limit, snapshot=snapshot, include_4xx=include_4xx
            )
        )

    @tool(
        READ,
        "What a call's two ends sent and received around it (±window), in time order, DNS included: "
        "role source_sent/received shows the client's other calls; destination_sent with during=true is "
        "what the server called while answering (a failed lookup, an upstream 503). failed=true marks "
        "errors. The events nearest the call are kept when limit cuts.",
    )
    def trace_call(
        id: str,
        window: Annotated[str, Field(description="e.g. 2s, 500ms; at most 10m.")] = "5s",
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(backend.trace(id, window=window, limit=limit, snapshot=snapshot))

    @tool(
        READ,
        "Failed DNS lookups (NXDOMAIN, SERVFAIL, REFUSED, no response) grouped by name, type, client "
        "and server, with counts and first/last seen.",
    )
    def dns_failures(
        kfl: Kfl = "",
        start: Start = None,
        end: End = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
        snapshot: Snapshot = None,
    ) -> str:
        return compact(backend.dns_failures(kfl=kfl, since=start, until=end, limit=limit, snapshot=snapshot))

    return server
