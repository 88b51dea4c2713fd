"""Shared data for the hub and MCP tests: a small incident written straight into api_calls and flows.

frontend calls checkout, which answers 500 because its lookup of payments.shop.svc.cluster.local fails
with NXDOMAIN; healthy traffic around it. The dissector is tested elsewhere on real captures; here the
thing under test is the hub/MCP layer, so rows are inserted as the dissector would write them.
"""

from __future__ import annotations

import ipaddress
import time

import pyarrow as pa

from netrecall.store import Store

BASE_NS = 1_773_525_600_000_000_000  # 2026-03-14T22:00:00Z
SECRET = "s3cr3t-bearer-value"


def _call(i: int, **kw: object) -> dict:
    row = {
        "id": f"call{i:04d}",
        "ts": BASE_NS + i * 10_000_000,
        "protocol": "http",
        "node_name": "node-a",
        "src_ip": "::ffff:10.1.0.10",
        "src_port": 40000 + i,
        "dst_ip": "::ffff:10.1.0.20",
        "dst_port": 8080,
        "src_pod": "frontend-7d9f",
        "src_namespace": "shop",
        "src_workload": "Deployment/frontend",
        "dst_pod": "checkout-5c4b",
        "dst_namespace": "shop",
        "dst_service": "checkout",
        "dst_workload": "Deployment/checkout",
        "method": "GET",
        "host": "checkout",
        "url": "/cart",
        "path": "/cart",
        "query_string": "",
        "status_code": 200,
        "status_text": "OK",
        "elapsed_time": 1500,
        "request_headers": {"Accept": "*/*"},
        "response_headers": {"Content-Type": "application/json"},
        "request_body": "",
        "request_body_size": 0,
        "dns_questions": [],
        "dns_question_types": [],
        "dns_answers": [],
        "dns_request": False,
        "dns_response": False,
        "has_response": True,
        "flow_id": i,
    }
    row.update(kw)
    return row


def incident_rows(healthy: int = 40) -> list[dict]:
    rows = [_call(i) for i in range(healthy)]
    n = healthy
    for k in range(5):  # the failing checkout: each 500 follows a failed lookup by checkout
        rows.append(
            _call(
                n,
                id=f"dns{k:04d}",
                protocol="dns",
                src_ip="::ffff:10.1.0.20",
                src_port=5300 + k,
                dst_ip="::ffff:10.96.0.10",
                dst_port=53,
                src_pod="checkout-5c4b",
                src_workload="Deployment/checkout",
                dst_pod="coredns-1",
                dst_namespace="kube-system",
                dst_service="kube-dns",
                dst_workload="Deployment/coredns",
                method="",
                host="",
                url="",
                path="",
                status_code=3,
                status_text="NXDOMAIN",
                elapsed_time=400,
                dns_questions=["payments.shop.svc.cluster.local"],
                dns_question_types=["A"],
                dns_request=True,
                dns_response=True,
            )
        )
        rows.append(
            _call(
                n + 1,
                id=f"fail{k:04d}",
                method="POST",
                url="/checkout?token=abc123&cart=7",
                path="/checkout",
                query_string="token=abc123&cart=7",
                status_code=500,
                status_text="Internal Server Error",
                elapsed_time=25_000,
                request_headers={"Authorization": f"Bearer {SECRET}", "Cookie": "sid=42", "Accept": "*/*"},
                request_body='{"user":"ann","password":"hunter2","items":[1,2]}',
                request_body_size=48,
            )
        )
        n += 2
    rows.append(
        _call(
            n,
            id="ok-dns",
            protocol="dns",
            src_ip="::ffff:10.1.0.10",
            dst_ip="::ffff:10.96.0.10",
            dst_port=53,
            dst_pod="coredns-1",
            dst_namespace="kube-system",
            dst_service="kube-dns",
            method="",
            url="",
            path="",
            status_code=0,
            status_text="NOERROR",
            dns_questions=["checkout.shop.svc.cluster.local"],
            dns_question_types=["A"],
            dns_answers=["10.96.0.20"],
            dns_request=True,
            dns_response=True,
        )
    )
    rows.append(
        _call(n + 1, id="notfound", path="/missing", url="/missing", status_code=404, status_text="Not Found")
    )
    rows.append(  # a lookup that never got an answer
        _call(
            n + 2,
            id="lost-dns",
            protocol="dns",
            src_ip="::ffff:10.1.0.10",
            dst_ip="::ffff:10.96.0.10",
            dst_port=53,
            dst_pod="coredns-1",
            dst_namespace="kube-system",
            dst_service="kube-dns",
            method="",
            url="",
            path="",
            status_code=0,
            status_text="",
            dns_questions=["cart.shop.svc.cluster.local"],
            dns_question_types=["AAAA"],
            dns_request=True,
            dns_response=False,
            has_response=False,
        )
    )
    return rows


def load_incident(store: Store, healthy: int = 40) -> list[dict]:
    """Insert the incident as one Arrow batch (the store's own insert path)."""
    rows = incident_rows(healthy)
    store.insert_arrow("api_calls", calls_table(rows))
    return rows


def calls_table(rows: list[dict]) -> pa.Table:
    def col(name: str) -> list:
        return [r[name] for r in rows]

    string_map = pa.map_(pa.string(), pa.string())
    arrays = {name: col(name) for name in rows[0]}
    arrays["ts"] = pa.array(col("ts"), pa.timestamp("ns"))
    for side in ("src_ip", "dst_ip"):
        arrays[side] = pa.array([ipaddress.IPv6Address(v).packed for v in col(side)], pa.binary(16))
    for name in ("request_headers", "response_headers"):
        arrays[name] = pa.array([list(v.items()) for v in col(name)], string_map)
    return pa.table(arrays)


def wait_for(predicate, timeout: float = 30.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")
