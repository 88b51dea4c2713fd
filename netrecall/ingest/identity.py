"""The time-valid IP -> Kubernetes identity map: which pod, service or node held an IP at each instant.

One resolver serves both the file importer (a static `kubectl get pods,svc -A -o json` dump) and the live
agent (a Kubernetes watch calling upsert_*/delete_*). Every identity is a record with
[valid_from, valid_to); a record is never edited except to close it, so the history is exactly what the
`workloads` table keeps and an IP handed from pod A to pod B resolves to A before the hand-over and to B
after it. `enrich()` tags a whole Arrow chunk of packets at once with numpy (no per-packet Python).

Precedence when several records hold one IP at the same instant (docs/identity.md): an ordinary pod, then
a Service (ClusterIP), then a node, then a hostNetwork pod (it shares its node's IP, so it must never
shadow the node or another pod); within one class the most recently started record wins.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from netrecall.errors import NetrecallError
from netrecall.schema.tables import endpoint_columns
from netrecall.timeutil import parse_time_ns

# The workloads table's open end ('2262-04-11 00:00:00' as DateTime64(9)): "still valid".
OPEN_NS = 9_223_286_400 * 1_000_000_000
EMPTY_IP = bytes(16)
LABELS_TYPE = pa.map_(pa.string(), pa.string())
STRING_FIELDS = ("pod", "namespace", "service", "workload", "node")
KEEP_CLOSED_NS = 600 * 1_000_000_000  # closed records the live agent keeps in memory after writing them
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Precedence classes (higher wins) for records that overlap on one IP.
_RANK = {("pod", False): 3, ("service", False): 2, ("node", False): 1, ("pod", True): 0}


@dataclass
class Identity:
    """One identity held by one IP during [valid_from, valid_to) (nanoseconds since the epoch)."""

    ip: str
    kind: str  # 'pod' | 'service' | 'node'
    name: str
    namespace: str = ""
    node: str = ""
    services: tuple[str, ...] = ()  # for a pod: the services selecting it, sorted
    labels: dict[str, str] = field(default_factory=dict)
    owner: str = ""  # Kind/name of the controlling workload, e.g. Deployment/checkout
    host_network: bool = False
    valid_from: int = 0
    valid_to: int = OPEN_NS
    source: str = ""

    @property
    def pod(self) -> str:
        return self.name if self.kind == "pod" else ""

    @property
    def service(self) -> str:
        """The service an end is shown as: the ClusterIP's own service, or the first one selecting a pod."""
        if self.kind == "service":
            return self.name
        return self.services[0] if self.services else ""

    @property
    def workload(self) -> str:
        return self.owner if self.kind == "pod" else ""

    @property
    def node_name(self) -> str:
        return self.name if self.kind == "node" else self.node

    def endpoint(self) -> dict[str, Any]:
        """The values enrich() writes for an end with this identity (keys without the src_/dst_ prefix)."""
        return {
            "pod": self.pod,
            "namespace": self.namespace,
            "service": self.service,
            "workload": self.workload,
            "node": self.node_name,
            "labels": dict(self.labels),
        }

    def _same_as(self, other: Identity) -> bool:
        """Same identity apart from its interval: no need to close and reopen."""
        return (
            self.kind == other.kind
            and self.name == other.name
            and self.namespace == other.namespace
            and self.node == other.node
            and self.services == other.services
            and self.labels == other.labels
            and self.owner == other.owner
            and self.host_network == other.host_network
        )


@dataclass
class _Index:
    """An immutable compiled view for vectorised lookups: non-overlapping segments per IP."""

    ip_rank: dict[bytes, int]
    bounds: np.ndarray  # sorted unique segment boundaries (int64 ns)
    seg_key: np.ndarray  # ip_rank * (len(bounds) + 1) + rank of the segment start in bounds; sorted
    seg_ip: np.ndarray
    seg_end_rank: np.ndarray  # index of the segment end in bounds
    seg_record: np.ndarray  # index into records (+1; 0 = none)
    records: list[Identity]
    # per string field of an end: the code of each record's value (+ the empty record at 0) in a small
    # array of the distinct values
    dictionaries: dict[str, tuple[np.ndarray, pa.Array]]
    labels: pa.Array  # one map per record (+ the empty one at 0)


def ip_bytes(ip: str) -> bytes:
    """An address as the 16 bytes the packets table holds (IPv4 mapped to ::ffff:a.b.c.d)."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise NetrecallError(f"invalid IP address {ip!r}") from None
    if addr.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _time_ns(value: Any) -> int | None:
    if value in (None, ""):
        return None
    if hasattr(value, "timestamp"):  # datetime from the kubernetes client
        return int(value.timestamp() * 1_000_000) * 1000
    try:
        return parse_time_ns(str(value))
    except NetrecallError:
        return None


_K8S_CLIENT: Any = None


def as_dict(obj: Any) -> dict[str, Any]:
    """A Kubernetes object as its API JSON (camelCase keys), whether a dict or an official-client model."""
    if isinstance(obj, Mapping):
        return dict(obj)
    global _K8S_CLIENT
    if _K8S_CLIENT is None:
        from kubernetes.client import ApiClient

        _K8S_CLIENT = ApiClient()
    return _K8S_CLIENT.sanitize_for_serialization(obj)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (_meta(obj).get("labels") or {}).items()}


def owner_of(pod: Mapping[str, Any], replica_sets: Mapping[tuple[str, str], str] | None = None) -> str:
    """Kind/name of the workload controlling a pod; a ReplicaSet is followed up to its Deployment.

    When the ReplicaSet is not in the dump, its Deployment is found by name: a Deployment's ReplicaSets
    are named <deployment>-<pod-template-hash>, and the pod carries that hash as a label.
    """
    meta = _meta(pod)
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if not ref:
        return ""
    kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
    if kind == "ReplicaSet":
        known = (replica_sets or {}).get((str(meta.get("namespace", "")), name))
        if known is not None:
            return known or f"ReplicaSet/{name}"
        template_hash = _labels(pod).get("pod-template-hash", "")
        if template_hash and name.endswith("-" + template_hash):
            return f"Deployment/{name[: -len(template_hash) - 1]}"
        match = re.fullmatch(r"(.+)-[a-z0-9]{6,10}", name)
        return f"Deployment/{match.group(1)}" if match else f"ReplicaSet/{name}"
    if kind == "Job":
        # CronJob jobs are named <cronjob>-<scheduled minute since the epoch>
        match = re.fullmatch(r"(.+)-\d{8,}", name)
        if match:
            return f"CronJob/{match.group(1)}"
    return f"{kind}/{name}"


def _pod_ips(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def _pod_end(pod: Mapping[str, Any]) -> int | None:
    """When a pod gave its IP back: its deletion, or the end of its last container once it completed."""
    status = pod.get("status") or {}
    ends: list[int] = []
    if status.get("phase") in ("Succeeded", "Failed"):
        for cs in status.get("containerStatuses") or []:
            finished = _time_ns(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            if finished is not None:
                ends.append(finished)
    deleted = _time_ns(_meta(pod).get("deletionTimestamp"))
    if deleted is not None:
        ends.append(deleted)
    return min(ends) if ends else None


def _service_ips(svc: Mapping[str, Any]) -> list[str]:
    spec = svc.get("spec") or {}
    ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
    ips += list(spec.get("externalIPs") or [])
    for ingress in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if ingress.get("ip"):
            ips.append(ingress["ip"])
    return [ip for ip in dict.fromkeys(str(i) for i in ips) if ip and ip != "None"]


def _node_ips(node: Mapping[str, Any]) -> list[str]:
    addresses = (node.get("status") or {}).get("addresses") or []
    ips = [str(a.get("address")) for a in addresses if a.get("type") in ("InternalIP", "ExternalIP")]
    return [ip for ip in dict.fromkeys(ips) if ip]


class IdentityResolver:
    """IP -> identity at a timestamp, with the full history for the `workloads` table.

    Thread-safe: the live agent's watch thread mutates while the capture thread enriches; lookups use an
    immutable compiled index rebuilt (lazily, under the lock) after a change.
    """

    def __init__(self, source: str = "agent") -> None:
        self.source = source
        self._lock = threading.RLock()
        self._records: dict[int, Identity] = {}  # record number -> record, in creation order
        self._next_record = 0
        self._open: dict[tuple[str, str, str], dict[bytes, int]] = {}  # (kind, ns, name) -> ip -> record
        self._open_by_ip: dict[bytes, set[int]] = {}
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods_by_ns: dict[str, set[str]] = {}
        self._selectors: dict[str, dict[str, dict[str, str]]] = {}  # ns -> service -> selector
        # EndpointSlice (ns, name) -> (service, pods it names); pod -> {service: slices naming it}
        self._slices: dict[tuple[str, str], tuple[str, frozenset[tuple[str, str]]]] = {}
        self._slice_refs: dict[tuple[str, str], dict[str, int]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}  # node objects seen (name -> labels, ips)
        self._synth_nodes: dict[str, str] = {}  # node name -> hostIP learnt from its pods
        self._replica_sets: dict[tuple[str, str], str] = {}
        self._changed: set[int] = set()
        self._index: _Index | None = None

    # --- loading a dump -------------------------------------------------------------------------------
    @classmethod
    def from_inventory(cls, path: str | Path, source: str | None = None) -> IdentityResolver:
        """Read `kubectl get pods,svc -A -o json` (nodes, endpointslices and replicasets are used too)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise NetrecallError(f"inventory {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise NetrecallError(
                f"inventory {path}: not UTF-8 text at byte {exc.start}: "
                "expected the output of `kubectl get pods,svc -A -o json`"
            ) from None
        items = _parse_items(text, path)
        resolver = cls(source=source or f"inventory:{path.name}")
        resolver.load_items(items)
        return resolver

    def load_items(self, items: Iterable[Mapping[str, Any]]) -> None:
        """Replay a dump as events in time order: objects appear at their start and go at their end."""
        by_kind: dict[str, list[Mapping[str, Any]]] = {}
        for item in items:
            if isinstance(item, Mapping):
                by_kind.setdefault(str(item.get("kind", "")), []).append(item)
        for rs in by_kind.get("ReplicaSet", []):
            meta = _meta(rs)
            owner = owner_of(rs)
            self._replica_sets[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = owner
        with self._lock:
            # Services and slices first, each valid over its own lifetime: a pod's membership is taken as
            # what the dump says, over the pod's whole life (a dump has no history of selectors).
            for node in by_kind.get("Node", []):
                self.upsert_node(node, _time_ns(_meta(node).get("creationTimestamp")) or 0)
            for svc in by_kind.get("Service", []):
                self.upsert_service(svc, None)
                end = _time_ns(_meta(svc).get("deletionTimestamp"))
                if end is not None:
                    self._close_key(("service", *_ns_name(svc)), end, keep_state=True)
            for eps in by_kind.get("EndpointSlice", []):
                self._set_slice(as_dict(eps))
            events: list[tuple[int, int, int, Mapping[str, Any]]] = []
            for i, pod in enumerate(by_kind.get("Pod", [])):
                start = _pod_start(pod)
                events.append((start, 1, i, pod))
                end = _pod_end(pod)
                if end is not None:
                    events.append((max(end, start), 0, i, pod))
            for at, is_start, _, pod in sorted(events, key=lambda e: (e[0], e[1], e[2])):
                if is_start:
                    # A completed pod in a dump held its IP until it finished: the end event closes it.
                    self._upsert_pod(pod, at, released=False)
                else:
                    self.delete_pod(pod, at)

    # --- mutations (the live agent calls these from its watch) -----------------------------------------
    def upsert_pod(self, pod: Any, at_ns: int | None = None) -> None:
        """A pod was added or changed at `at_ns` (None: the pod's own start time, for an initial list)."""
        obj = as_dict(pod)
        at = _pod_start(obj) if at_ns is None else int(at_ns)
        # A pod that completed gave its IP back (another pod may already hold it).
        self._upsert_pod(obj, at, released=(obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"))

    def _upsert_pod(self, obj: Mapping[str, Any], at: int, released: bool) -> None:
        ns, name = _ns_name(obj)
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        host_network = bool(spec.get("hostNetwork"))
        node = str(spec.get("nodeName") or "")
        with self._lock:
            state = {
                "labels": _labels(obj),
                "node": node,
                "owner": owner_of(obj, self._replica_sets),
                "host_network": host_network,
                "ips": [] if released else _pod_ips(obj),
            }
            self._pods[(ns, name)] = state
            self._pods_by_ns.setdefault(ns, set()).add(name)
            host_ip = str(status.get("hostIP") or "")
            if node and host_ip and node not in self._nodes and self._synth_nodes.get(node) != host_ip:
                # No Node object: the node's address is known from its pods (hostNetwork ones included),
                # valid since ever when first learnt (node addresses outlive the pods that reveal them).
                since = at if node in self._synth_nodes else 0
                self._synth_nodes[node] = host_ip
                self._set_open(("node", "", node), {host_ip: Identity(host_ip, "node", node)}, since)
            self._apply_pod(ns, name, at)

    def delete_pod(self, pod: Any, at_ns: int | None = None) -> None:
        """A pod is gone (or completed): its IPs are free from `at_ns` (None: deletionTimestamp or now).

        `pod` may be the object or a (namespace, name) pair."""
        obj = _object_or_key(pod)
        ns, name = _ns_name(obj)
        at = int(at_ns) if at_ns is not None else (_pod_end(obj) or _now_ns())
        with self._lock:
            self._pods.pop((ns, name), None)
            self._pods_by_ns.get(ns, set()).discard(name)
            self._close_key(("pod", ns, name), at)

    def upsert_service(self, svc: Any, at_ns: int | None = None) -> None:
        """A service was added or changed: its ClusterIPs, and the pods its selector picks, from `at_ns`."""
        obj = as_dict(svc)
        ns, name = _ns_name(obj)
        at = (_time_ns(_meta(obj).get("creationTimestamp")) or 0) if at_ns is None else int(at_ns)
        spec = obj.get("spec") or {}
        with self._lock:
            selectors = self._selectors.setdefault(ns, {})
            old, new = (
                selectors.get(name, {}),
                {str(k): str(v) for k, v in (spec.get("selector") or {}).items()},
            )
            selectors[name] = new
            template = Identity("", "service", name, namespace=ns, labels=_labels(obj), source=self.source)
            desired = {ip: replace(template, ip=ip) for ip in _service_ips(obj)}
            self._set_open(("service", ns, name), desired, at)
            if old != new:
                self._refresh_selected(ns, (old, new), at)

    def delete_service(self, svc: Any, at_ns: int | None = None) -> None:
        obj = _object_or_key(svc)
        ns, name = _ns_name(obj)
        at = int(at_ns) if at_ns is not None else (_time_ns(_meta(obj).get("deletionTimestamp")) or _now_ns())
        with self._lock:
            old = self._selectors.get(ns, {}).pop(name, {})
            self._close_key(("service", ns, name), at)
            self._refresh_selected(ns, (old,), at)

    def upsert_endpoint_slice(self, eps: Any, at_ns: int | None = None) -> None:
        """An EndpointSlice names the pods behind a service (services without selectors included)."""
        obj = as_dict(eps)
        at = _now_ns() if at_ns is None else int(at_ns)
        with self._lock:
            self._refresh_pods(self._set_slice(obj), at)

    def delete_endpoint_slice(self, eps: Any, at_ns: int | None = None) -> None:
        obj = as_dict(eps)
        at = _now_ns() if at_ns is None else int(at_ns)
        with self._lock:
            self._refresh_pods(self._set_slice(obj, deleted=True), at)

    def upsert_node(self, node: Any, at_ns: int | None = None) -> None:
        obj = as_dict(node)
        _, name = _ns_name(obj)
        at = (_time_ns(_meta(obj).get("creationTimestamp")) or 0) if at_ns is None else int(at_ns)
        with self._lock:
            self._nodes[name] = {"labels": _labels(obj)}
            self._synth_nodes.pop(name, None)
            template = Identity("", "node", name, labels=_labels(obj), source=self.source)
            self._set_open(("node", "", name), {ip: replace(template, ip=ip) for ip in _node_ips(obj)}, at)

    def delete_node(self, node: Any, at_ns: int | None = None) -> None:
        obj = as_dict(node) if not isinstance(node, str) else {"metadata": {"name": node}}
        _, name = _ns_name(obj)
        with self._lock:
            self._nodes.pop(name, None)
            self._close_key(("node", "", name), _now_ns() if at_ns is None else int(at_ns))

    # --- internals of the mutations -------------------------------------------------------------------
    def _set_slice(self, obj: Mapping[str, Any], deleted: bool = False) -> set[tuple[str, str]]:
        """Record (or forget) which pods a slice names for its service; returns the pods affected."""
        ns, name = _ns_name(obj)
        service = _labels(obj).get(SERVICE_NAME_LABEL, "")
        targets: set[tuple[str, str]] = set()
        for endpoint in [] if deleted else obj.get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            # A Service only fronts pods of its own namespace.
            if ref.get("kind") == "Pod" and ref.get("name") and (ref.get("namespace") or ns) == ns:
                targets.add((ns, str(ref["name"])))
        old_service, old_targets = self._slices.pop((ns, name), ("", frozenset()))
        for pod_key in old_targets:
            refs = self._slice_refs.get(pod_key, {})
            refs[old_service] = refs.get(old_service, 1) - 1
            if refs[old_service] <= 0:
                refs.pop(old_service, None)
        if service and targets and not deleted:
            self._slices[(ns, name)] = (service, frozenset(targets))
            for pod_key in targets:
                refs = self._slice_refs.setdefault(pod_key, {})
                refs[service] = refs.get(service, 0) + 1
        return set(old_targets) | targets

    def _pod_services(self, ns: str, name: str, labels: Mapping[str, str]) -> tuple[str, ...]:
        found = {svc for svc, selector in self._selectors.get(ns, {}).items() if _selects(selector, labels)}
        found.update(self._slice_refs.get((ns, name), {}))
        return tuple(sorted(found))

    def _refresh_selected(self, ns: str, selectors: tuple[dict[str, str], ...], at: int) -> None:
        """Re-apply the pods of `ns` that any of these selectors (a service's old and new) picks."""
        picked = [
            (ns, pod_name)
            for pod_name in self._pods_by_ns.get(ns, ())
            if any(_selects(sel, self._pods[(ns, pod_name)]["labels"]) for sel in selectors)
        ]
        self._refresh_pods(picked, at)

    def _refresh_pods(self, pods: Iterable[tuple[str, str]], at: int) -> None:
        for key in pods:
            if key in self._pods:
                self._apply_pod(*key, at)

    def _apply_pod(self, ns: str, name: str, at: int) -> None:
        state = self._pods[(ns, name)]
        template = Identity(
            "",
            "pod",
            name,
            namespace=ns,
            node=state["node"],
            services=self._pod_services(ns, name, state["labels"]),
            labels=state["labels"],
            owner=state["owner"],
            host_network=state["host_network"],
            source=self.source,
        )
        desired = {ip: replace(template, ip=ip) for ip in state["ips"]}
        if not state["host_network"]:
            # The IP hand-over: whoever else still holds one of these IPs as a pod lets go now. A holder
            # that started later (an initial list arrives in any order) keeps it: both stay open and the
            # later start wins from its own start on (see _segments).
            for ip in desired:
                for idx in list(self._open_by_ip.get(ip_bytes(ip), ())):
                    rec = self._records[idx]
                    if (
                        rec.kind == "pod"
                        and not rec.host_network
                        and (rec.namespace, rec.name) != (ns, name)
                        and rec.valid_from <= at
                    ):
                        self._close_record(("pod", rec.namespace, rec.name), idx, at)
        self._set_open(("pod", ns, name), desired, at)

    def _set_open(self, key: tuple[str, str, str], desired: Mapping[str, Identity], at: int) -> None:
        """Make the open records of one object equal `desired` (ip -> identity) from `at` on."""
        current = self._open.setdefault(key, {})
        wanted = {ip_bytes(ip): ident for ip, ident in desired.items()}
        for raw, idx in list(current.items()):
            if raw not in wanted or not self._records[idx]._same_as(wanted[raw]):
                self._close_record(key, idx, at)
        for raw, ident in wanted.items():
            if raw in current:
                continue
            record = replace(ident, valid_from=at, valid_to=OPEN_NS, source=ident.source or self.source)
            idx = self._next_record
            self._next_record += 1
            self._records[idx] = record
            current[raw] = idx
            self._open_by_ip.setdefault(raw, set()).add(idx)
            self._changed.add(idx)
            self._index = None

    def _close_record(self, key: tuple[str, str, str], idx: int, at: int) -> None:
        record = self._records[idx]
        # An event older than the record's start (out-of-order watch) leaves an empty interval.
        record.valid_to = max(int(at), record.valid_from)
        raw = ip_bytes(record.ip)
        self._open.get(key, {}).pop(raw, None)
        holders = self._open_by_ip.get(raw)
        if holders is not None:
            holders.discard(idx)
        self._changed.add(idx)
        self._index = None

    def _close_key(self, key: tuple[str, str, str], at: int, keep_state: bool = False) -> None:
        for idx in list(self._open.get(key, {}).values()):
            self._close_record(key, idx, at)
        if not keep_state:
            self._open.pop(key, None)

    # --- lookups ----------------------------------------------------------------------------------------
    def lookup(self, ip: str, ts_ns: int) -> Identity | None:
        """The identity `ip` had at `ts_ns`, or None when no known object held it then."""
        index = self._compiled()
        rank = index.ip_rank.get(ip_bytes(ip))
        if rank is None:
            return None
        t_rank = np.searchsorted(index.bounds, np.array([int(ts_ns)], dtype=np.int64), side="right")
        rec = _search(index, np.array([rank], dtype=np.int64), t_rank)[0]
        return index.records[rec - 1] if rec else None

    def enrich(self, table: pa.Table) -> pa.Table:
        """`table` plus src_/dst_ pod, namespace, service, workload, node, labels for its ts/src_ip/dst_ip.

        `ts` is a timestamp (ns) column, the IPs fixed_size_binary(16) (IPv4 v4-mapped). The new columns
        are strings and map<string, string> (empty, never null, for an unknown end); columns already
        present are replaced.
        """
        index = self._compiled()
        ts = _int64_column(table.column("ts"))
        windows = _TimeWindows(index, ts)
        out = table
        for side in ("src", "dst"):
            records = _resolve_column(index, table.column(f"{side}_ip"), windows)
            for column, _ in endpoint_columns(side):
                field_name = column.split("_", 1)[1]
                if field_name == "labels":
                    values = index.labels.take(records)
                else:
                    # Plain strings, not a DictionaryArray: chunks enriched before and after a change
                    # would carry different dictionaries, which Arrow's IPC file format (the HTTP
                    # insert) refuses.
                    codes, dictionary = index.dictionaries[field_name]
                    values = dictionary.take(codes[records])
                position = out.schema.get_field_index(column)
                if position >= 0:
                    out = out.set_column(position, column, values)
                else:
                    out = out.append_column(column, values)
        return out

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list[Identity]:
        """The whole history (copies), one record per identity interval."""
        with self._lock:
            return [replace(r, labels=dict(r.labels)) for r in self._records.values()]

    # --- the workloads table ----------------------------------------------------------------------------
    def workload_rows(self) -> pa.Table:
        """Every record as rows of the `workloads` table (the history, open intervals included)."""
        with self._lock:
            return _workload_table(_dedupe(self._records, list(self._records)))

    def drain_changes(self, keep_closed_ns: int | None = KEEP_CLOSED_NS) -> pa.Table:
        """The records opened or closed since the last drain (what the live agent writes next).

        Records closed more than `keep_closed_ns` before the latest change, once drained, are then
        dropped from memory (they are in the workloads table): a long-running agent's index stays the
        size of the cluster, not of its history. None keeps everything.
        """
        with self._lock:
            changed = sorted(self._changed)
            self._changed.clear()
            rows = _workload_table(_dedupe(self._records, changed))
            if keep_closed_ns is not None and self._records:
                latest = max(
                    max(r.valid_from, r.valid_to if r.valid_to < OPEN_NS else 0)
                    for r in self._records.values()
                )
                self.prune(latest - keep_closed_ns)
            return rows

    def prune(self, before_ns: int) -> int:
        """Forget records closed before `before_ns` that were already drained; returns how many."""
        with self._lock:
            old = [
                idx
                for idx, r in self._records.items()
                if r.valid_to < OPEN_NS and r.valid_to < before_ns and idx not in self._changed
            ]
            for idx in old:
                del self._records[idx]
            if old:
                self._index = None
            return len(old)

    # --- the compiled index -----------------------------------------------------------------------------
    def _compiled(self) -> _Index:
        index = self._index
        if index is not None:
            return index
        with self._lock:
            if self._index is None:
                self._index = _compile([replace(r, labels=dict(r.labels)) for r in self._records.values()])
            return self._index


_KUBECTL = "`kubectl get pods,svc -A -o json`"


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _object_or_key(obj: Any) -> Mapping[str, Any]:
    """An object, or a (namespace, name) pair naming one (all a delete needs)."""
    if isinstance(obj, tuple):
        return {"metadata": {"namespace": obj[0], "name": obj[1]}}
    return as_dict(obj)


def _ns_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _meta(obj)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _pod_start(pod: Mapping[str, Any]) -> int:
    status = pod.get("status") or {}
    return _time_ns(status.get("startTime")) or _time_ns(_meta(pod).get("creationTimestamp")) or 0


def _now_ns() -> int:
    import time

    return time.time_ns()


def _parse_items(text: str, path: Path) -> list[Mapping[str, Any]]:
    """One List (kubectl -o json), a bare object, or several JSON documents back to back."""
    decoder = json.JSONDecoder()
    items: list[Mapping[str, Any]] = []
    pos, found = 0, False
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise NetrecallError(
                f"inventory {path}: not JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
                f"expected the output of {_KUBECTL}"
            ) from None
        found = True
        if isinstance(doc, Mapping) and isinstance(doc.get("items"), list):
            items.extend(i for i in doc["items"] if isinstance(i, Mapping))
        elif isinstance(doc, Mapping) and doc.get("kind"):
            items.append(doc)
        elif isinstance(doc, list):
            items.extend(i for i in doc if isinstance(i, Mapping))
        else:
            raise NetrecallError(f"inventory {path}: expected a Kubernetes List ({_KUBECTL})")
    if not found:
        raise NetrecallError(f"inventory {path}: empty file; expected the output of {_KUBECTL}")
    return items


def _dedupe(records: Mapping[int, Identity], indexes: Iterable[int]) -> list[Identity]:
    """One row per workloads key (ip, valid_from, kind, namespace, name): the last record wins."""
    rows: dict[tuple[str, int, str, str, str], Identity] = {}
    for idx in indexes:
        r = records[idx]
        rows[(r.ip, r.valid_from, r.kind, r.namespace, r.name)] = r
    return list(rows.values())


def _workload_table(records: list[Identity]) -> pa.Table:
    return pa.table(
        {
            "ip": pa.array([ip_bytes(r.ip) for r in records], type=pa.binary(16)),
            "kind": pa.array([r.kind for r in records], type=pa.string()),
            "name": pa.array([r.name for r in records], type=pa.string()),
            "namespace": pa.array([r.namespace for r in records], type=pa.string()),
            "node": pa.array([r.node_name for r in records], type=pa.string()),
            "services": pa.array([list(r.services) for r in records], type=pa.list_(pa.string())),
            "labels": pa.array([list(r.labels.items()) for r in records], type=LABELS_TYPE),
            "owner": pa.array([r.owner for r in records], type=pa.string()),
            "host_network": pa.array([r.host_network for r in records], type=pa.bool_()),
            "valid_from": pa.array([r.valid_from for r in records], type=pa.timestamp("ns")),
            "valid_to": pa.array([r.valid_to for r in records], type=pa.timestamp("ns")),
            "source": pa.array([r.source for r in records], type=pa.string()),
        }
    )


def _segments(records: list[tuple[int, Identity]]) -> list[tuple[int, int, int]]:
    """Non-overlapping (start, end, record) pieces of one IP's timeline, by precedence."""
    live = [(i, r) for i, r in records if r.valid_to > r.valid_from]
    if len(live) == 1:
        i, r = live[0]
        return [(r.valid_from, r.valid_to, i)]
    points = sorted({p for _, r in live for p in (r.valid_from, r.valid_to)})
    pieces: list[tuple[int, int, int]] = []
    for start, end in itertools.pairwise(points):
        covering = [(i, r) for i, r in live if r.valid_from <= start and r.valid_to >= end]
        if not covering:
            continue
        best = max(covering, key=lambda c: (_RANK[(c[1].kind, c[1].host_network)], c[1].valid_from, c[0]))[0]
        if pieces and pieces[-1][2] == best and pieces[-1][1] == start:
            pieces[-1] = (pieces[-1][0], end, best)
        else:
            pieces.append((start, end, best))
    return pieces


def _compile(records: list[Identity]) -> _Index:
    by_ip: dict[bytes, list[tuple[int, Identity]]] = {}
    for i, r in enumerate(records):
        by_ip.setdefault(ip_bytes(r.ip), []).append((i, r))
    ip_rank: dict[bytes, int] = {}
    seg_ip: list[int] = []
    seg_start: list[int] = []
    seg_end: list[int] = []
    seg_record: list[int] = []
    for raw in sorted(by_ip):
        pieces = _segments(by_ip[raw])
        if not pieces:
            continue
        rank = ip_rank.setdefault(raw, len(ip_rank))
        for start, end, idx in pieces:
            seg_ip.append(rank)
            seg_start.append(start)
            seg_end.append(end)
            seg_record.append(idx + 1)
    starts = np.array(seg_start, dtype=np.int64)
    bounds = np.unique(np.concatenate([starts, np.array(seg_end, dtype=np.int64)]))
    ips = np.array(seg_ip, dtype=np.int64)
    seg_key = ips * (len(bounds) + 1) + np.searchsorted(bounds, starts, side="right")
    empty = Identity("", "", "")
    endpoints = [empty.endpoint()] + [r.endpoint() for r in records]
    dictionaries: dict[str, tuple[np.ndarray, pa.Array]] = {}
    for name in STRING_FIELDS:
        # chDB wants each dictionary free of duplicates: one entry per distinct value, and a map from
        # record number to its entry.
        distinct: dict[str, int] = {}
        codes = np.array([distinct.setdefault(e[name], len(distinct)) for e in endpoints], dtype=np.int32)
        dictionaries[name] = (codes, pa.array(list(distinct), type=pa.string()))
    labels = pa.array([list(e["labels"].items()) for e in endpoints], type=LABELS_TYPE)
    return _Index(
        ip_rank=ip_rank,
        bounds=bounds,
        seg_key=seg_key,
        seg_ip=ips,
        seg_end_rank=np.searchsorted(bounds, np.array(seg_end, dtype=np.int64), side="left"),
        seg_record=np.array(seg_record, dtype=np.int32),
        records=records,
        dictionaries=dictionaries,
        labels=labels,
    )


def _search(index: _Index, ranks: np.ndarray, t_rank: np.ndarray) -> np.ndarray:
    """Record numbers (+1; 0 = unknown) for IP ranks (-1 = unknown IP) at time ranks.

    A time rank is searchsorted(index.bounds, ts, 'right'): every segment start and end is a boundary,
    so all times of one rank relate the same way to every segment. Segments are sorted by (ip, start)
    and never overlap within an IP, so one 1-D search over a combined key finds the candidate: the last
    segment of the IP starting at or before the time; it holds when the time is also before its end.
    """
    if len(index.seg_key) == 0:
        return np.zeros(len(ranks), dtype=np.int32)
    keys = ranks * (len(index.bounds) + 1) + t_rank
    pos = np.searchsorted(index.seg_key, keys, side="right") - 1
    safe = np.maximum(pos, 0)
    hit = (ranks >= 0) & (pos >= 0) & (index.seg_ip[safe] == ranks) & (t_rank <= index.seg_end_rank[safe])
    return np.where(hit, index.seg_record[safe], 0).astype(np.int32)


class _TimeWindows:
    """A chunk's timestamps as time ranks, relative to the few boundaries that fall inside the chunk.

    A chunk spans seconds, so usually no identity starts or ends inside it: then every row has the same
    time rank and no per-row search is needed at all.
    """

    def __init__(self, index: _Index, ts: np.ndarray) -> None:
        if len(ts) == 0 or len(index.bounds) == 0:
            self.first, self.count, self.local = 0, 1, None
            return
        lo = int(np.searchsorted(index.bounds, ts.min(), side="right"))
        hi = int(np.searchsorted(index.bounds, ts.max(), side="right"))
        self.first = lo  # the time rank of the chunk's earliest row
        self.count = hi - lo + 1
        self.local = np.searchsorted(index.bounds[lo:hi], ts, side="right") if hi > lo else None


def _int64_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        arr = arr.cast(pa.int64())
    return arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _resolve_column(index: _Index, column: pa.ChunkedArray | pa.Array, windows: _TimeWindows) -> np.ndarray:
    """Per row, the record number for one IP column.

    Unique IPs first (a chunk has few), resolved for each time window of the chunk into a small
    (IP x window) table; each row then takes its cell: no per-row Python and no per-row search.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0 or len(index.seg_key) == 0:
        return np.zeros(len(arr), dtype=np.int32)
    encoded = pc.dictionary_encode(arr)  # nulls stay null in the indices
    dictionary = encoded.dictionary.to_pylist()
    # One extra row (-1) for rows whose IP is null.
    ranks = np.array([index.ip_rank.get(raw, -1) for raw in dictionary] + [-1], dtype=np.int64)
    codes = encoded.indices.fill_null(len(ranks) - 1).to_numpy(zero_copy_only=False)
    if windows.local is not None and len(ranks) * windows.count > len(arr):
        # Many identity changes inside one chunk (a burst of pod churn): search per row instead.
        return _search(index, ranks[codes], windows.first + windows.local)
    grid_ranks = np.repeat(ranks, windows.count)
    grid_times = np.tile(np.arange(windows.first, windows.first + windows.count, dtype=np.int64), len(ranks))
    grid = _search(index, grid_ranks, grid_times).reshape(len(ranks), windows.count)
    if windows.local is None:
        return grid[:, 0][codes]
    return grid[codes, windows.local]
