"""The time-valid IP -> identity resolver: inventory parsing, IP hand-over, services, hostNetwork, nodes,
the watch mutations, vectorised enrich() against per-row lookup(), and the workloads rows in chDB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netrecall.errors import NetrecallError
from netrecall.ingest.identity import OPEN_NS, IdentityResolver, ip_bytes, owner_of
from netrecall.timeutil import format_time_ns, parse_time_ns

T0 = parse_time_ns("2026-03-14T22:00:00Z")
S = 1_000_000_000


def ts(offset_s: float) -> str:
    return format_time_ns(T0 + int(offset_s * S))


def pod(
    name,
    ip,
    *,
    ns="shop",
    start=0.0,
    end=None,
    labels=None,
    node="node-1",
    host_ip="192.168.1.11",
    host_network=False,
    owner=("ReplicaSet", None),
    phase="Running",
):
    labels = dict(labels or {"app": name.split("-")[0]})
    meta = {"name": name, "namespace": ns, "labels": labels, "creationTimestamp": ts(start - 1)}
    kind, owner_name = owner
    if kind:
        if kind == "ReplicaSet" and owner_name is None:
            labels["pod-template-hash"] = "7d9c8b6f5"
            owner_name = f"{name.split('-')[0]}-7d9c8b6f5"
        meta["ownerReferences"] = [{"kind": kind, "name": owner_name, "controller": True}]
    if end is not None:
        meta["deletionTimestamp"] = ts(end)
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "hostNetwork": host_network},
        "status": {
            "phase": phase,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": host_ip,
            "startTime": ts(start),
        },
    }


def service(name, cluster_ip, selector, ns="shop", start=-100.0):
    return {
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "creationTimestamp": ts(start),
            "labels": {"tier": "web"},
        },
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": selector},
    }


def inventory(tmp_path: Path, items: list[dict]) -> Path:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def at(offset_s: float) -> int:
    return T0 + int(offset_s * S)


def test_ip_reuse_across_two_pods_resolves_per_timestamp(tmp_path):
    path = inventory(
        tmp_path,
        [
            pod("checkout-7d9c8b6f5-aaaaa", "10.244.1.7", start=0, end=10),
            pod("payment-7d9c8b6f5-bbbbb", "10.244.1.7", ns="payment", start=12),
        ],
    )
    resolver = IdentityResolver.from_inventory(path)
    assert resolver.lookup("10.244.1.7", at(-1)) is None  # before anyone held it
    first = resolver.lookup("10.244.1.7", at(5))
    assert (first.name, first.namespace, first.owner) == (
        "checkout-7d9c8b6f5-aaaaa",
        "shop",
        "Deployment/checkout",
    )
    assert (
        resolver.lookup("10.244.1.7", at(10)) is None
    )  # [valid_from, valid_to): freed at 10 s, reused at 12 s
    assert resolver.lookup("10.244.1.7", at(13)).name == "payment-7d9c8b6f5-bbbbb"
    assert resolver.lookup("10.244.1.7", at(10_000)).name == "payment-7d9c8b6f5-bbbbb"  # still open


def test_handover_without_a_delete_closes_the_old_holder(tmp_path):
    # A dump can still list the old pod (Terminating, no end known): the newer holder takes the IP.
    resolver = IdentityResolver.from_inventory(
        inventory(
            tmp_path,
            [pod("a-7d9c8b6f5-aaaaa", "10.0.0.5", start=0), pod("b-7d9c8b6f5-bbbbb", "10.0.0.5", start=20)],
        )
    )
    assert resolver.lookup("10.0.0.5", at(19)).name == "a-7d9c8b6f5-aaaaa"
    assert resolver.lookup("10.0.0.5", at(20)).name == "b-7d9c8b6f5-bbbbb"
    history = {r.name: (r.valid_from, r.valid_to) for r in resolver.records if r.kind == "pod"}
    assert history["a-7d9c8b6f5-aaaaa"] == (at(0), at(20))
    assert history["b-7d9c8b6f5-bbbbb"] == (at(20), OPEN_NS)


def test_service_cluster_ip_and_selected_pods(tmp_path):
    resolver = IdentityResolver.from_inventory(
        inventory(
            tmp_path,
            [
                service("checkout", "10.96.0.20", {"app": "checkout"}),
                service("everything", "10.96.0.21", {"tier": "x"}),  # selects nothing here
                pod("checkout-7d9c8b6f5-aaaaa", "10.244.1.7"),
                pod("frontend-7d9c8b6f5-ccccc", "10.244.1.8"),
            ],
        )
    )
    svc = resolver.lookup("10.96.0.20", at(1))
    assert (svc.kind, svc.name, svc.namespace, svc.pod, svc.service) == (
        "service",
        "checkout",
        "shop",
        "",
        "checkout",
    )
    assert resolver.lookup("10.244.1.7", at(1)).service == "checkout"
    assert resolver.lookup("10.244.1.8", at(1)).service == ""  # no service selects frontend
    assert resolver.lookup("10.96.0.20", at(-200)) is None  # before the service was created


def test_host_network_pod_never_shadows_node_or_pods(tmp_path):
    resolver = IdentityResolver.from_inventory(
        inventory(
            tmp_path,
            [
                {
                    "kind": "Node",
                    "metadata": {"name": "node-1", "labels": {"zone": "a"}, "creationTimestamp": ts(-1000)},
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": "192.168.1.11"},
                            {"type": "Hostname", "address": "node-1"},
                        ]
                    },
                },
                pod(
                    "kube-proxy-x7k2p",
                    "192.168.1.11",
                    ns="kube-system",
                    host_network=True,
                    start=5,
                    owner=("DaemonSet", "kube-proxy"),
                ),
                pod("frontend-7d9c8b6f5-ccccc", "10.244.1.8", start=0),
            ],
        )
    )
    found = resolver.lookup("192.168.1.11", at(10))
    assert (found.kind, found.name, found.node_name, found.pod) == ("node", "node-1", "node-1", "")
    host = [r for r in resolver.records if r.host_network]
    assert [(r.name, r.ip, r.owner) for r in host] == [
        ("kube-proxy-x7k2p", "192.168.1.11", "DaemonSet/kube-proxy")
    ]
    assert resolver.lookup("10.244.1.8", at(10)).name == "frontend-7d9c8b6f5-ccccc"
    rows = resolver.workload_rows().to_pylist()
    assert any(r["name"] == "kube-proxy-x7k2p" and r["host_network"] for r in rows)


def test_node_learnt_from_pods_host_ip_without_node_objects(tmp_path):
    resolver = IdentityResolver.from_inventory(
        inventory(tmp_path, [pod("frontend-7d9c8b6f5-ccccc", "10.244.1.8")])
    )
    node = resolver.lookup("192.168.1.11", at(-5000))  # node addresses are valid since ever
    assert (node.kind, node.name) == ("node", "node-1")
    assert resolver.lookup("10.244.1.8", at(1)).node_name == "node-1"


def test_unknown_ips_resolve_to_nothing(tmp_path):
    resolver = IdentityResolver.from_inventory(
        inventory(tmp_path, [pod("frontend-7d9c8b6f5-ccccc", "10.244.1.8")])
    )
    assert resolver.lookup("10.244.1.9", at(1)) is None
    assert resolver.lookup("2001:db8::1", at(1)) is None
    table = pa.table(
        {
            "ts": pa.array([at(1)], type=pa.timestamp("ns")),
            "src_ip": pa.array([ip_bytes("8.8.8.8")], type=pa.binary(16)),
            "dst_ip": pa.array([bytes(16)], type=pa.binary(16)),
        }
    )
    row = resolver.enrich(table).to_pylist()[0]
    assert row["src_pod"] == row["dst_pod"] == row["src_namespace"] == row["dst_node"] == ""
    assert row["src_labels"] == row["dst_labels"] == []


def test_owner_resolution():
    assert owner_of(pod("checkout-7d9c8b6f5-aaaaa", "10.0.0.1")) == "Deployment/checkout"
    replica_sets = {("shop", "checkout-7d9c8b6f5"): "Deployment/checkout-v2"}
    assert owner_of(pod("checkout-7d9c8b6f5-aaaaa", "10.0.0.1"), replica_sets) == "Deployment/checkout-v2"
    assert owner_of(pod("db-0", "10.0.0.1", owner=("StatefulSet", "db"))) == "StatefulSet/db"
    assert (
        owner_of(pod("report-28734520-x", "10.0.0.1", owner=("Job", "report-28734520"))) == "CronJob/report"
    )
    assert owner_of(pod("bare", "10.0.0.1", owner=(None, None))) == ""


def test_replica_set_in_dump_is_followed(tmp_path):
    rs = {
        "kind": "ReplicaSet",
        "metadata": {
            "name": "checkout-7d9c8b6f5",
            "namespace": "shop",
            "ownerReferences": [{"kind": "Deployment", "name": "checkout-main", "controller": True}],
        },
    }
    resolver = IdentityResolver.from_inventory(
        inventory(tmp_path, [pod("checkout-7d9c8b6f5-aaaaa", "10.0.0.1"), rs])
    )
    assert resolver.lookup("10.0.0.1", at(1)).owner == "Deployment/checkout-main"


def test_completed_pod_releases_its_ip_at_finish(tmp_path):
    done = pod("job-1-abcde", "10.0.0.9", start=0, phase="Succeeded", owner=("Job", "job-1"))
    done["status"]["containerStatuses"] = [{"state": {"terminated": {"finishedAt": ts(30)}}}]
    resolver = IdentityResolver.from_inventory(inventory(tmp_path, [done]))
    assert resolver.lookup("10.0.0.9", at(29)).name == "job-1-abcde"
    assert resolver.lookup("10.0.0.9", at(30)) is None


def test_endpoint_slices_add_service_membership(tmp_path):
    eps = {
        "kind": "EndpointSlice",
        "metadata": {
            "name": "legacy-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "legacy"},
        },
        "endpoints": [
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "api-7d9c8b6f5-aaaaa"}}
        ],
    }
    svc = service("legacy", "10.96.0.30", {})  # no selector: membership only through the slice
    resolver = IdentityResolver.from_inventory(
        inventory(tmp_path, [svc, eps, pod("api-7d9c8b6f5-aaaaa", "10.0.0.1")])
    )
    assert resolver.lookup("10.0.0.1", at(1)).services == ("legacy",)


def test_watch_mutations_open_and_close_intervals():
    resolver = IdentityResolver(source="test")
    a = pod("a-7d9c8b6f5-aaaaa", "10.0.0.5")
    resolver.upsert_pod(a, at(0))
    relabelled = json.loads(json.dumps(a))
    relabelled["metadata"]["labels"]["version"] = "v2"
    resolver.upsert_pod(relabelled, at(5))
    resolver.upsert_pod(relabelled, at(6))  # no change: no new record
    resolver.upsert_service(service("a", "10.96.0.5", {"app": "a"}), at(7))
    resolver.delete_pod(("shop", "a-7d9c8b6f5-aaaaa"), at(10))
    resolver.upsert_pod(pod("b-7d9c8b6f5-bbbbb", "10.0.0.5"), at(11))
    resolver.delete_service(("shop", "a"), at(12))
    assert "version" not in resolver.lookup("10.0.0.5", at(4)).labels
    assert resolver.lookup("10.0.0.5", at(5)).labels["version"] == "v2"
    assert resolver.lookup("10.0.0.5", at(6.5)).service == ""
    assert resolver.lookup("10.0.0.5", at(7)).service == "a"
    assert resolver.lookup("10.0.0.5", at(10.5)) is None
    assert resolver.lookup("10.0.0.5", at(11)).name == "b-7d9c8b6f5-bbbbb"
    assert resolver.lookup("10.96.0.5", at(11)).name == "a"
    assert resolver.lookup("10.96.0.5", at(12)) is None
    pods = [(r.name, r.valid_from, r.valid_to) for r in resolver.records if r.kind == "pod"]
    assert pods == [
        ("a-7d9c8b6f5-aaaaa", at(0), at(5)),
        ("a-7d9c8b6f5-aaaaa", at(5), at(7)),
        ("a-7d9c8b6f5-aaaaa", at(7), at(10)),
        ("b-7d9c8b6f5-bbbbb", at(11), OPEN_NS),
    ]
    changed = resolver.drain_changes()
    assert changed.num_rows == len(resolver.workload_rows())
    assert resolver.drain_changes().num_rows == 0
    resolver.delete_pod(("shop", "b-7d9c8b6f5-bbbbb"), at(20))
    assert resolver.drain_changes().to_pylist()[0]["name"] == "b-7d9c8b6f5-bbbbb"


def test_watched_service_and_slice_changes_reopen_only_the_pods_concerned():
    resolver = IdentityResolver()
    resolver.upsert_pod(pod("a-7d9c8b6f5-aaaaa", "10.0.0.1", labels={"app": "a"}), at(0))
    resolver.upsert_pod(pod("b-7d9c8b6f5-bbbbb", "10.0.0.2", labels={"app": "b"}), at(0))
    resolver.upsert_service(service("svc", "10.96.0.9", {"app": "a"}), at(5))
    resolver.upsert_service(service("svc", "10.96.0.9", {"app": "b"}), at(10))
    slice_ = {
        "kind": "EndpointSlice",
        "metadata": {
            "name": "legacy-x1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "legacy"},
        },
        "endpoints": [{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a-7d9c8b6f5-aaaaa"}}],
    }
    resolver.upsert_endpoint_slice(slice_, at(15))
    resolver.delete_endpoint_slice(slice_, at(20))
    a_services = [(r.valid_from, r.services) for r in resolver.records if r.name == "a-7d9c8b6f5-aaaaa"]
    assert a_services == [(at(0), ()), (at(5), ("svc",)), (at(10), ()), (at(15), ("legacy",)), (at(20), ())]
    b_services = [(r.valid_from, r.services) for r in resolver.records if r.name == "b-7d9c8b6f5-bbbbb"]
    assert b_services == [(at(0), ()), (at(10), ("svc",))]
    assert resolver.lookup("10.0.0.1", at(16)).service == "legacy"
    assert resolver.lookup("10.0.0.2", at(9)).service == ""


def test_drained_old_closed_records_are_pruned():
    resolver = IdentityResolver()
    resolver.upsert_pod(pod("a-7d9c8b6f5-aaaaa", "10.0.0.5"), at(0))
    resolver.delete_pod(("shop", "a-7d9c8b6f5-aaaaa"), at(10))
    resolver.upsert_pod(pod("b-7d9c8b6f5-bbbbb", "10.0.0.6"), at(2000))
    # The closed record is written out by this drain, and dropped after it (closed > 10 min before 2000 s).
    assert {r["name"] for r in resolver.drain_changes().to_pylist()} >= {"a-7d9c8b6f5-aaaaa"}
    assert [r.name for r in resolver.records if r.kind == "pod"] == ["b-7d9c8b6f5-bbbbb"]
    assert resolver.lookup("10.0.0.5", at(5)) is None
    assert resolver.lookup("10.0.0.6", at(2001)).name == "b-7d9c8b6f5-bbbbb"
    kept = IdentityResolver()
    kept.upsert_pod(pod("a-7d9c8b6f5-aaaaa", "10.0.0.5"), at(0))
    kept.delete_pod(("shop", "a-7d9c8b6f5-aaaaa"), at(10))
    kept.upsert_pod(pod("b-7d9c8b6f5-bbbbb", "10.0.0.6"), at(2000))
    kept.drain_changes(keep_closed_ns=None)
    assert kept.lookup("10.0.0.5", at(5)).name == "a-7d9c8b6f5-aaaaa"


def test_initial_list_in_any_order_keeps_the_later_holder():
    # A watch's first list upserts each pod at its own start time, in whatever order the API returns them.
    old = pod("a-7d9c8b6f5-aaaaa", "10.0.0.5", start=0)
    new = pod("b-7d9c8b6f5-bbbbb", "10.0.0.5", start=20)
    for order in ([old, new], [new, old]):
        resolver = IdentityResolver()
        for obj in order:
            resolver.upsert_pod(obj, None)
        assert resolver.lookup("10.0.0.5", at(10)).name == "a-7d9c8b6f5-aaaaa"
        assert resolver.lookup("10.0.0.5", at(20)).name == "b-7d9c8b6f5-bbbbb"
        assert resolver.lookup("10.0.0.5", at(1000)).name == "b-7d9c8b6f5-bbbbb"


def test_official_client_objects_are_accepted():
    from kubernetes import client

    obj = client.V1Pod(
        metadata=client.V1ObjectMeta(name="web-7d9c8b6f5-aaaaa", namespace="shop", labels={"app": "web"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c")], node_name="node-1"),
        status=client.V1PodStatus(pod_ip="10.0.0.42", host_ip="192.168.1.11", phase="Running"),
    )
    resolver = IdentityResolver()
    resolver.upsert_pod(obj, at(0))
    found = resolver.lookup("10.0.0.42", at(1))
    assert (found.name, found.namespace, found.node, found.labels) == (
        "web-7d9c8b6f5-aaaaa",
        "shop",
        "node-1",
        {"app": "web"},
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty file"), ("{not json", "not JSON at line 1"), ("42", "expected a Kubernetes List")],
)
def test_bad_inventory_is_one_line_error(tmp_path, content, message):
    path = tmp_path / "inv.json"
    path.write_text(content)
    with pytest.raises(NetrecallError, match=message):
        IdentityResolver.from_inventory(path)
    with pytest.raises(NetrecallError, match="No such file"):
        IdentityResolver.from_inventory(tmp_path / "missing.json")


def test_binary_inventory_is_one_line_error(tmp_path):
    path = tmp_path / "inv.json"
    path.write_bytes(b'{"kind": "List", "items": []}\x82\xff')
    with pytest.raises(NetrecallError, match="not UTF-8 text at byte 29"):
        IdentityResolver.from_inventory(path)


def _random_resolver(data) -> tuple[IdentityResolver, list[str]]:
    ips = [f"10.0.0.{i}" for i in range(1, 6)] + ["10.96.0.1", "192.168.1.11"]
    resolver = IdentityResolver(source="prop")
    resolver.upsert_service(service("s", "10.96.0.1", {"app": "a"}), at(0))
    events = data.draw(
        st.lists(
            st.tuples(
                st.integers(0, 4), st.sampled_from([*ips[:5], "192.168.1.11"]), st.booleans(), st.booleans()
            ),
            min_size=1,
            max_size=25,
        )
    )
    for step, (pod_no, ip, delete, host_network) in enumerate(events):
        name = f"p{pod_no}-7d9c8b6f5-abcde"
        if delete:
            resolver.delete_pod(("shop", name), at(step))
        else:
            app = "a" if pod_no % 2 else "b"
            resolver.upsert_pod(pod(name, ip, host_network=host_network, labels={"app": app}), at(step))
    return resolver, [*ips, "8.8.8.8"]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_enrich_equals_lookup_for_every_row(data):
    resolver, ips = _random_resolver(data)
    rows = data.draw(
        st.lists(
            st.tuples(st.sampled_from(ips), st.sampled_from(ips), st.integers(-2, 30)),
            min_size=1,
            max_size=60,
        )
    )
    table = pa.table(
        {
            "ts": pa.array([at(t) + 1 for _, _, t in rows], type=pa.timestamp("ns")),
            "src_ip": pa.array([ip_bytes(s) for s, _, _ in rows], type=pa.binary(16)),
            "dst_ip": pa.array([ip_bytes(d) for _, d, _ in rows], type=pa.binary(16)),
        }
    )
    enriched = resolver.enrich(table).to_pylist()
    for (src, dst, t), row in zip(rows, enriched, strict=True):
        for side, ip in (("src", src), ("dst", dst)):
            found = resolver.lookup(ip, at(t) + 1)
            expected = (
                found.endpoint()
                if found
                else {"pod": "", "namespace": "", "service": "", "workload": "", "node": "", "labels": {}}
            )
            got = {k: row[f"{side}_{k}"] for k in expected}
            got["labels"] = dict(got["labels"])
            assert got == expected


def test_enrich_chunked_table_and_existing_columns():
    resolver = IdentityResolver()
    resolver.upsert_pod(pod("a-7d9c8b6f5-aaaaa", "10.0.0.5"), at(0))
    batch = pa.table(
        {
            "ts": pa.array([at(1), at(2)], type=pa.timestamp("ns")),
            "src_ip": pa.array([ip_bytes("10.0.0.5"), ip_bytes("10.0.0.6")], type=pa.binary(16)),
            "dst_ip": pa.array([ip_bytes("10.0.0.6"), ip_bytes("10.0.0.5")], type=pa.binary(16)),
            "src_pod": pa.array(["x", "y"]),
        }
    )
    table = pa.concat_tables([batch, batch])
    out = resolver.enrich(table)
    assert out.column("src_pod").to_pylist() == ["a-7d9c8b6f5-aaaaa", "", "a-7d9c8b6f5-aaaaa", ""]
    assert out.column("dst_pod").to_pylist() == ["", "a-7d9c8b6f5-aaaaa", "", "a-7d9c8b6f5-aaaaa"]
    assert out.column_names.count("src_pod") == 1


def test_ipv6_pods():
    resolver = IdentityResolver()
    dual = pod("a-7d9c8b6f5-aaaaa", "10.0.0.5")
    dual["status"]["podIPs"] = [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]
    resolver.upsert_pod(dual, at(0))
    assert resolver.lookup("fd00::5", at(1)).name == "a-7d9c8b6f5-aaaaa"
    assert resolver.lookup("10.0.0.5", at(1)).name == "a-7d9c8b6f5-aaaaa"


def test_workload_rows_insert_on_both_backends_and_replace_on_reload(any_store, tmp_path):
    path = inventory(
        tmp_path,
        [
            service("checkout", "10.96.0.20", {"app": "checkout"}),
            pod("checkout-7d9c8b6f5-aaaaa", "10.244.1.7"),
        ],
    )
    for _ in range(2):  # loading the same dump twice keeps one row per identity interval
        any_store.insert_arrow("workloads", IdentityResolver.from_inventory(path).workload_rows())
    rows = any_store.dicts(
        "SELECT IPv6NumToString(ip) AS ip, kind, name, namespace, node, services, labels, owner, "
        "host_network, toUnixTimestamp64Nano(valid_from) AS vf, valid_to"
        " FROM workloads FINAL ORDER BY kind, name"
    )
    assert [(r["ip"], r["kind"], r["name"]) for r in rows] == [
        ("::ffff:10.244.1.7", "pod", "checkout-7d9c8b6f5-aaaaa"),
        ("::ffff:10.96.0.20", "service", "checkout"),
        ("::ffff:192.168.1.11", "node", "node-1"),
    ]
    assert rows[0]["services"] == ["checkout"] and rows[0]["owner"] == "Deployment/checkout"
    assert rows[0]["labels"]["app"] == "checkout" and rows[0]["vf"] == at(0)
    assert rows[0]["valid_to"].year == 2262


def test_enriched_tables_insert_into_packets_on_both_backends(any_store):
    # Two chunks enriched before and after a change: their dictionaries differ, and one insert takes both.
    resolver = IdentityResolver()
    resolver.upsert_pod(pod("a-7d9c8b6f5-aaaaa", "10.0.0.5"), at(0))
    n = 1000

    def chunk(offset_s: float) -> pa.Table:
        return pa.table(
            {
                "ts": pa.array(np.arange(n) + at(offset_s), type=pa.timestamp("ns", tz="UTC")),
                "src_ip": pa.array([ip_bytes("10.0.0.5")] * n, type=pa.binary(16)),
                "dst_ip": pa.array([ip_bytes("10.0.0.6")] * n, type=pa.binary(16)),
                "ip_version": pa.array(np.full(n, 4, dtype=np.uint8)),
            }
        )

    first = resolver.enrich(chunk(1))
    resolver.upsert_pod(pod("b-7d9c8b6f5-bbbbb", "10.0.0.6", ns="web"), at(2))
    any_store.insert_arrow("packets", pa.concat_tables([first, resolver.enrich(chunk(3))]))
    assert any_store.rows(
        "SELECT src_pod, src_workload, src_labels['app'], dst_pod, dst_namespace, count() FROM packets "
        "GROUP BY ALL ORDER BY dst_pod"
    ) == [
        ("a-7d9c8b6f5-aaaaa", "Deployment/a", "a", "", "", n),
        ("a-7d9c8b6f5-aaaaa", "Deployment/a", "a", "b-7d9c8b6f5-bbbbb", "web", n),
    ]
