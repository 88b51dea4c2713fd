"""Synthetic-but-realistic `api_calls` rows made by ClickHouse itself (INSERT ... SELECT FROM numbers(N)):
HTTP/DNS/gRPC/Redis mix, ~40 workloads across 8 namespaces with labels, skewed status codes and DNS rcodes,
paths with ids, spread evenly over `span_s` seconds. Used by bench_kfl and the EXPLAIN tests."""

from __future__ import annotations

from netrecall.store import Store

NAMESPACES = ["production", "staging", "default", "kube-system", "payments", "monitoring", "search", "batch"]
SERVICES = [
    "frontend",
    "checkout",
    "payment-service",
    "cart",
    "catalog",
    "search",
    "auth",
    "users",
    "orders",
    "inventory",
    "shipping",
    "email",
    "recommend",
    "ads",
    "currency",
    "gateway",
    "redis",
    "postgres",
    "kafka",
    "coredns",
]
PATHS = [
    "/api/v1/users",
    "/api/v1/orders",
    "/health",
    "/api/v2/payments/charge",
    "/metrics",
    "/login",
    "/api/v1/cart/items",
    "/static/app.js",
    "/api/v1/search",
    "/api/v1/users/export",
]


def _array(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "") + "'" for v in values) + "]"


# The method each path is called with, in call-graph mode (a route has its method).
PATH_METHODS = ["GET", "POST", "GET", "POST", "GET", "POST", "PUT", "GET", "GET", "GET"]
CALLEES = 3  # destinations each workload calls, in call-graph mode
ROUTES = 4  # paths each destination serves, in call-graph mode


def insert_synthetic_calls(
    store: Store,
    rows: int,
    start_ns: int,
    span_s: int = 86400,
    table: str = "api_calls",
    seed: int = 1,
    call_graph: bool = False,
) -> None:
    """Insert `rows` calls into `table` starting at `start_ns` (generated inside the engine: fast).

    By default every call picks its destination, path, method and DNS name at random: every workload calls
    every other with every route (the worst case for anything grouping by edge). With `call_graph` the
    traffic has the shape of a cluster's: each of the 40 workloads calls CALLEES others, each destination
    serves ROUTES paths with one method each, and DNS asks for the callees' names and a few external ones."""
    step = max(1, span_s * 1_000_000_000 // max(rows, 1))
    ns, svc, paths = _array(NAMESPACES), _array(SERVICES), _array(PATHS)
    if call_graph:  # d: the callee of the caller h % 40; r: one of the callee's paths
        d = f"((h % 40) * 7 + 1 + (h2 % {CALLEES}) * 13) % 40"
        r = f"(d + intDiv(h2, {CALLEES}) % {ROUTES}) % 10"
        method = f"{_array(PATH_METHODS)}[1 + ({r})]"
        question = (
            f"if(h % 3 = 0, concat('ext', toString(h % 40 % 5), '.example.com'), "
            f"concat({svc}[1 + (d % 20)], '.', {ns}[1 + (d % 8)], '.svc.cluster.local'))"
        )
    else:
        d, r = "h2", "h2 % 10"
        method = "['GET', 'GET', 'GET', 'POST', 'PUT', 'DELETE'][1 + (h % 6)]"
        question = (
            "if(h % 3 = 0, concat('ext', toString(h % 500), '.example.com'), "
            "concat(dst_service, '.', dst_namespace, '.svc.cluster.local'))"
        )
    store.command(
        f"""
INSERT INTO {table} (id, ts, elapsed_time, protocol, node_name, src_ip, src_port, dst_ip, dst_port,
    src_pod, src_namespace, src_service, src_node, src_labels, dst_pod, dst_namespace, dst_service, dst_node,
    dst_labels, method, url, path, query_string, status_code, http_version, request_headers, response_headers,
    request_body_size, response_body_size, dns_questions, dns_question_types, dns_answers, dns_request,
    dns_response, grpc_method, grpc_status, has_response, flow_id, first_packet_ts, last_packet_ts)
SELECT
    hex(cityHash64(number, {seed})) AS id,
    fromUnixTimestamp64Nano(toInt64({int(start_ns)}) + toInt64(number) * {step}) AS ts,
    (h % 1000) * (h % 1000) * 3 AS elapsed_time,
    multiIf(number % 20 < 14, 'http', number % 20 < 18, 'dns', number % 20 = 18, 'grpc', 'redis') AS protocol,
    concat('node-', toString(h % 8)) AS node_name,
    toIPv6(toIPv4(167772160 + (h % 4096))) AS src_ip, 32768 + (h % 28000) AS src_port,
    toIPv6(toIPv4(167772160 + (h2 % 4096))) AS dst_ip,
    multiIf(protocol = 'dns', 53, protocol = 'grpc', 50051, protocol = 'redis', 6379, 8080) AS dst_port,
    concat(src_service, '-', toString(h % 50)) AS src_pod,
    {ns}[1 + (h % 8)] AS src_namespace, {svc}[1 + (h % 20)] AS src_service, node_name AS src_node,
    map('app', src_service, 'tier', if(h % 3 = 0, 'web', 'api')) AS src_labels,
    if(protocol = 'dns', concat('coredns-', toString(h2 % 4)),
       concat(dst_service, '-', toString(h2 % 50))) AS dst_pod,
    if(protocol = 'dns', 'kube-system', {ns}[1 + (d % 8)]) AS dst_namespace,
    if(protocol = 'dns', 'kube-dns', {svc}[1 + (d % 20)]) AS dst_service,
    concat('node-', toString(h2 % 8)) AS dst_node,
    map('app', dst_service, 'team', concat('team-', toString(h2 % 5))) AS dst_labels,
    multiIf(protocol = 'http', {method},
            protocol = 'grpc', 'POST', protocol = 'redis', 'GET', '') AS method,
    if(protocol = 'http', concat(path, if(h % 4 = 0, concat('?id=', toString(h % 1000)), '')), '') AS url,
    multiIf(protocol = 'http',
            concat({paths}[1 + ({r})], if(h % 5 = 0, concat('/', toString(h % 10000)), '')),
            protocol = 'grpc', '/shop.Checkout/CreateOrder', '') AS path,
    if(protocol = 'http' AND h % 4 = 0, concat('id=', toString(h % 1000)), '') AS query_string,
    multiIf(protocol = 'http', multiIf(h % 100 < 85, 200, h % 100 < 90, 201, h % 100 < 95, 404,
                                       h % 100 < 98, 500, 503),
            protocol = 'dns', multiIf(h % 100 < 95, 0, h % 100 < 98, 3, 2),
            protocol = 'grpc', if(h % 10 = 0, 14, 0), 0) AS status_code,
    if(protocol = 'http', 'HTTP/1.1', if(protocol = 'grpc', 'HTTP/2', '')) AS http_version,
    if(protocol = 'http', map('host', 'shop.example', 'user-agent', 'curl/8.0'), map()) AS request_headers,
    if(protocol = 'http', map('content-type', 'application/json'), map()) AS response_headers,
    if(method IN ('POST', 'PUT'), h % 2000, 0) AS request_body_size,
    if(protocol = 'http', (h2 % 100000), 0) AS response_body_size,
    if(protocol = 'dns', [{question}], []) AS dns_questions,
    if(protocol = 'dns', [if(h % 4 = 0, 'AAAA', 'A')], []) AS dns_question_types,
    if(protocol = 'dns' AND status_code = 0, ['10.0.0.1'], []) AS dns_answers,
    protocol = 'dns' AS dns_request, protocol = 'dns' AS dns_response,
    if(protocol = 'grpc', '/shop.Checkout/CreateOrder', '') AS grpc_method,
    if(protocol = 'grpc', status_code, 0) AS grpc_status,
    1 AS has_response, cityHash64(number, 7) AS flow_id, ts AS first_packet_ts, ts AS last_packet_ts
FROM (SELECT number, h, h2, {d} AS d FROM (
      SELECT number, cityHash64(number, {seed} + 1) AS h, cityHash64(number, {seed} + 2) AS h2
      FROM numbers({int(rows)})))
""",
        settings={"max_insert_threads": 2},
    )
