"""The tables, as data: columns, engine, keys, codecs and skip indexes, rendered to DDL.

Each choice is explained in docs/schema.md. The same definitions render for one server (MergeTree) or
for a cluster (ReplicatedMergeTree local tables plus Distributed tables, ON CLUSTER).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TTL_SECONDS = 72 * 3600
LOCAL_SUFFIX = "_local"


def endpoint_columns(side: str) -> list[tuple[str, str]]:
    """The workload identity of one end (side 'src' or 'dst'), as it was at the packet's time."""
    return [
        (f"{side}_pod", "LowCardinality(String)"),
        (f"{side}_namespace", "LowCardinality(String)"),
        (f"{side}_service", "LowCardinality(String)"),
        (f"{side}_workload", "LowCardinality(String)"),  # owner, as Kind/name (Deployment/checkout)
        (f"{side}_node", "LowCardinality(String)"),  # node hosting the pod
        (f"{side}_labels", "Map(LowCardinality(String), String)"),
    ]


@dataclass(frozen=True)
class Table:
    name: str
    columns: list[tuple[str, str]]
    order_by: str
    engine: str = "MergeTree"
    engine_args: str = ""  # e.g. the version column of a ReplacingMergeTree
    partition_by: str = ""
    ttl: bool = True  # rows expire on the rolling window; snapshots and audit tables do not
    indexes: list[str] = field(default_factory=list)
    settings: dict[str, str | int] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]


def _ttl_clause(ttl_seconds: int) -> str:
    # TTL counts from when a row was stored, not from the packet's own time: an old capture imported
    # today must not expire on arrival (ClickHouse drops rows already expired at insert time).
    return f"TTL stored_at + toIntervalSecond({int(ttl_seconds)})"


def flow_id_expr(ip_1: str, port_1: str, ip_2: str, port_2: str) -> str:
    """The flow id of a 5-tuple, the same whichever end is named first (packets and flows both use it)."""
    return (
        f"if(({ip_1}, {port_1}) <= ({ip_2}, {port_2}), "
        f"cityHash64(l4, {ip_1}, {port_1}, {ip_2}, {port_2}), "
        f"cityHash64(l4, {ip_2}, {port_2}, {ip_1}, {port_1}))"
    )


# How packets parts are written. Parts up to 256 MiB (uncompressed) are Compact: all columns in one file
# instead of two files per column (136 for packets); every insert (an import's parts are ~16 MB, an agent
# batch ~1 s) is compact, merges beyond the threshold go Wide again, where reading a few columns of a
# big part matters. Compression blocks of 256 KiB instead of 1 MiB: a writer keeps one buffer per
# column, so inserts and merges hold a quarter of the memory (frames still compress to ~0.07x).
PACKET_PARTS = {"min_bytes_for_wide_part": 256 << 20, "max_compress_block_size": 256 << 10}
# Granules of at most 1 MiB (~1,900 HTTP frames) instead of 10 MiB (8,192 rows): a merge holds one
# granule of every part it merges, and merging the ~100 parts of a 12M-packet import took 1.6 GB of RSS
# with 10 MiB granules, 0.75 GB with 1 MiB. ClickHouse fixes this setting when a table is created.
PACKET_GRANULES = {"index_granularity_bytes": 1 << 20}

PACKETS = Table(
    name="packets",
    columns=[
        ("ts", "DateTime64(9) CODEC(Delta, ZSTD(1))"),
        ("stored_at", "DateTime DEFAULT now() CODEC(Delta, ZSTD(1))"),
        ("node", "LowCardinality(String)"),
        ("iface", "LowCardinality(String)"),
        ("direction", "Enum8('unknown' = 0, 'in' = 1, 'out' = 2)"),
        ("source", "LowCardinality(String)"),  # capture id: file sha256 or agent/iface, for idempotent loads
        # frame number within its source (record index in the file; per-run counter live): restores
        # capture order among packets with the very same timestamp, which ORDER BY cannot
        ("seq", "UInt64 CODEC(Delta, ZSTD(1))"),
        ("link_type", "UInt16"),
        ("caplen", "UInt32"),
        ("origlen", "UInt32"),
        ("vlan", "UInt16"),
        ("ip_version", "UInt8"),  # 0 when the frame is not IP
        ("src_ip", "IPv6"),  # IPv4 is stored v4-mapped (::ffff:a.b.c.d)
        ("dst_ip", "IPv6"),
        ("l4", "UInt8"),  # IP protocol number: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6
        ("src_port", "UInt16"),
        ("dst_port", "UInt16"),
        ("ip_frag", "UInt8"),  # 1 on a fragment (first or later); later fragments carry no ports
        ("tcp_flags", "UInt16"),
        ("tcp_seq", "UInt32"),
        ("tcp_ack", "UInt32"),
        # TCP window field as sent (unscaled; schema v5). A row written without it (before v5, or by a
        # writer that does not decode it) reads as an open window, never as a zero window.
        ("tcp_window", "UInt16 DEFAULT 65535"),
        ("payload_offset", "UInt16"),  # where the L4 payload starts in `data`
        ("payload_len", "UInt32"),  # L4 payload length as captured (not beyond caplen)
        # One id for both directions of a 5-tuple, computed by the engine so every writer agrees.
        ("flow_id", f"UInt64 DEFAULT {flow_id_expr('src_ip', 'src_port', 'dst_ip', 'dst_port')}"),
        *endpoint_columns("src"),
        *endpoint_columns("dst"),
        ("data", "String CODEC(ZSTD(1))"),  # the whole frame exactly as captured
    ],
    partition_by="toStartOfHour(stored_at)",
    order_by="(toStartOfMinute(ts), flow_id, ts)",
    indexes=[
        "INDEX ix_src_ip src_ip TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_dst_ip dst_ip TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_ports (src_port, dst_port) TYPE set(256) GRANULARITY 4",
        "INDEX ix_pods (src_pod, dst_pod) TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_ns (src_namespace, dst_namespace) TYPE set(64) GRANULARITY 4",
        "INDEX ix_node node TYPE set(64) GRANULARITY 4",
        "INDEX ix_source source TYPE set(16) GRANULARITY 4",
    ],
    settings={"non_replicated_deduplication_window": 1000, **PACKET_PARTS, **PACKET_GRANULES},
)

FLOW_SIDES = ("a", "b")  # canonical ends: a is the lower (ip, port) of the pair


def _flow_endpoint_columns(side: str) -> list[tuple[str, str]]:
    return [
        (f"{side}_pod", "SimpleAggregateFunction(anyLast, LowCardinality(String))"),
        (f"{side}_namespace", "SimpleAggregateFunction(anyLast, LowCardinality(String))"),
        (f"{side}_service", "SimpleAggregateFunction(anyLast, LowCardinality(String))"),
        (f"{side}_workload", "SimpleAggregateFunction(anyLast, LowCardinality(String))"),
        (f"{side}_node", "SimpleAggregateFunction(anyLast, LowCardinality(String))"),
        (f"{side}_labels", "SimpleAggregateFunction(anyLast, Map(String, String))"),
    ]


FLOWS = Table(
    name="flows",
    columns=[
        ("window_start", "DateTime"),  # flows are cut into one-minute intervals
        ("stored_at", "DateTime DEFAULT now()"),
        ("node", "LowCardinality(String)"),
        # Writers send the 5-tuple (netrecall.ingest.flows); the id is the packets' own, computed here.
        ("flow_id", f"UInt64 DEFAULT {flow_id_expr('ip_a', 'port_a', 'ip_b', 'port_b')}"),
        # the 5-tuple is fixed by flow_id; ClickHouse wants non-key columns to be aggregates
        ("l4", "SimpleAggregateFunction(any, UInt8)"),
        ("ip_a", "SimpleAggregateFunction(any, IPv6)"),
        ("port_a", "SimpleAggregateFunction(any, UInt16)"),
        ("ip_b", "SimpleAggregateFunction(any, IPv6)"),
        ("port_b", "SimpleAggregateFunction(any, UInt16)"),
        ("first_ts", "SimpleAggregateFunction(min, DateTime64(9))"),
        ("last_ts", "SimpleAggregateFunction(max, DateTime64(9))"),
        ("packets_ab", "SimpleAggregateFunction(sum, UInt64)"),
        ("bytes_ab", "SimpleAggregateFunction(sum, UInt64)"),
        ("packets_ba", "SimpleAggregateFunction(sum, UInt64)"),
        ("bytes_ba", "SimpleAggregateFunction(sum, UInt64)"),
        ("tcp_flags_ab", "SimpleAggregateFunction(groupBitOr, UInt16)"),
        ("tcp_flags_ba", "SimpleAggregateFunction(groupBitOr, UInt16)"),
        ("syn_from", "SimpleAggregateFunction(max, UInt8)"),  # 1: a sent the SYN (a is client), 2: b did
        ("syn_ts", "SimpleAggregateFunction(min, Nullable(DateTime64(9)))"),
        ("synack_ts", "SimpleAggregateFunction(min, Nullable(DateTime64(9)))"),
        ("resets", "SimpleAggregateFunction(sum, UInt64)"),
        ("data_segments", "SimpleAggregateFunction(sum, UInt64)"),
        # segments with payload whose (direction, seq) was already seen in the same written batch: exact
        # for a retransmission that arrives within one batch (~1 s live, one 8 MB read on import), a
        # lower bound otherwise. Kept per batch because an exact per-flow set of sequence numbers made
        # this table larger than the packets it summarises.
        ("retransmissions", "SimpleAggregateFunction(sum, UInt64)"),
        # schema v5, for TCP-level failures: SYNs without ACK (a client's attempts, retries included: a
        # flow with SYNs and no SYN-ACK timed out, or was refused when a RST came back), packets
        # advertising a zero receive window (not SYN/FIN/RST, as Wireshark's tcp.analysis.zero_window),
        # and the first payload each way (time to first byte: the server's first byte after the client's)
        ("syns", "SimpleAggregateFunction(sum, UInt64)"),
        ("zero_windows", "SimpleAggregateFunction(sum, UInt64)"),
        ("first_data_ab", "SimpleAggregateFunction(min, Nullable(DateTime64(9)))"),
        ("first_data_ba", "SimpleAggregateFunction(min, Nullable(DateTime64(9)))"),
        *_flow_endpoint_columns("a"),
        *_flow_endpoint_columns("b"),
    ],
    engine="AggregatingMergeTree",
    partition_by="toStartOfHour(stored_at)",
    order_by="(window_start, node, flow_id)",
    indexes=[
        "INDEX ix_ip_a ip_a TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_ip_b ip_b TYPE bloom_filter(0.01) GRANULARITY 4",
    ],
    # A retried agent batch must not count twice here either: its flows carry the same
    # insert_deduplication_token as its packets.
    settings={"non_replicated_deduplication_window": 1000},
)

IDENTITY_FIELDS = ("pod", "namespace", "service", "workload", "node", "labels")


def _flows_select() -> str:
    """The SELECT that turns stored packets into flows rows, as netrecall.ingest.flows does for a batch
    being written (snapshots and the clean-up of an interrupted import rebuild flows with it).

    Grouped per flow, minute, node and direction (`fwd`: the packet goes from end a, the lower (ip, port),
    to b), so every a/b column is one plain aggregate picked after grouping - `if(fwd, count(), 0)`
    rather than countIf(fwd) on every row, `if(fwd, any(src_pod), any(dst_pod))` rather than
    anyLast(if(fwd, src_pod, dst_pod)), which copies a value per row. The 5-tuple is fixed by flow_id and
    fwd, so it is any() rather than a grouping key. Over 1.1M packets (one thread) this form takes 0.16 s
    against 0.42 s for the per-row one. The outer SELECT names the flows columns (`l4` is both an input
    and an output, so the inner level calls it l4_).
    """
    identity_any = "".join(
        f"    any(src_{f}) AS src_{f}_,\n    any(dst_{f}) AS dst_{f}_,\n" for f in IDENTITY_FIELDS
    )
    identity_ab = "".join(
        f"    if(fwd, src_{f}_, dst_{f}_) AS a_{f},\n    if(fwd, dst_{f}_, src_{f}_) AS b_{f},\n"
        for f in IDENTITY_FIELDS
    )
    return f"""
SELECT
    window_start, node, flow_id, l4_ AS l4, ip_a, port_a, ip_b, port_b, first_ts, last_ts,
    if(fwd, packets_, 0) AS packets_ab,
    if(fwd, bytes_, 0) AS bytes_ab,
    if(fwd, 0, packets_) AS packets_ba,
    if(fwd, 0, bytes_) AS bytes_ba,
    if(fwd, flags_, 0) AS tcp_flags_ab,
    if(fwd, 0, flags_) AS tcp_flags_ba,
    syn_ * if(fwd, 1, 2) AS syn_from,
    syn_ts, synack_ts, resets, data_segments, retransmissions, syns, zero_windows,
    if(fwd, first_data_, NULL) AS first_data_ab,
    if(fwd, NULL, first_data_) AS first_data_ba,
{identity_ab.rstrip().rstrip(",")}
FROM (
WITH (src_ip, src_port) <= (dst_ip, dst_port) AS fwd
SELECT
    toStartOfMinute(ts) AS window_start,
    node,
    flow_id,
    fwd,
    any(l4) AS l4_,
    any(if(fwd, src_ip, dst_ip)) AS ip_a,
    any(if(fwd, src_port, dst_port)) AS port_a,
    any(if(fwd, dst_ip, src_ip)) AS ip_b,
    any(if(fwd, dst_port, src_port)) AS port_b,
    min(ts) AS first_ts,
    max(ts) AS last_ts,
    count() AS packets_,
    sum(toUInt64(origlen)) AS bytes_,
    groupBitOr(tcp_flags) AS flags_,
    max(l4 = 6 AND bitAnd(tcp_flags, 0x12) = 0x02) AS syn_,
    minIf(toNullable(ts), l4 = 6 AND bitAnd(tcp_flags, 0x12) = 0x02) AS syn_ts,
    minIf(toNullable(ts), l4 = 6 AND bitAnd(tcp_flags, 0x12) = 0x12) AS synack_ts,
    countIf(l4 = 6 AND bitAnd(tcp_flags, 0x04) != 0) AS resets,
    countIf(l4 = 6 AND payload_len > 0) AS data_segments,
    toUInt64(data_segments - uniqExactIf(tcp_seq, l4 = 6 AND payload_len > 0)) AS retransmissions,
    countIf(l4 = 6 AND bitAnd(tcp_flags, 0x12) = 0x02) AS syns,
    countIf(l4 = 6 AND tcp_window = 0 AND bitAnd(tcp_flags, 0x07) = 0) AS zero_windows,
    minIf(toNullable(ts), l4 = 6 AND payload_len > 0) AS first_data_,
{identity_any.rstrip().rstrip(",")}
FROM {{packets}}
WHERE ip_version != 0
GROUP BY window_start, node, flow_id, fwd
)
"""


# `{packets}` is the packets table or a subquery over it.
FLOWS_SELECT = _flows_select()

WORKLOADS = Table(
    name="workloads",
    columns=[
        ("ip", "IPv6"),
        ("kind", "Enum8('pod' = 1, 'service' = 2, 'node' = 3)"),
        ("name", "LowCardinality(String)"),
        ("namespace", "LowCardinality(String)"),
        ("node", "LowCardinality(String)"),
        ("services", "Array(LowCardinality(String))"),
        ("labels", "Map(LowCardinality(String), String)"),
        ("owner", "LowCardinality(String)"),  # Kind/name of the controlling workload
        ("host_network", "Bool"),
        ("valid_from", "DateTime64(9)"),
        ("valid_to", "DateTime64(9) DEFAULT toDateTime64('2262-04-11 00:00:00', 9)"),  # open: still valid
        ("observed_at", "DateTime64(3) DEFAULT now64(3)"),
        ("stored_at", "DateTime DEFAULT now()"),
        ("source", "LowCardinality(String)"),  # inventory file, kube-apiserver, agent
    ],
    engine="ReplacingMergeTree",
    engine_args="observed_at",
    partition_by="toStartOfHour(stored_at)",
    order_by="(ip, valid_from, kind, namespace, name)",
)

API_CALLS = Table(
    name="api_calls",
    columns=[
        ("id", "String"),  # deterministic: the same call dissected twice gets the same id
        ("ts", "DateTime64(9) CODEC(Delta, ZSTD(1))"),  # first byte of the request
        ("stored_at", "DateTime DEFAULT now()"),
        ("dissected_at", "DateTime64(3) DEFAULT now64(3)"),
        ("elapsed_time", "UInt64"),  # microseconds, first request byte to first response byte
        ("protocol", "LowCardinality(String)"),  # http, dns, grpc, redis, kafka, postgresql, tls, tcp, udp
        ("node_name", "LowCardinality(String)"),
        ("src_ip", "IPv6"),
        ("src_port", "UInt16"),
        ("dst_ip", "IPv6"),
        ("dst_port", "UInt16"),
        *endpoint_columns("src"),
        *endpoint_columns("dst"),
        ("method", "LowCardinality(String)"),
        ("host", "String"),
        ("url", "String"),
        ("path", "String"),
        ("query_string", "String"),
        ("status_code", "Int32"),  # HTTP status; DNS rcode; gRPC status
        ("status_text", "LowCardinality(String)"),
        ("http_version", "LowCardinality(String)"),
        ("request_headers", "Map(String, String)"),
        ("response_headers", "Map(String, String)"),
        ("request_body_size", "UInt64"),  # the real size, even when the stored body is truncated
        ("response_body_size", "UInt64"),
        ("request_body", "String CODEC(ZSTD(3))"),
        ("response_body", "String CODEC(ZSTD(3))"),
        ("request_body_truncated", "Bool"),
        ("response_body_truncated", "Bool"),
        ("dns_id", "UInt16"),
        ("dns_questions", "Array(String)"),
        ("dns_question_types", "Array(LowCardinality(String))"),
        ("dns_answers", "Array(String)"),
        ("dns_request", "Bool"),
        ("dns_response", "Bool"),
        ("dns_truncated", "Bool"),
        ("grpc_method", "String"),
        ("grpc_status", "Int32"),
        # Protocol details beyond HTTP and DNS (schema v5; docs/protocols.md says what each protocol sets).
        ("status_message", "String"),  # grpc-message, Redis error text, PostgreSQL error message, TLS alert
        ("error_code", "LowCardinality(String)"),  # PostgreSQL SQLSTATE, Redis error prefix, Kafka error name
        ("request_messages", "UInt32"),  # gRPC messages (or Redis pipelined commands) in the request
        ("response_messages", "UInt32"),
        ("command_tag", "LowCardinality(String)"),  # PostgreSQL CommandComplete tag (SELECT, INSERT, ...)
        ("result_rows", "UInt64"),  # PostgreSQL rows returned or affected; Redis array length
        ("redis_type", "LowCardinality(String)"),  # reply type: simple, error, integer, bulk, array, ...
        ("db_user", "String"),  # PostgreSQL startup user
        ("db_name", "String"),  # PostgreSQL startup database
        ("client_id", "String"),  # Kafka client id
        ("kafka_api_key", "Int16"),
        ("kafka_api_version", "Int16"),
        ("kafka_correlation_id", "Int32"),
        ("kafka_topics", "Array(String)"),
        ("tls_sni", "String"),
        ("tls_version", "LowCardinality(String)"),  # negotiated (ServerHello), else the highest offered
        ("tls_client_versions", "Array(String)"),  # versions the client offered, GREASE left out
        ("tls_alpn", "Array(String)"),  # ALPN the client offered; the server's choice is tls_alpn_selected
        ("tls_alpn_selected", "LowCardinality(String)"),
        ("tls_cipher", "LowCardinality(String)"),  # the server's choice, as 0xNNNN
        ("ja3", "String"),  # md5 of the JA3 string
        ("ja3s", "String"),
        ("ja4", "String"),
        ("has_response", "Bool"),
        ("partial", "Bool"),  # built across a capture gap or from a stream seen mid-way
        ("error", "String"),  # why a stream could not be parsed ('' when it could)
        ("flow_id", "UInt64"),
        ("first_packet_ts", "DateTime64(9)"),
        ("last_packet_ts", "DateTime64(9)"),
    ],
    engine="ReplacingMergeTree",
    engine_args="dissected_at",
    partition_by="toStartOfHour(stored_at)",
    order_by="(toStartOfMinute(ts), protocol, id)",
    indexes=[
        "INDEX ix_status status_code TYPE minmax GRANULARITY 4",
        "INDEX ix_ns (src_namespace, dst_namespace) TYPE set(128) GRANULARITY 4",
        "INDEX ix_pods (src_pod, dst_pod) TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_svc (src_service, dst_service) TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_ips (src_ip, dst_ip) TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_path path TYPE ngrambf_v1(3, 4096, 3, 0) GRANULARITY 4",
        "INDEX ix_dnsq dns_questions TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_flow flow_id TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_id id TYPE bloom_filter(0.01) GRANULARITY 4",
        "INDEX ix_sni tls_sni TYPE bloom_filter(0.01) GRANULARITY 4",
    ],
)

# Per-minute latency histograms per workload edge, kept by a materialized view over api_calls (Coroot's
# way): percentiles over days read thousands of rows instead of millions of calls. Buckets are fixed,
# 5 ms to 10 s; a bucket counts the answered calls slower than the previous bound and at most its own.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LATENCY_BUCKET_COLUMNS = [f"le_{ms}ms" for ms in LATENCY_BUCKETS_MS] + ["gt_10000ms"]
# The service map's buckets (call_edges): the same series carried on below 5 ms, where calls inside a
# cluster mostly answer (a p50 of 0.1 ms must not read as 2.5 ms); its counts up to 5 ms add up to le_5ms.
EDGE_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, *LATENCY_BUCKETS_MS)
EDGE_BUCKET_COLUMNS = [f"le_{round(ms * 1000)}us" for ms in EDGE_BUCKETS_MS[:5]] + LATENCY_BUCKET_COLUMNS


def endpoint_name_sql(side: str) -> str:
    """SQL naming one end of a call as the RCA tools, the edge views and the page do: ns/workload,
    ns/service, ns/pod, or the bare IP."""
    return (
        f"multiIf({side}_workload != '', "
        f"concat({side}_namespace, '/', splitByChar('/', {side}_workload)[-1]), "
        f"{side}_service != '', concat({side}_namespace, '/', {side}_service), "
        f"{side}_pod != '', concat({side}_namespace, '/', {side}_pod), "
        f"replaceRegexpOne(toString({side}_ip), '^::ffff:', ''))"
    )


# A path segment that is an id: a number, a UUID, or a hex string of 8+ characters with a digit in it.
ID_SEGMENT = (
    "^([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{8,})$"
)


def route_template_sql(path: str = "path") -> str:
    """`/orders/8812` and `/orders/9911` -> `/orders/{id}` (numbers, UUIDs, hex ids), segment by segment."""
    return (
        "arrayStringConcat(arrayMap(s -> "
        "if(match(s, '" + ID_SEGMENT + "') AND match(s, '[0-9]'), '{id}', s), "
        f"splitByChar('/', substring({path}, 1, 512))), '/')"
    )


# The error kind of a call, as summarize_errors, the call_latency view and the page name it.
CALL_ERROR_KIND = """
    multiIf(
        protocol = 'dns' AND status_code != 0, 'dns_error',
        protocol = 'grpc' AND grpc_status != 0, 'grpc_error',
        protocol IN ('http', 'http2') AND status_code >= 500, 'http_5xx',
        protocol IN ('http', 'http2') AND status_code >= 400, 'http_4xx',
        protocol = 'redis' AND status_code != 0, 'redis_error',
        protocol = 'postgresql' AND status_code != 0, 'postgresql_error',
        protocol = 'kafka' AND status_code != 0, 'kafka_error',
        protocol = 'tls' AND status_code != 0, 'tls_alert',
        error != '', 'parse_error',
        '')
"""


def latency_bucket_counts(
    bounds_ms: tuple[float, ...] = LATENCY_BUCKETS_MS, columns: list[str] = LATENCY_BUCKET_COLUMNS
) -> list[str]:
    """`countIf(...) AS le_5ms`, ...: the answered calls of a group in each latency bucket."""
    buckets = []
    low = 0
    for column, ms in zip(columns, [*bounds_ms, None], strict=True):
        high = f" AND elapsed_time <= {round(ms * 1000)}" if ms is not None else ""
        buckets.append(f"countIf(has_response AND elapsed_time > {low}{high}) AS {column}")
        low = round(ms * 1000) if ms is not None else low
    # A bucket's lower bound is exclusive except the first: a 0 us call counts in le_5ms.
    buckets[0] = buckets[0].replace("elapsed_time > 0 AND ", "")
    return buckets


def _latency_select() -> str:
    """api_calls rows -> call_latency rows: the view's SELECT, and what the tools run over a snapshot's
    calls, a KFL filter or the minutes at a window's ragged ends (`{source}`, `{where}` to fill in)."""
    buckets = latency_bucket_counts()
    return f"""
SELECT
    toStartOfMinute(ts) AS minute,
    now() AS stored_at,
    {endpoint_name_sql("src")} AS src,
    {endpoint_name_sql("dst")} AS dst,
    protocol,
    multiIf(protocol = 'dns', dns_question_types[1], protocol = 'tls', '', method) AS method,
    multiIf(protocol IN ('http', 'http2'), {route_template_sql()},
            protocol = 'grpc', if(grpc_method != '', grpc_method, path),
            protocol = 'dns', dns_questions[1],
            protocol = 'tls', tls_sni, '') AS route,
    {CALL_ERROR_KIND.strip()} AS kind,
    if(kind = '', 0, if(kind = 'grpc_error', grpc_status, status_code)) AS code,
    count() AS calls,
    countIf(kind NOT IN ('', 'http_4xx')) AS failed,
    countIf(NOT has_response) AS no_response,
    sumIf(elapsed_time, has_response) AS latency_us,
    maxIf(elapsed_time, has_response) AS max_us,
    argMaxStateIf(id, elapsed_time, has_response) AS slowest,
    any(id) AS example_id,
    {("," + chr(10) + "    ").join(buckets)}
FROM {{source}}
WHERE {{where}}
GROUP BY minute, src, dst, protocol, method, route, kind, code
"""


LATENCY_SELECT = _latency_select()


def fill_select(select: str, source: str, where: str) -> str:
    """`{source}` and `{where}` filled in (not str.format: the SQL holds regex braces and '{id}')."""
    return select.replace("{source}", source).replace("{where}", where)


CALL_LATENCY = Table(
    name="call_latency",
    columns=[
        ("minute", "DateTime"),
        ("stored_at", "SimpleAggregateFunction(max, DateTime) DEFAULT now()"),
        ("src", "LowCardinality(String)"),  # ns/workload (endpoint_name_sql)
        ("dst", "LowCardinality(String)"),
        ("protocol", "LowCardinality(String)"),
        ("method", "LowCardinality(String)"),  # DNS: the query type
        ("route", "String"),  # HTTP path template, gRPC method, DNS name, TLS server name
        ("kind", "LowCardinality(String)"),  # '' for a call that did not fail, else its error kind
        ("code", "Int32"),  # 0 unless it failed: HTTP status, rcode, grpc-status, ...
        ("calls", "UInt64"),
        ("failed", "UInt64"),  # failed by the protocol's rule (a 4xx is not a failure here)
        ("no_response", "UInt64"),  # requests that never got an answer (not in the buckets)
        ("latency_us", "UInt64"),  # sum over answered calls: the mean
        ("max_us", "SimpleAggregateFunction(max, UInt64)"),
        ("slowest", "AggregateFunction(argMax, String, UInt64)"),  # the slowest call's id
        ("example_id", "SimpleAggregateFunction(any, String)"),
        *[(column, "UInt64") for column in LATENCY_BUCKET_COLUMNS],
    ],
    engine="SummingMergeTree",
    partition_by="toStartOfHour(stored_at)",
    order_by="(minute, src, dst, protocol, method, route, kind, code)",
)


@dataclass(frozen=True)
class View:
    """A materialized view writing into a table (`TO`): what runs on every insert into `source`."""

    name: str
    target: str
    source: str
    select: str  # with {source} and {where}


CALL_LATENCY_MV = View("call_latency_mv", "call_latency", "api_calls", LATENCY_SELECT)


def _latency_hourly_select() -> str:
    """call_latency rows -> call_latency_hourly rows (`{source}`, `{where}` to fill in)."""
    buckets = ", ".join(f"sum({c}) AS {c}" for c in LATENCY_BUCKET_COLUMNS)
    return f"""
SELECT
    toStartOfHour(minute) AS hour, max(stored_at) AS stored_at, src, dst, protocol, kind, code,
    sum(calls) AS calls, sum(failed) AS failed, sum(no_response) AS no_response,
    sum(latency_us) AS latency_us, max(max_us) AS max_us,
    min(minute) AS first_minute, max(minute) AS last_minute,
    {buckets}
FROM {{source}}
WHERE {{where}}
GROUP BY hour, src, dst, protocol, kind, code
"""


# call_latency summed per hour without the method and the route: what a dashboard over a day or a week
# reads per destination or per pair (24 x edges rows a day, whatever the routes). Kept by a view on
# call_latency, so a row written there (by its own view or by the migration's backfill) lands here too.
CALL_LATENCY_HOURLY = Table(
    name="call_latency_hourly",
    columns=[
        ("hour", "DateTime"),
        ("stored_at", "SimpleAggregateFunction(max, DateTime) DEFAULT now()"),
        ("src", "LowCardinality(String)"),
        ("dst", "LowCardinality(String)"),
        ("protocol", "LowCardinality(String)"),
        ("kind", "LowCardinality(String)"),
        ("code", "Int32"),
        ("calls", "UInt64"),
        ("failed", "UInt64"),
        ("no_response", "UInt64"),
        ("latency_us", "UInt64"),
        ("max_us", "SimpleAggregateFunction(max, UInt64)"),
        ("first_minute", "SimpleAggregateFunction(min, DateTime)"),  # first and last minute seen
        ("last_minute", "SimpleAggregateFunction(max, DateTime)"),
        *[(column, "UInt64") for column in LATENCY_BUCKET_COLUMNS],
    ],
    engine="SummingMergeTree",
    partition_by="toStartOfHour(stored_at)",
    order_by="(hour, src, dst, protocol, kind, code)",
)
CALL_LATENCY_HOURLY_MV = View(
    "call_latency_hourly_mv", "call_latency_hourly", "call_latency", _latency_hourly_select()
)


def _latency_dst_select() -> str:
    """call_latency rows -> call_latency_dst rows (`{source}`, `{where}` to fill in)."""
    buckets = ", ".join(f"sum({c}) AS {c}" for c in LATENCY_BUCKET_COLUMNS)
    return f"""
SELECT
    minute, max(stored_at) AS stored_at, dst, protocol, splitByChar('/', src)[1] AS src_namespace,
    sum(calls) AS calls, sum(failed) AS failed, sum(no_response) AS no_response,
    sum(latency_us) AS latency_us, max(max_us) AS max_us,
    {buckets}
FROM {{source}}
WHERE {{where}}
GROUP BY minute, dst, protocol, src_namespace
"""


# call_latency per minute and destination, the callers summed by namespace: what a time series of a
# destination's latency or of the call rate reads (Grafana's p99 over time, calls per second), several
# times fewer rows than the minutes per edge and route. Kept by a view on call_latency, as the hours are.
CALL_LATENCY_DST = Table(
    name="call_latency_dst",
    columns=[
        ("minute", "DateTime"),
        ("stored_at", "SimpleAggregateFunction(max, DateTime) DEFAULT now()"),
        ("dst", "LowCardinality(String)"),
        ("protocol", "LowCardinality(String)"),
        ("src_namespace", "LowCardinality(String)"),  # the callers' namespace (their IP when unnamed)
        ("calls", "UInt64"),
        ("failed", "UInt64"),
        ("no_response", "UInt64"),
        ("latency_us", "UInt64"),
        ("max_us", "SimpleAggregateFunction(max, UInt64)"),
        *[(column, "UInt64") for column in LATENCY_BUCKET_COLUMNS],
    ],
    engine="SummingMergeTree",
    partition_by="toStartOfHour(stored_at)",
    order_by="(minute, dst, protocol, src_namespace)",
)
CALL_LATENCY_DST_MV = View("call_latency_dst_mv", "call_latency_dst", "call_latency", _latency_dst_select())

# Per-minute RED per workload edge for the service map (netrecall.hub.ui.queries), kept by a view over
# api_calls: the map of an hour of 10M calls reads minutes x edges rows instead of the calls. Keyed by the
# identity columns the map groups by (namespace, workload, service, node), which keep api_calls' names, so
# the map's naming SQL and a KFL filter on those columns run on either table. An end with no workload and
# no service (or no namespace) is named by its pod or IP: `*_unnamed` (their hash, else 0) keeps such ends
# apart without splitting a workload's rows per pod; `*_pod` and `*_ip` are then one value per row.
EDGE_SIDE_COLUMNS = ("namespace", "workload", "service", "node")
EDGE_FILTER_COLUMNS = frozenset(
    [f"{side}_{column}" for side in ("src", "dst") for column in EDGE_SIDE_COLUMNS] + ["protocol"]
)
# Protocols whose calls carry 0 for success and anything else for a failure in status_code (Redis and
# PostgreSQL: 1 for an error reply; Kafka: the first error code; TLS: the fatal alert's description).
ZERO_IS_OK = ("dns", "redis", "postgresql", "kafka", "tls")

# Whether a call failed, by its protocol's own rule (HTTP: a 5xx; gRPC: a non-zero grpc-status): what
# summarize_errors, the edges' error counts and the page's service map all count.
CALL_FAILED = f"""
    multiIf(protocol IN ({", ".join(f"'{p}'" for p in ZERO_IS_OK)}), status_code != 0,
            protocol = 'grpc', grpc_status != 0,
            status_code >= 500)
"""


def _edge_side_columns(side: str) -> list[tuple[str, str]]:
    return [
        *[(f"{side}_{column}", "LowCardinality(String)") for column in EDGE_SIDE_COLUMNS],
        (f"{side}_unnamed", "UInt64"),
        (f"{side}_pod", "SimpleAggregateFunction(any, LowCardinality(String))"),
        (f"{side}_ip", "SimpleAggregateFunction(any, IPv6)"),
    ]


EDGE_ENDS = [f"{side}_{column}" for side in ("src", "dst") for column in (*EDGE_SIDE_COLUMNS, "unnamed")]
EDGE_KEY = [*EDGE_ENDS, "protocol"]


def _edges_select() -> str:
    """api_calls rows -> call_edges rows (`{source}`, `{where}` to fill in). The keys are computed one level
    down: an alias `src_pod` for any(src_pod) would otherwise shadow the column inside the key's hash."""
    unnamed = "".join(
        f"        if(({s}_workload = '' AND {s}_service = '') OR {s}_namespace = '', "
        f"cityHash64({s}_pod, {s}_ip), 0) AS {s}_unnamed, {s}_pod AS {s}_pod_, {s}_ip AS {s}_ip_,\n"
        for s in ("src", "dst")
    )
    sides = ", ".join(f"{s}_{c}" for s in ("src", "dst") for c in EDGE_SIDE_COLUMNS)
    # in the table's column order: the migration's backfill inserts it by position
    ends = "".join(
        f"    {', '.join(f'{s}_{c}' for c in (*EDGE_SIDE_COLUMNS, 'unnamed'))}, "
        f"any({s}_pod_) AS {s}_pod, any({s}_ip_) AS {s}_ip,\n"
        for s in ("src", "dst")
    )
    return f"""
SELECT
    minute,
    now() AS stored_at,
{ends}    protocol,
    count() AS calls,
    countIf(failed) AS errors,
    maxIf(elapsed_time, has_response) AS max_us,
    {("," + chr(10) + "    ").join(latency_bucket_counts(EDGE_BUCKETS_MS, EDGE_BUCKET_COLUMNS))}
FROM (
    SELECT
        toStartOfMinute(ts) AS minute, {sides}, protocol, elapsed_time, has_response,
{unnamed}        {" ".join(CALL_FAILED.split())} AS failed
    FROM {{source}}
    WHERE {{where}}
)
GROUP BY {", ".join(["minute", *EDGE_KEY])}
"""


EDGES_SELECT = _edges_select()

CALL_EDGES = Table(
    name="call_edges",
    columns=[
        ("minute", "DateTime"),
        ("stored_at", "SimpleAggregateFunction(max, DateTime) DEFAULT now()"),
        *_edge_side_columns("src"),
        *_edge_side_columns("dst"),
        ("protocol", "LowCardinality(String)"),
        ("calls", "UInt64"),
        ("errors", "UInt64"),  # failed by the protocol's rule (CALL_FAILED), as summarize_errors counts
        # the answered calls' latency: the slowest, and counts per bucket (EDGE_BUCKETS_MS)
        ("max_us", "SimpleAggregateFunction(max, UInt64)"),
        *[(column, "UInt64") for column in EDGE_BUCKET_COLUMNS],
    ],
    engine="SummingMergeTree",
    partition_by="toStartOfHour(stored_at)",
    order_by=f"(minute, {', '.join(EDGE_KEY)})",
)
CALL_EDGES_MV = View("call_edges_mv", "call_edges", "api_calls", EDGES_SELECT)
VIEWS = [CALL_LATENCY_MV, CALL_LATENCY_HOURLY_MV, CALL_LATENCY_DST_MV, CALL_EDGES_MV]


def create_view_sql(view: View, cluster: str | None = None) -> str:
    """CREATE MATERIALIZED VIEW ... TO; on a cluster the view runs on each shard's local tables."""
    suffix = LOCAL_SUFFIX if cluster else ""
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    select = fill_select(view.select, view.source + suffix, "1").strip()
    head = f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view.name}{on_cluster} TO {view.target}{suffix}"
    return f"{head}\nAS {select}"


DISSECT_STATE = Table(
    name="dissect_state",
    columns=[
        ("scope", "String"),  # 'live' or 'snapshot:NAME', plus node filter
        ("watermark", "DateTime64(9)"),  # packets before this time are dissected
        ("updated_at", "DateTime64(3) DEFAULT now64(3)"),
    ],
    engine="ReplacingMergeTree",
    engine_args="updated_at",
    order_by="scope",
    ttl=False,
)

IMPORTS = Table(
    name="imports",
    columns=[
        ("source", "String"),  # sha256 of the file's bytes
        ("file_name", "String"),
        ("node", "LowCardinality(String)"),
        ("imported_at", "DateTime64(3) DEFAULT now64(3)"),
        ("packets", "UInt64"),
        ("bytes", "UInt64"),
        ("skipped", "UInt64"),
        ("first_ts", "DateTime64(9)"),
        ("last_ts", "DateTime64(9)"),
    ],
    engine="ReplacingMergeTree",
    engine_args="imported_at",
    order_by="source",
    ttl=False,
)

SNAPSHOTS = Table(
    name="snapshots",
    columns=[
        ("name", "String"),
        ("created_at", "DateTime64(3) DEFAULT now64(3)"),
        ("created_by", "String"),
        ("since", "DateTime64(9)"),
        ("until", "DateTime64(9)"),
        ("nodes", "Array(String)"),
        ("packets", "UInt64"),
        ("bytes", "UInt64"),
        ("note", "String"),
    ],
    engine="ReplacingMergeTree",
    engine_args="created_at",
    order_by="name",
    ttl=False,
)

EXPORTS = Table(
    name="exports",
    columns=[
        ("id", "UUID DEFAULT generateUUIDv4()"),
        ("created_at", "DateTime64(3) DEFAULT now64(3)"),
        ("created_by", "String"),
        ("host", "String"),
        ("filters", "String"),  # JSON of the filters as given
        ("file", "String"),
        ("format", "LowCardinality(String)"),
        ("sha256", "String"),
        ("packets", "UInt64"),
        ("bytes", "UInt64"),
        ("netrecall_version", "String"),
        # Chain of custody (schema v5): the CronJob schedule that ran the export ('' by hand) and why
        ("schedule", "LowCardinality(String)"),
        ("reason", "String"),
    ],
    order_by="created_at",
    ttl=False,
)

# The agents' own health, one row per agent per interval, so Grafana on ClickHouse can show what the
# Prometheus counters show (docs/agent.md "Counters"). Counters are the increments during the interval
# (sum() over any time bucket is right); gauges are the value at `ts`. Rolls with the other tables.
AGENT_STATS = Table(
    name="agent_stats",
    columns=[
        ("ts", "DateTime64(3)"),  # end of the interval
        ("stored_at", "DateTime DEFAULT now()"),
        ("node", "LowCardinality(String)"),
        ("run_id", "String"),  # one agent process: a restart starts a new run
        ("backend", "LowCardinality(String)"),  # ebpf or afpacket
        ("interval_s", "Float32"),
        ("captured_packets", "UInt64"),
        ("captured_bytes", "UInt64"),
        ("kernel_drops", "UInt64"),
        ("userspace_drops", "UInt64"),
        ("spooled_packets", "UInt64"),
        ("replayed_packets", "UInt64"),
        ("inserted_packets", "UInt64"),
        ("spool_dropped_packets", "UInt64"),
        ("rejected_packets", "UInt64"),
        ("batches", "UInt64"),  # packet batches handed to delivery
        ("spool_batches", "UInt64"),
        ("spool_bytes", "UInt64"),
        ("queue_chunks", "UInt32"),
    ],
    partition_by="toStartOfHour(stored_at)",
    order_by="(node, ts)",
)

META = Table(
    name="netrecall_meta",
    columns=[("key", "String"), ("value", "String"), ("updated_at", "DateTime64(3) DEFAULT now64(3)")],
    engine="ReplacingMergeTree",
    engine_args="updated_at",
    order_by="key",
    ttl=False,
)


def _order_by_columns(order_by: str) -> str:
    """'(toStartOfMinute(ts), flow_id, ts)' -> 'toStartOfMinute(ts), flow_id, ts' (one tuple level off)."""
    inner = order_by.strip()
    return inner[1:-1] if inner.startswith("(") and inner.endswith(")") else inner


def snapshot_table(live: Table) -> Table:
    """The frozen copy of a live table: a leading `snapshot` name, the same columns, engine and indexes.

    Snapshots are kept until deleted, so no TTL (and the byte budget only touches ROLLING_TABLES);
    PARTITION BY snapshot makes `snapshot delete` a fast DROP PARTITION.
    """
    columns = list(live.columns)
    if live.engine == "AggregatingMergeTree":
        # The live table may keep stored_at only because it is in the partition key; here it is not, and
        # an AggregatingMergeTree wants every non-key column to be an aggregate.
        keep_max = "SimpleAggregateFunction(max, DateTime)"
        columns = [(n, keep_max if n == "stored_at" else t) for n, t in columns]
    return Table(
        name=f"snapshot_{live.name}",
        columns=[("snapshot", "LowCardinality(String)"), *columns],
        order_by=f"(snapshot, {_order_by_columns(live.order_by)})",
        engine=live.engine,
        engine_args=live.engine_args,
        partition_by="snapshot",
        ttl=False,
        indexes=list(live.indexes),
        settings={k: v for k, v in live.settings.items() if k in PACKET_PARTS or k in PACKET_GRANULES},
    )


SNAPSHOT_PACKETS = snapshot_table(PACKETS)
SNAPSHOT_FLOWS = snapshot_table(FLOWS)
SNAPSHOT_WORKLOADS = snapshot_table(WORKLOADS)
SNAPSHOT_API_CALLS = snapshot_table(API_CALLS)
SNAPSHOT_TABLES = [SNAPSHOT_PACKETS, SNAPSHOT_FLOWS, SNAPSHOT_WORKLOADS, SNAPSHOT_API_CALLS]

TABLES: list[Table] = [
    META,
    PACKETS,
    FLOWS,
    WORKLOADS,
    API_CALLS,
    CALL_LATENCY,
    CALL_LATENCY_HOURLY,
    CALL_LATENCY_DST,
    CALL_EDGES,
    DISSECT_STATE,
    IMPORTS,
    SNAPSHOTS,
    EXPORTS,
    AGENT_STATS,
    *SNAPSHOT_TABLES,
]
ROLLING_TABLES = [t.name for t in TABLES if t.ttl]


def create_table_sql(table: Table, ttl_seconds: int = DEFAULT_TTL_SECONDS, cluster: str | None = None) -> str:
    """CREATE TABLE IF NOT EXISTS for one server, or the local ReplicatedMergeTree half on a cluster."""
    name = table.name + (LOCAL_SUFFIX if cluster else "")
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    engine = table.engine
    engine_args = table.engine_args
    if cluster:
        engine = "Replicated" + engine
        zk_args = f"'/clickhouse/tables/{{shard}}/{{database}}/{name}', '{{replica}}'"
        engine_args = f"{zk_args}, {engine_args}" if engine_args else zk_args
    body = [f"    `{col}` {col_type}" for col, col_type in table.columns]
    body += [f"    {index}" for index in table.indexes]
    lines = [f"CREATE TABLE IF NOT EXISTS {name}{on_cluster}", "(", ",\n".join(body), ")"]
    lines.append(f"ENGINE = {engine}({engine_args})")
    if table.partition_by:
        lines.append(f"PARTITION BY {table.partition_by}")
    lines.append(f"ORDER BY {table.order_by}")
    if table.ttl:
        lines.append(_ttl_clause(ttl_seconds))
    settings = dict(table.settings)
    if table.ttl:
        settings["ttl_only_drop_parts"] = 1
    if cluster:
        settings.pop("non_replicated_deduplication_window", None)
    if settings:
        lines.append("SETTINGS " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
    return "\n".join(lines)


def create_distributed_sql(table: Table, cluster: str) -> str:
    """The cluster-wide table over the local ones; inserts are spread by flow so a flow stays on one shard."""
    sharding = "flow_id" if "flow_id" in table.column_names else "rand()"
    return (
        f"CREATE TABLE IF NOT EXISTS {table.name} ON CLUSTER {cluster} AS {table.name}{LOCAL_SUFFIX}\n"
        f"ENGINE = Distributed({cluster}, currentDatabase(), {table.name}{LOCAL_SUFFIX}, {sharding})"
    )


def schema_statements(ttl_seconds: int = DEFAULT_TTL_SECONDS, cluster: str | None = None) -> list[str]:
    """Every DDL statement, in the order they must run."""
    statements: list[str] = []
    for table in TABLES:
        statements.append(create_table_sql(table, ttl_seconds, cluster))
        if cluster:
            statements.append(create_distributed_sql(table, cluster))
    statements += [create_view_sql(view, cluster) for view in VIEWS]
    return statements
