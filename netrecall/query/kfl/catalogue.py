"""The KFL field catalogue: every field name (Kubeshark's spelling), its CEL type, and the ClickHouse
expression it maps to, for the `api_calls` table and for the `flows` table (L4 `conn`/`flow` queries).

Absent values are the column defaults ("" / 0 / false / [] / {}), which is what Kubeshark documents.
"""

from __future__ import annotations

from dataclasses import dataclass

STRING, INT, DOUBLE, BOOL = "string", "int", "double", "bool"
TIMESTAMP, DURATION = "timestamp", "duration"
LIST_STRING, MAP_STRING = "list<string>", "map<string,string>"


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    sql: str  # a ClickHouse expression over the table's columns
    doc: str
    ip_column: str = ""  # for src.ip/dst.ip: the IPv6 column, so `== "10.0.0.1"` compares the raw column
    protocol_flag: str = ""  # for the protocol booleans: the protocol value tested
    any_of: tuple[
        str, ...
    ] = ()  # for namespaces/pods/services: `"x" in f` is `col1 = x OR col2 = x` (indexes)


def _ip_text(column: str) -> str:
    # IPv4 is stored v4-mapped (::ffff:a.b.c.d); KFL shows it as a dotted quad, and an absent IP as "".
    return (
        f"if({column} = toIPv6('::'), '', "
        f"replaceRegexpOne(IPv6NumToString({column}), "
        f"'^::ffff:([0-9]+[.][0-9]+[.][0-9]+[.][0-9]+)$', '\\\\1'))"
    )


def _local_end(side_if_local: str, other: str, node: str = "node_name") -> str:
    # Kubeshark's "local" peer is the one on the capturing node; when both or neither are, the source.
    return f"if(dst_node = {node} AND src_node != {node}, {other}, {side_if_local})"


PROTOCOLS = (
    "http",
    "dns",
    "grpc",
    "redis",
    "kafka",
    "postgresql",
    "tls",
    "tcp",
    "udp",
    "amqp",
    "mysql",
    "mongodb",
    "ldap",
    "ws",
    "gql",
)


def _only(protocol: str, column: str, empty: str = "''") -> str:
    # A generic column read as one protocol's field: other protocols' rows show the absent value.
    return f"if(protocol = '{protocol}', {column}, {empty})"


def _protocol_detail_fields() -> list[Field]:
    """Fields of the protocols beyond HTTP and DNS (Kubeshark's names, then netrecall's extensions)."""
    return [
        Field(
            "grpc_message",
            STRING,
            _only("grpc", "status_message"),
            "gRPC grpc-message (netrecall extension).",
        ),
        Field(
            "redis_command", STRING, _only("redis", "toString(method)"), "Redis command, upper-cased (SET)."
        ),
        Field("redis_key", STRING, _only("redis", "path"), "Redis key (the command's first argument)."),
        Field(
            "redis_type",
            STRING,
            "toString(redis_type)",
            "Redis reply type (simple, error, bulk, array, ...).",
        ),
        Field("postgresql_query", STRING, _only("postgresql", "path"), "PostgreSQL SQL text."),
        Field("postgresql_user", STRING, "db_user", "PostgreSQL user from the connection's startup message."),
        Field("postgresql_database", STRING, "db_name", "PostgreSQL database from the startup message."),
        Field(
            "postgresql_error_code",
            STRING,
            _only("postgresql", "toString(error_code)"),
            "PostgreSQL SQLSTATE of an ErrorResponse (40001, 23505, ...).",
        ),
        Field(
            "postgresql_command_tag",
            STRING,
            _only("postgresql", "toString(command_tag)"),
            "PostgreSQL command tag (SELECT 3, INSERT 0 1; netrecall extension).",
        ),
        Field(
            "kafka_api_key_name",
            STRING,
            _only("kafka", "toString(method)"),
            "Kafka API (Produce, Fetch, ...).",
        ),
        Field("kafka_api_key", INT, _only("kafka", "toInt64(kafka_api_key)", "-1"), "Kafka API key number."),
        Field("kafka_api_version", INT, "toInt64(kafka_api_version)", "Kafka API version."),
        Field("kafka_client_id", STRING, "client_id", "Kafka client id."),
        Field("kafka_topics", LIST_STRING, "kafka_topics", "Kafka topics the request names."),
        Field("tls_sni", STRING, "tls_sni", "TLS server name (ClientHello SNI)."),
        Field("tls_version", STRING, "toString(tls_version)", "TLS version negotiated (TLS 1.3, ...)."),
        Field("tls_client_versions", LIST_STRING, "tls_client_versions", "TLS versions the client offered."),
        Field("tls_alpn", LIST_STRING, "tls_alpn", "ALPN protocols the client offered (h2, http/1.1)."),
        Field("tls_cipher", STRING, "toString(tls_cipher)", "Cipher suite the server chose (0x1301)."),
        Field("ja3", STRING, "ja3", "JA3 fingerprint of the ClientHello (md5)."),
        Field("ja3s", STRING, "ja3s", "JA3S fingerprint of the ServerHello (md5; netrecall extension)."),
        Field("ja4", STRING, "ja4", "JA4 fingerprint of the ClientHello (FoxIO)."),
        Field("status_message", STRING, "status_message", "Error text: grpc-message, Redis error, ..."),
        Field("error_code", STRING, "toString(error_code)", "Protocol error code as text (SQLSTATE, ...)."),
    ]


def _api_calls_fields() -> list[Field]:
    fields = [
        Field(
            "id",
            STRING,
            "id",
            "The call's id (deterministic: the same call dissected twice has the same id).",
        ),
        Field("timestamp", TIMESTAMP, "ts", "When the request's first byte was seen (UTC)."),
        Field(
            "elapsed_time",
            INT,
            "toInt64(elapsed_time)",
            "Microseconds from the first request byte to the first response byte.",
        ),
        Field("node_name", STRING, "node_name", "The node whose capture saw the call."),
        Field(
            "protocol",
            STRING,
            "protocol",
            "Detected protocol, lowercase (http, dns, grpc, ...); == / != / in compare case-insensitively.",
        ),
        Field(
            "src.ip",
            STRING,
            _ip_text("src_ip"),
            "Source IP address (IPv4 as a dotted quad).",
            ip_column="src_ip",
        ),
        Field("dst.ip", STRING, _ip_text("dst_ip"), "Destination IP address.", ip_column="dst_ip"),
        Field("src.port", INT, "toInt64(src_port)", "Source port."),
        Field("dst.port", INT, "toInt64(dst_port)", "Destination port."),
        Field("method", STRING, "method", "HTTP method (GET, POST, ...); for other protocols their verb."),
        Field("url", STRING, "url", "Path and query string as requested."),
        Field("path", STRING, "path", "URL path without the query string."),
        Field(
            "query_string",
            STRING,
            "query_string",
            'Raw query string; query_string["k"] reads one parameter (Kubeshark treats it as a map).',
        ),
        Field("host", STRING, "host", "HTTP Host / :authority (netrecall extension)."),
        Field(
            "status_code", INT, "toInt64(status_code)", "HTTP status; for DNS the rcode; for gRPC the status."
        ),
        Field("status_text", STRING, "status_text", "Reason phrase / rcode name (netrecall extension)."),
        Field("http_version", STRING, "http_version", "HTTP/1.0, HTTP/1.1, HTTP/2."),
        Field("request.headers", MAP_STRING, "request_headers", "Request headers (names as dissected)."),
        Field("response.headers", MAP_STRING, "response_headers", "Response headers."),
        Field(
            "request_body_size", INT, "toInt64(request_body_size)", "Request body size in bytes (real size)."
        ),
        Field("response_body_size", INT, "toInt64(response_body_size)", "Response body size in bytes."),
        Field("src.pod.name", STRING, "src_pod", "Source pod name."),
        Field("src.pod.namespace", STRING, "src_namespace", "Source pod namespace."),
        Field("dst.pod.name", STRING, "dst_pod", "Destination pod name."),
        Field("dst.pod.namespace", STRING, "dst_namespace", "Destination pod namespace."),
        Field("src.service.name", STRING, "src_service", "Source service name."),
        Field("dst.service.name", STRING, "dst_service", "Destination service name."),
        Field(
            "src.service.namespace",
            STRING,
            "if(src_service != '', src_namespace, '')",
            "Source service namespace.",
        ),
        Field(
            "dst.service.namespace",
            STRING,
            "if(dst_service != '', dst_namespace, '')",
            "Destination service namespace.",
        ),
        Field("src.namespace", STRING, "src_namespace", "Source namespace (pod or service)."),
        Field("dst.namespace", STRING, "dst_namespace", "Destination namespace (pod or service)."),
        Field(
            "src.name",
            STRING,
            "if(src_pod != '', src_pod, src_service)",
            "Source pod name, else service name.",
        ),
        Field(
            "dst.name",
            STRING,
            "if(dst_pod != '', dst_pod, dst_service)",
            "Destination pod name, else service name.",
        ),
        Field("src.node.name", STRING, "src_node", "Node hosting the source pod (netrecall extension)."),
        Field("dst.node.name", STRING, "dst_node", "Node hosting the destination pod (netrecall extension)."),
        Field(
            "src.workload",
            STRING,
            "src_workload",
            "Owner of the source pod, Kind/name (netrecall extension).",
        ),
        Field("dst.workload", STRING, "dst_workload", "Owner of the destination pod (netrecall extension)."),
        Field("src.labels", MAP_STRING, "src_labels", "Labels of the source pod (netrecall extension)."),
        Field("dst.labels", MAP_STRING, "dst_labels", "Labels of the destination pod (netrecall extension)."),
        Field(
            "namespaces",
            LIST_STRING,
            "arrayDistinct(arrayFilter(x -> x != '', [toString(src_namespace), toString(dst_namespace)]))",
            "Namespaces of both ends.",
            any_of=("src_namespace", "dst_namespace"),
        ),
        Field(
            "pods",
            LIST_STRING,
            "arrayDistinct(arrayFilter(x -> x != '', [toString(src_pod), toString(dst_pod)]))",
            "Pod names of both ends.",
            any_of=("src_pod", "dst_pod"),
        ),
        Field(
            "services",
            LIST_STRING,
            "arrayDistinct(arrayFilter(x -> x != '', [toString(src_service), toString(dst_service)]))",
            "Service names of both ends.",
            any_of=("src_service", "dst_service"),
        ),
        Field(
            "local_labels",
            MAP_STRING,
            _local_end("src_labels", "dst_labels"),
            "Labels of the local peer (the end on the capturing node; the source when both or neither are).",
        ),
        Field(
            "remote_labels", MAP_STRING, _local_end("dst_labels", "src_labels"), "Labels of the remote peer."
        ),
        Field("local_node_name", STRING, _local_end("src_node", "dst_node"), "Node of the local peer."),
        Field("remote_node_name", STRING, _local_end("dst_node", "src_node"), "Node of the remote peer."),
        Field("dns_questions", LIST_STRING, "dns_questions", "Queried names."),
        Field("dns_answers", LIST_STRING, "dns_answers", "Answer records (addresses, names)."),
        Field(
            "dns_question_types",
            LIST_STRING,
            "CAST(dns_question_types, 'Array(String)')",
            "Question types (A, AAAA, SRV, ...).",
        ),
        Field("dns_request", BOOL, "dns_request", "The call carries a DNS query."),
        Field("dns_response", BOOL, "dns_response", "The call carries a DNS response."),
        Field("grpc_method", STRING, "grpc_method", "gRPC method (/package.Service/Method)."),
        Field("grpc_status", INT, "toInt64(grpc_status)", "gRPC status code."),
        *_protocol_detail_fields(),
        Field(
            "flow_id", INT, "toInt64(flow_id)", "The L4 flow the call came from (cross-reference to flows)."
        ),
        Field("partial", BOOL, "partial", "Built across a capture gap or from a stream seen mid-way."),
        Field("error", STRING, "error", "Why the stream could not be fully parsed ('' when it could)."),
        Field("has_response", BOOL, "has_response", "A response was seen (netrecall extension)."),
    ]
    fields += [
        Field(p, BOOL, f"protocol = '{p}'", f"The call is {p.upper()}.", protocol_flag=p) for p in PROTOCOLS
    ]
    return fields


def _flow_end(side: str, a_expr: str, b_expr: str) -> str:
    # A flow's client is the end that sent the SYN (syn_from = 2: the b end); without a SYN, the a end.
    return (
        f"if(syn_from = 2, {b_expr}, {a_expr})" if side == "src" else f"if(syn_from = 2, {a_expr}, {b_expr})"
    )


def _flows_fields() -> list[Field]:
    conn_state = (
        "if(l4 = 6 AND bitAnd(bitOr(tcp_flags_ab, tcp_flags_ba), 5) != 0, 'closed', "
        "if(l4 = 6 AND syn_ts IS NOT NULL AND synack_ts IS NULL, 'in_progress', 'open'))"
    )
    fields = [
        Field("timestamp", TIMESTAMP, "first_ts", "First packet of the flow in this interval."),
        Field(
            "elapsed_time",
            INT,
            "intDiv(toUnixTimestamp64Nano(last_ts) - toUnixTimestamp64Nano(first_ts), 1000)",
            "Microseconds between the first and the last packet of the interval.",
        ),
        Field("node_name", STRING, "node", "The node whose capture saw the flow."),
        Field("flow_id", INT, "toInt64(flow_id)", "Flow id (both directions of one 5-tuple)."),
        Field(
            "protocol",
            STRING,
            "multiIf(l4 = 6, 'tcp', l4 = 17, 'udp', l4 = 1, 'icmp', toString(l4))",
            "tcp, udp, icmp.",
        ),
        Field("tcp", BOOL, "l4 = 6", "A TCP flow."),
        Field("udp", BOOL, "l4 = 17", "A UDP flow."),
        Field("conn", BOOL, "1", "Every flows row (Kubeshark's L4 connection entries)."),
        Field("flow", BOOL, "1", "Every flows row (Kubeshark's L4 flow entries)."),
        Field("tcp_conn", BOOL, "l4 = 6", "A TCP connection."),
        Field("tcp_flow", BOOL, "l4 = 6", "A TCP flow."),
        Field("udp_conn", BOOL, "l4 = 17", "A UDP connection."),
        Field("udp_flow", BOOL, "l4 = 17", "A UDP flow."),
        Field(
            "conn_state",
            STRING,
            conn_state,
            "open, in_progress (SYN without SYN-ACK) or closed (FIN or RST seen).",
        ),
        Field("resets", INT, "toInt64(resets)", "TCP resets seen (netrecall extension)."),
        Field(
            "retransmissions",
            INT,
            "toInt64(retransmissions)",
            "Data segments seen again within one insert batch (netrecall extension).",
        ),
        Field("syns", INT, "toInt64(syns)", "SYNs without ACK: connection attempts, retries included."),
        Field("zero_windows", INT, "toInt64(zero_windows)", "Packets advertising a zero receive window."),
        Field(
            "handshake_rtt",
            INT,
            "if(syn_ts IS NULL OR synack_ts IS NULL, 0, dateDiff('microsecond', syn_ts, synack_ts))",
            "Microseconds from SYN to SYN-ACK (0 when either was not seen in this interval).",
        ),
        Field(
            "ttfb",
            INT,
            "if(first_data_ab IS NULL OR first_data_ba IS NULL, 0, "
            "abs(dateDiff('microsecond', first_data_ab, first_data_ba)))",
            "Microseconds between the first payload each way (time to first byte) in this interval.",
        ),
        Field(
            "conn_refused",
            BOOL,
            "l4 = 6 AND syn_from != 0 AND synack_ts IS NULL AND resets > 0",
            "A RST came back instead of a SYN-ACK (the port is closed).",
        ),
        Field(
            "conn_timeout",
            BOOL,
            "l4 = 6 AND syn_from != 0 AND synack_ts IS NULL AND resets = 0",
            "SYNs without SYN-ACK or RST in this interval (list_l4_flows waits 1 s to call it a timeout).",
        ),
    ]
    ends = {
        "ip": (_ip_text("ip_a"), _ip_text("ip_b"), STRING),
        "port": ("toInt64(port_a)", "toInt64(port_b)", INT),
        "pod.name": ("a_pod", "b_pod", STRING),
        "pod.namespace": ("a_namespace", "b_namespace", STRING),
        "namespace": ("a_namespace", "b_namespace", STRING),
        "service.name": ("a_service", "b_service", STRING),
        "name": ("if(a_pod != '', a_pod, a_service)", "if(b_pod != '', b_pod, b_service)", STRING),
        "node.name": ("a_node", "b_node", STRING),
        "workload": ("a_workload", "b_workload", STRING),
        "labels": ("a_labels", "b_labels", MAP_STRING),
    }
    for side in ("src", "dst"):
        for suffix, (a_expr, b_expr, kind) in ends.items():
            fields.append(
                Field(
                    f"{side}.{suffix}",
                    kind,
                    _flow_end(side, a_expr, b_expr),
                    f"The {'client' if side == 'src' else 'server'} end's {suffix}.",
                )
            )
    for name, column in (("namespaces", "namespace"), ("pods", "pod"), ("services", "service")):
        fields.append(
            Field(
                name,
                LIST_STRING,
                f"arrayDistinct(arrayFilter(x -> x != '', [toString(a_{column}), toString(b_{column})]))",
                f"{name.capitalize()} of both ends.",
                any_of=(f"a_{column}", f"b_{column}"),
            )
        )
    local_a = "b_node != node OR a_node = node"  # the a end is local unless only b runs on the capturing node
    for prefix in ("conn", "flow"):
        fields += [
            Field(
                f"{prefix}_local_pkts",
                INT,
                f"toInt64(if({local_a}, packets_ab, packets_ba))",
                "Packets sent by the local peer.",
            ),
            Field(
                f"{prefix}_local_bytes",
                INT,
                f"toInt64(if({local_a}, bytes_ab, bytes_ba))",
                "Bytes sent by the local peer.",
            ),
            Field(
                f"{prefix}_remote_pkts",
                INT,
                f"toInt64(if({local_a}, packets_ba, packets_ab))",
                "Packets sent by the remote peer.",
            ),
            Field(
                f"{prefix}_remote_bytes",
                INT,
                f"toInt64(if({local_a}, bytes_ba, bytes_ab))",
                "Bytes sent by the remote peer.",
            ),
        ]
    fields.append(Field("flow_state", STRING, conn_state, "Same as conn_state."))
    fields += [
        Field("local_labels", MAP_STRING, f"if({local_a}, a_labels, b_labels)", "Labels of the local peer."),
        Field(
            "remote_labels", MAP_STRING, f"if({local_a}, b_labels, a_labels)", "Labels of the remote peer."
        ),
    ]
    return fields


CATALOGUES: dict[str, dict[str, Field]] = {
    "api_calls": {f.name: f for f in _api_calls_fields()},
    "flows": {f.name: f for f in _flows_fields()},
}

# Flags that only make sense on L4 flows: a filter naming one is compiled against `flows`.
FLOW_ONLY_FLAGS = frozenset({"conn", "flow", "tcp_conn", "tcp_flow", "udp_conn", "udp_flow"}) | frozenset(
    name for name in CATALOGUES["flows"] if name.startswith(("conn_", "flow_")) and name != "flow_id"
)

# Kubeshark's KFL v1 spellings (and a few camelCase ones) -> KFL2 names; accepted with a note.
LEGACY_ALIASES = {
    "response.status": "status_code",
    "response.statusCode": "status_code",
    "request.method": "method",
    "request.path": "path",
    "request.url": "url",
    "request.queryString": "query_string",
    "request.bodySize": "request_body_size",
    "response.bodySize": "response_body_size",
    "src.ns": "src.namespace",
    "dst.ns": "dst.namespace",
    "src.pod.ns": "src.pod.namespace",
    "dst.pod.ns": "dst.pod.namespace",
    "elapsedTime": "elapsed_time",
    "statusCode": "status_code",
    "node.name": "node_name",
    "src.service": "src.service.name",
    "dst.service": "dst.service.name",
    "src.pod": "src.pod.name",
    "dst.pod": "dst.pod.name",
}
