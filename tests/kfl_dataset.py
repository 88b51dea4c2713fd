"""A fixed, realistic `api_calls` dataset for the KFL tests: HTTP, DNS, gRPC, Redis, Kafka, PostgreSQL,
TLS and bare TCP/UDP rows with enriched ends, labels, headers and absent values, as Python dicts, plus
the Arrow insert that loads them (IPs as 16-byte v4-mapped, as the schema wants)."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pyarrow as pa

from netrecall.ingest.flows import insert_packets
from netrecall.timeutil import parse_time_ns

BASE_NS = parse_time_ns("2026-03-14T21:00:00Z")
NOW_NS = BASE_NS + 2 * 3600 * 1_000_000_000  # "now" for the tests: two hours after the first call

WORKLOADS = [  # (ip, pod, namespace, service, node, labels, owner)
    (
        "10.0.1.10",
        "frontend-7d9f-abc",
        "production",
        "frontend",
        "node-a",
        {"app": "frontend", "tier": "web"},
        "Deployment/frontend",
    ),
    (
        "10.0.1.11",
        "checkout-5c6d-x1",
        "production",
        "checkout",
        "node-a",
        {"app": "checkout", "tier": "api"},
        "Deployment/checkout",
    ),
    (
        "10.0.2.20",
        "payments-66f-q2",
        "production",
        "payment-service",
        "node-b",
        {"app": "payments", "team": "pay"},
        "Deployment/payments",
    ),
    ("10.0.2.21", "db-0", "production", "postgres", "node-b", {"app": "postgres"}, "StatefulSet/db"),
    (
        "10.0.3.30",
        "web-server-123",
        "staging",
        "web",
        "node-b",
        {"app": "web", "env": "staging"},
        "Deployment/web-server",
    ),
    (
        "10.0.3.31",
        "api-gateway-9",
        "staging",
        "api-gateway",
        "node-a",
        {"app": "gateway"},
        "Deployment/api-gateway",
    ),
    (
        "10.0.0.53",
        "coredns-abc",
        "kube-system",
        "kube-dns",
        "node-a",
        {"k8s-app": "kube-dns"},
        "Deployment/coredns",
    ),
    ("10.0.4.40", "redis-0", "default", "redis", "node-b", {"app": "redis"}, "StatefulSet/redis"),
    ("10.0.4.41", "kafka-0", "default", "kafka", "node-a", {"app": "kafka"}, "StatefulSet/kafka"),
    ("192.168.1.1", "", "", "", "", {}, ""),  # outside the cluster: nothing known
    ("2001:db8::42", "", "", "", "", {}, ""),  # an IPv6 peer outside the cluster
]
HTTP_PATHS = [
    "/api/v1/users",
    "/api/v1/users/42",
    "/api/v2/orders",
    "/health",
    "/metrics",
    "/login",
    "/api/v1/payments/charge",
    "/static/app.js",
    "/",
    "/api/v1/users_export",
]
STATUSES = [200, 200, 200, 201, 204, 301, 400, 401, 404, 404, 500, 502, 503]
DNS_NAMES = [
    "checkout.production.svc.cluster.local",
    "google.com",
    "api.stripe.com",
    "redis.default.svc.cluster.local",
    "nonexistent.example.",
    "kafka-0.kafka.default.svc.cluster.local",
]


def _end(index: int) -> dict[str, Any]:
    ip, pod, ns, svc, node, labels, owner = WORKLOADS[index]
    return {
        "ip": ip,
        "pod": pod,
        "namespace": ns,
        "service": svc,
        "node": node,
        "labels": labels,
        "workload": owner,
    }


def _base(number: int, rng: random.Random, protocol: str, src: int, dst: int) -> dict[str, Any]:
    s, d = _end(src), _end(dst)
    ts = BASE_NS + number * 37_000_000_000 + rng.randrange(1_000_000_000)
    row: dict[str, Any] = {
        "id": f"call-{number:04d}",
        "ts": ts,
        "elapsed_time": rng.choice([120, 850, 4_000, 25_000, 150_000, 1_200_000, 6_000_000]),
        "protocol": protocol,
        "node_name": rng.choice([s["node"] or "node-a", d["node"] or "node-b"]),
        "src_ip": s["ip"],
        "src_port": rng.randrange(32768, 60999),
        "dst_ip": d["ip"],
        "dst_port": 0,
        "method": "",
        "host": "",
        "url": "",
        "path": "",
        "query_string": "",
        "status_code": 0,
        "status_text": "",
        "http_version": "",
        "request_headers": {},
        "response_headers": {},
        "request_body_size": 0,
        "response_body_size": 0,
        "request_body": b"",
        "response_body": b"",
        "dns_id": 0,
        "dns_questions": [],
        "dns_question_types": [],
        "dns_answers": [],
        "dns_request": False,
        "dns_response": False,
        "grpc_method": "",
        "grpc_status": 0,
        "has_response": True,
        "partial": False,
        "error": "",
        "flow_id": rng.getrandbits(63),
        "first_packet_ts": ts - 1000,
        "last_packet_ts": ts + 2_000_000,
    }
    for side, end in (("src", s), ("dst", d)):
        for key in ("pod", "namespace", "service", "node", "labels", "workload"):
            row[f"{side}_{key}"] = end[key]
    return row


def build_rows(count: int = 240, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    protocols = ["http"] * 10 + ["dns"] * 4 + ["grpc", "redis", "kafka", "postgresql", "tls", "tcp", "udp"]
    for number in range(count):
        protocol = protocols[number % len(protocols)] if number % 7 else rng.choice(protocols)
        src, dst = rng.randrange(len(WORKLOADS)), rng.randrange(len(WORKLOADS))
        row = _base(number, rng, protocol, src, dst)
        if protocol == "http":
            path = rng.choice(HTTP_PATHS)
            query = rng.choice(["", "", "id=3", "id=42&sort=desc", "q=a%20b&page=2"])
            method = rng.choice(["GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH"])
            status = rng.choice(STATUSES)
            headers = {"host": "shop.example", "user-agent": rng.choice(["curl/8.0", "Go-http-client/1.1"])}
            if rng.random() < 0.4:
                headers["authorization"] = "Bearer x" + str(number)
            if method in ("POST", "PUT", "PATCH"):
                headers["content-type"] = rng.choice(["application/json", "text/plain"])
            size = rng.choice([0, 120, 4096, 20_000, 2_000_000])
            row.update(
                method=method,
                path=path,
                query_string=query,
                url=path + ("?" + query if query else ""),
                host="shop.example",
                status_code=status,
                status_text="OK" if status == 200 else "",
                http_version=rng.choice(["HTTP/1.1", "HTTP/1.1", "HTTP/2"]),
                request_headers=headers,
                response_headers={
                    "content-type": "application/json",
                    "server": rng.choice(["nginx", "envoy"]),
                },
                request_body_size=rng.choice([0, 0, 64, 1500]),
                response_body_size=size,
                dst_port=8080,
                request_body=b'{"user": 42}' if method != "GET" else b"",
                response_body=b'{"ok": true}' if size else b"",
            )
            if rng.random() < 0.08:
                row.update(has_response=False, status_code=0, response_headers={}, response_body_size=0)
        elif protocol == "dns":
            name = rng.choice(DNS_NAMES)
            rcode = 3 if name.startswith("nonexistent") else rng.choice([0, 0, 0, 0, 2])
            qtype = rng.choice(["A", "A", "AAAA", "SRV"])
            response = rng.random() < 0.8
            answers = ["10.0.1.11"] if response and rcode == 0 and qtype == "A" else []
            row.update(
                dns_id=rng.randrange(65536),
                dns_questions=[name],
                dns_question_types=[qtype],
                dns_answers=answers,
                dns_request=True,
                dns_response=response,
                status_code=rcode if response else 0,
                has_response=response,
                dst_port=53,
                dst_ip="10.0.0.53",
                dst_pod="coredns-abc",
                dst_namespace="kube-system",
                dst_service="kube-dns",
                dst_node="node-a",
                dst_labels={"k8s-app": "kube-dns"},
                dst_workload="Deployment/coredns",
                status_text={0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}[rcode] if response else "",
            )
        elif protocol == "grpc":
            status = rng.choice([0, 0, 0, 5, 14])
            method = rng.choice(["/shop.Checkout/CreateOrder", "/helloworld.Greeter/SayHello"])
            row.update(
                grpc_method=method,
                grpc_status=status,
                status_code=status,
                path=method,
                method="POST",
                http_version="HTTP/2",
                dst_port=50051,
                request_headers={"content-type": "application/grpc", "te": "trailers"},
            )
        elif protocol == "redis":
            row.update(
                method=rng.choice(["GET", "SET", "HGET"]), path="session:" + str(number), dst_port=6379
            )
        elif protocol == "kafka":
            row.update(method=rng.choice(["PRODUCE", "FETCH"]), path="orders-topic", dst_port=9092)
        elif protocol == "postgresql":
            row.update(
                method="SELECT",
                path="SELECT * FROM users",
                dst_port=5432,
                error=rng.choice(["", "", "23505 duplicate key"]),
            )
        elif protocol == "tls":
            row.update(dst_port=443, host="api.stripe.com")
        elif protocol == "tcp":
            row.update(
                dst_port=rng.choice([22, 3306, 9000]), partial=rng.random() < 0.5, error="unrecognised stream"
            )
        elif protocol == "udp":
            row.update(dst_port=rng.choice([123, 514]), has_response=False)
        rows.append(row)
    return rows


def _ip16(text: str) -> bytes:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}").packed
    return address.packed


_MAP = pa.map_(pa.string(), pa.string())
ARROW_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "ts": pa.timestamp("ns", tz="UTC"),
    "elapsed_time": pa.uint64(),
    "protocol": pa.string(),
    "node_name": pa.string(),
    "src_ip": pa.binary(16),
    "src_port": pa.uint16(),
    "dst_ip": pa.binary(16),
    "dst_port": pa.uint16(),
    "method": pa.string(),
    "host": pa.string(),
    "url": pa.string(),
    "path": pa.string(),
    "query_string": pa.string(),
    "status_code": pa.int32(),
    "status_text": pa.string(),
    "http_version": pa.string(),
    "request_headers": _MAP,
    "response_headers": _MAP,
    "request_body_size": pa.uint64(),
    "response_body_size": pa.uint64(),
    "request_body": pa.binary(),
    "response_body": pa.binary(),
    "dns_id": pa.uint16(),
    "dns_questions": pa.list_(pa.string()),
    "dns_question_types": pa.list_(pa.string()),
    "dns_answers": pa.list_(pa.string()),
    "dns_request": pa.bool_(),
    "dns_response": pa.bool_(),
    "grpc_method": pa.string(),
    "grpc_status": pa.int32(),
    "has_response": pa.bool_(),
    "partial": pa.bool_(),
    "error": pa.string(),
    "flow_id": pa.uint64(),
    "first_packet_ts": pa.timestamp("ns", tz="UTC"),
    "last_packet_ts": pa.timestamp("ns", tz="UTC"),
}
for _side in ("src", "dst"):
    for _key in ("pod", "namespace", "service", "node", "workload"):
        ARROW_TYPES[f"{_side}_{_key}"] = pa.string()
    ARROW_TYPES[f"{_side}_labels"] = _MAP


def to_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    columns = {}
    for name, kind in ARROW_TYPES.items():
        values = [row[name] for row in rows]
        if name in ("src_ip", "dst_ip"):
            values = [_ip16(v) for v in values]
        elif pa.types.is_map(kind):
            values = [list(v.items()) for v in values]
        columns[name] = pa.array(values, type=kind)
    return pa.table(columns)


def load(store, rows: list[dict[str, Any]], table: str = "api_calls") -> None:
    if table == "packets":
        insert_packets(store, to_arrow(rows))  # and their flows, as every writer does
    else:
        store.insert_arrow(table, to_arrow(rows))
