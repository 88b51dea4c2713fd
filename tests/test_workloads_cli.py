"""`netrecall workloads` over the history the identity resolver writes: open identities by default, the
ones valid at --at (an IP handed from one pod to another answers per instant), --namespace."""

from __future__ import annotations

import json

from test_identity import inventory, pod, service, ts

from netrecall.cli import main
from netrecall.ingest.identity import IdentityResolver


def workloads(capsys, store_url: str, *args: str) -> list[dict]:
    assert main(["workloads", "--store", store_url, "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)["workloads"]


def names(rows: list[dict]) -> set[tuple[str, str, str]]:
    return {(r["kind"], r["namespace"], r["name"]) for r in rows}


def test_workloads_at_a_time_and_now(store, store_url, tmp_path, capsys):
    path = inventory(
        tmp_path,
        [
            service("checkout", "10.96.0.20", {"app": "checkout"}),
            pod("checkout-7d9c8b6f5-aaaaa", "10.244.1.7", start=0, end=10),
            pod("payment-7d9c8b6f5-bbbbb", "10.244.1.7", ns="payment", start=12),
        ],
    )
    store.insert_arrow("workloads", IdentityResolver.from_inventory(path).workload_rows())

    now = workloads(capsys, store_url)
    assert names(now) == {
        ("service", "shop", "checkout"),
        ("pod", "payment", "payment-7d9c8b6f5-bbbbb"),
        ("node", "", "node-1"),
    }
    payment = next(r for r in now if r["kind"] == "pod")
    assert (payment["ip"], payment["owner"], payment["node"]) == (
        "10.244.1.7",
        "Deployment/payment",
        "node-1",
    )

    before = workloads(capsys, store_url, "--at", ts(5))
    assert ("pod", "shop", "checkout-7d9c8b6f5-aaaaa") in names(before)
    assert ("pod", "payment", "payment-7d9c8b6f5-bbbbb") not in names(before)
    checkout = next(r for r in before if r["kind"] == "pod")
    assert checkout["services"] == ["checkout"] and checkout["labels"]["app"] == "checkout"

    assert names(workloads(capsys, store_url, "--at", ts(11), "--namespace", "shop")) == {
        ("service", "shop", "checkout")
    }
    assert names(workloads(capsys, store_url, "--namespace", "payment")) == {
        ("pod", "payment", "payment-7d9c8b6f5-bbbbb")
    }
