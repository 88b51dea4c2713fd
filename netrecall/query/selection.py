"""Turning export filters (--ip, --port, --pod, --label, --kfl, window, node, snapshot) into a packet WHERE.

Every user value is a bound parameter; the SQL text only ever holds fixed fragments and parameter names.
The window is resolved against the data actually stored, so a filter over a window retention already
dropped (or that never held data) fails with a sentence saying what is there instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.query.bounds import Window, fit_window, key_ordered_bounds, retention_horizon
from netrecall.store import Store
from netrecall.timeutil import format_time_ns, parse_time_ns

PROTOCOLS = {"tcp": (6,), "udp": (17,), "icmp": (1, 58)}  # icmp covers ICMPv6 too


@dataclass
class PacketFilters:
    """The filters as the user gave them; repeated values of one kind are ORed, kinds are ANDed."""

    nodes: list[str] = field(default_factory=list)
    since: str | None = None
    until: str | None = None
    ips: list[str] = field(default_factory=list)  # address or CIDR, matched at either end
    ports: list[int] = field(default_factory=list)  # either end
    pods: list[str] = field(default_factory=list)  # NS/NAME, either end
    namespaces: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # k=v; all given labels on the same end
    proto: str | None = None
    kfl: str | None = None
    snapshot: str | None = None
    partial: bool = False  # accept a window whose start retention dropped (see query/bounds.py: fit_window)

    def as_dict(self) -> dict[str, Any]:
        """Only the filters actually given, for manifests and the exports audit row."""
        given = {k: v for k, v in self.__dict__.items() if v not in (None, [], "") and v is not False}
        return given


@dataclass
class Selection:
    """A resolved selection: the table to read, its WHERE, the bound params and the resolved window."""

    table: str
    where: str
    params: dict[str, Any]
    since_ns: int
    until_ns: int  # exclusive
    notes: tuple[str, ...] = ()  # how the window given was fitted to the stored data


def ipv6_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The stored form of an address: IPv4 as v4-mapped IPv6."""
    if isinstance(address, ipaddress.IPv4Address):
        return f"::ffff:{address}"
    return str(address)


def parse_ip(text: str) -> tuple[str, str]:
    """An address or CIDR -> (low, high) in the stored IPv6 form; equal for a single address."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise NetrecallError(
            f"invalid --ip {text!r}: expected an address (10.0.0.5, fd00::1) or CIDR (10.0.0.0/24)"
        ) from None
    return ipv6_text(network.network_address), ipv6_text(network.broadcast_address)


def parse_port(value: int | str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise NetrecallError(f"invalid --port {value!r}: expected a number 0-65535") from None
    if not 0 <= port <= 65535:
        raise NetrecallError(f"invalid --port {value!r}: expected a number 0-65535")
    return port


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise NetrecallError(f"invalid --label {text!r}: expected key=value (app=checkout)")
    return key.strip(), value


def parse_pod(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise NetrecallError(f"invalid --pod {text!r}: expected NAMESPACE/NAME (default/checkout-7d9f)")
    return namespace, name


def packets_table(store: Store, snapshot: str | None) -> tuple[str, str, dict[str, Any]]:
    """(table, base condition, params) for the live packets or one snapshot's packets."""
    if not snapshot:
        return "packets", "1", {}
    if not store.scalar("SELECT count() FROM snapshots FINAL WHERE name = {name:String}", {"name": snapshot}):
        raise NetrecallError(f"no snapshot named {snapshot!r} (see `netrecall snapshot list`)")
    return "snapshot_packets", "snapshot = {x_snapshot:String}", {"x_snapshot": snapshot}


def build_selection(store: Store, filters: PacketFilters, now_ns: int | None = None) -> Selection:
    """Validate every filter and resolve the window against the stored data; errors are one line."""
    table, base, params = packets_table(store, filters.snapshot)
    clauses = [base]

    if filters.nodes:
        params["x_nodes"] = list(filters.nodes)
        clauses.append("node IN {x_nodes:Array(String)}")
    scope_where = " AND ".join(clauses)
    window = _resolve_window(store, table, scope_where, params, filters, now_ns)
    since_ns, until_ns = window.since_ns, window.until_ns
    params["x_since"] = since_ns
    params["x_until"] = until_ns
    clauses.append(
        "ts >= fromUnixTimestamp64Nano({x_since:Int64}) AND ts < fromUnixTimestamp64Nano({x_until:Int64})"
    )

    if filters.ips:
        ors = []
        for i, text in enumerate(filters.ips):
            low, high = parse_ip(text)
            if low == high:  # equality lets the bloom-filter skip indexes work
                params[f"x_ip{i}"] = low
                ors.append(f"src_ip = toIPv6({{x_ip{i}:String}}) OR dst_ip = toIPv6({{x_ip{i}:String}})")
            else:
                params[f"x_lo{i}"], params[f"x_hi{i}"] = low, high
                rng = f"BETWEEN toIPv6({{x_lo{i}:String}}) AND toIPv6({{x_hi{i}:String}})"
                ors.append(f"src_ip {rng} OR dst_ip {rng}")
        clauses.append("(" + " OR ".join(ors) + ")")
    if filters.ports:
        params["x_ports"] = [parse_port(p) for p in filters.ports]
        clauses.append("(src_port IN {x_ports:Array(UInt16)} OR dst_port IN {x_ports:Array(UInt16)})")
    if filters.proto:
        numbers = PROTOCOLS.get(filters.proto.lower())
        if numbers is None:
            raise NetrecallError(f"invalid --proto {filters.proto!r}: expected tcp, udp or icmp")
        params["x_l4"] = list(numbers)
        clauses.append("l4 IN {x_l4:Array(UInt8)}")
    if filters.pods:
        ors = []
        for i, text in enumerate(filters.pods):
            namespace, name = parse_pod(text)
            _require_pod(store, filters.snapshot, namespace, name)
            params[f"x_pns{i}"], params[f"x_pod{i}"] = namespace, name
            ors.append(
                f"(src_namespace = {{x_pns{i}:String}} AND src_pod = {{x_pod{i}:String}})"
                f" OR (dst_namespace = {{x_pns{i}:String}} AND dst_pod = {{x_pod{i}:String}})"
            )
        clauses.append("(" + " OR ".join(ors) + ")")
    if filters.namespaces:
        for namespace in filters.namespaces:
            _require_namespace(store, filters.snapshot, namespace)
        params["x_namespaces"] = list(filters.namespaces)
        clauses.append(
            "(src_namespace IN {x_namespaces:Array(String)} OR dst_namespace IN {x_namespaces:Array(String)})"
        )
    if filters.labels:
        src, dst = [], []
        for i, text in enumerate(filters.labels):
            key, value = parse_label(text)
            params[f"x_lk{i}"], params[f"x_lv{i}"] = key, value
            src.append(f"src_labels[{{x_lk{i}:String}}] = {{x_lv{i}:String}}")
            dst.append(f"dst_labels[{{x_lk{i}:String}}] = {{x_lv{i}:String}}")
        clauses.append(f"(({' AND '.join(src)}) OR ({' AND '.join(dst)}))")
    if filters.kfl:
        clauses.append(_kfl_clause(filters.kfl, filters.snapshot, params))
    return Selection(table, " AND ".join(clauses), params, since_ns, until_ns, window.notes)


def _resolve_window(
    store: Store,
    table: str,
    scope_where: str,
    params: dict[str, Any],
    filters: PacketFilters,
    now_ns: int | None,
) -> Window:
    """The window asked for, fitted to what is stored (query/bounds.py: fit_window); defaults are the stored
    data's bounds. A window past either end of the data is clamped with a note; one whose start retention
    dropped is refused unless --partial; one holding no stored packet at all is refused."""
    since_ns = parse_time_ns(filters.since, now_ns) if filters.since else None
    until_ns = parse_time_ns(filters.until, now_ns) if filters.until else None
    if since_ns is not None and until_ns is not None and since_ns >= until_ns:
        raise NetrecallError(
            f"empty window: --since {format_time_ns(since_ns)} is not before "
            f"--until {format_time_ns(until_ns)}"
        )
    # The first and last granules in key order, not min/max over the whole ts column.
    stored = key_ordered_bounds(store, table, scope_where, params)
    where = f" in snapshot {filters.snapshot!r}" if filters.snapshot else ""
    if filters.nodes:
        where += f" for node {', '.join(filters.nodes)}"
    if stored is None:
        raise NetrecallError(f"no packets stored{where}")
    first, last = stored
    since_ns = first if since_ns is None else since_ns
    until_ns = last + 1 if until_ns is None else until_ns
    if since_ns > last or until_ns <= first:
        raise NetrecallError(
            f"window {format_time_ns(since_ns)} .. {format_time_ns(until_ns)} "
            f"is outside the stored data{where} "
            f"({format_time_ns(first)} .. {format_time_ns(last)})"
        )
    horizon = None if filters.snapshot else retention_horizon(store)  # snapshots are outside retention
    return fit_window(since_ns, until_ns, first, last, horizon, filters.partial)


def _require_pod(store: Store, snapshot: str | None, namespace: str, name: str) -> None:
    prefix = "snapshot_" if snapshot else ""
    scope = "snapshot = {s:String} AND " if snapshot else ""
    params = {"ns": namespace, "name": name, "s": snapshot or ""}
    known = store.scalar(
        f"SELECT count() > 0 FROM {prefix}workloads WHERE {scope}kind = 'pod' AND namespace = {{ns:String}} "
        "AND name = {name:String}",
        params,
    ) or store.scalar(
        f"SELECT count() > 0 FROM {prefix}packets WHERE {scope}((src_namespace = {{ns:String}} AND "
        "src_pod = {name:String}) OR (dst_namespace = {ns:String} AND dst_pod = {name:String}))",
        params,
    )
    if not known:
        raise NetrecallError(f"unknown pod {namespace}/{name}: no workload history or packet names it")


def _require_namespace(store: Store, snapshot: str | None, namespace: str) -> None:
    prefix = "snapshot_" if snapshot else ""
    scope = "snapshot = {s:String} AND " if snapshot else ""
    params = {"ns": namespace, "s": snapshot or ""}
    known = store.scalar(
        f"SELECT count() > 0 FROM {prefix}workloads WHERE {scope}namespace = {{ns:String}}", params
    ) or store.scalar(
        f"SELECT count() > 0 FROM {prefix}packets WHERE {scope}(src_namespace = {{ns:String}} "
        "OR dst_namespace = {ns:String})",
        params,
    )
    if not known:
        raise NetrecallError(f"unknown namespace {namespace!r}: no workload history or packet names it")


def _kfl_clause(text: str, snapshot: str | None, params: dict[str, Any]) -> str:
    """The packets of the flows behind the API calls (or L4 flows) a KFL filter matches, within the window."""
    from netrecall.query.kfl import compile_filter

    # Snapshot tables have the live columns (plus `snapshot`), so the live catalogue compiles for them too.
    compiled = compile_filter(text, table="api_calls")
    clash = set(compiled.params) & set(params)
    if clash:
        raise NetrecallError(f"--kfl: parameter names clash with the export filters: {sorted(clash)}")
    params.update(compiled.params)
    source = f"snapshot_{compiled.table}" if snapshot else compiled.table
    scope = "snapshot = {x_snapshot:String} AND " if snapshot else ""
    since, until = "fromUnixTimestamp64Nano({x_since:Int64})", "fromUnixTimestamp64Nano({x_until:Int64})"
    if compiled.table == "flows":  # an L4-only filter (conn/flow flags) is answered by the flows table
        window = f"last_ts >= {since} AND first_ts < {until}"
    else:
        window = f"ts >= {since} AND ts < {until}"
    return f"flow_id IN (SELECT flow_id FROM {source} WHERE {scope}({compiled.where}) AND {window})"
