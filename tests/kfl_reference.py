"""An independent interpretation of KFL for the tests: evaluates the parsed tree directly over the Python
rows of tests/kfl_dataset.py (no SQL, no field catalogue), following KFL's documented semantics:
absent values are ""/0/false/[]/{}, elapsed_time is in microseconds, protocol literals compare
case-insensitively, IP literals compare as addresses, integer division truncates (x/0 = 0 here)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from netrecall.query.kfl.nodes import Binary, Call, Cond, Ident, Index, ListExpr, Literal, Node, Select, Unary
from netrecall.timeutil import parse_duration_ns, parse_time_ns


class Proto(str):
    """The protocol value: equal to any spelling of the same protocol name."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and str(self) == other.lower()

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


class Ip(str):
    """An address as text: equal to another spelling of the same address."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return False
        try:
            return ipaddress.ip_address(str(self) or "::") == ipaddress.ip_address(other)
        except ValueError:
            return str(self) == other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


def _distinct(*values: str) -> list[str]:
    return sorted({v for v in values if v})


def _local(row: dict, want_local: bool, key: str) -> Any:
    dst_is_local = row["dst_node"] == row["node_name"] and row["src_node"] != row["node_name"]
    side = ("dst" if dst_is_local else "src") if want_local else ("src" if dst_is_local else "dst")
    return row[f"{side}_{key}"]


FIELDS = {
    "id": lambda r: r["id"],
    "timestamp": lambda r: ("ts", r["ts"]),
    "elapsed_time": lambda r: r["elapsed_time"],
    "node_name": lambda r: r["node_name"],
    "protocol": lambda r: Proto(r["protocol"]),
    "src.ip": lambda r: Ip(r["src_ip"]),
    "dst.ip": lambda r: Ip(r["dst_ip"]),
    "src.port": lambda r: r["src_port"],
    "dst.port": lambda r: r["dst_port"],
    "method": lambda r: r["method"],
    "url": lambda r: r["url"],
    "path": lambda r: r["path"],
    "query_string": lambda r: r["query_string"],
    "host": lambda r: r["host"],
    "status_code": lambda r: r["status_code"],
    "status_text": lambda r: r["status_text"],
    "http_version": lambda r: r["http_version"],
    "request.headers": lambda r: r["request_headers"],
    "response.headers": lambda r: r["response_headers"],
    "request_body_size": lambda r: r["request_body_size"],
    "response_body_size": lambda r: r["response_body_size"],
    "src.pod.name": lambda r: r["src_pod"],
    "dst.pod.name": lambda r: r["dst_pod"],
    "src.pod.namespace": lambda r: r["src_namespace"],
    "dst.pod.namespace": lambda r: r["dst_namespace"],
    "src.namespace": lambda r: r["src_namespace"],
    "dst.namespace": lambda r: r["dst_namespace"],
    "src.service.name": lambda r: r["src_service"],
    "dst.service.name": lambda r: r["dst_service"],
    "src.name": lambda r: r["src_pod"] or r["src_service"],
    "dst.name": lambda r: r["dst_pod"] or r["dst_service"],
    "src.labels": lambda r: r["src_labels"],
    "dst.labels": lambda r: r["dst_labels"],
    "namespaces": lambda r: _distinct(r["src_namespace"], r["dst_namespace"]),
    "pods": lambda r: _distinct(r["src_pod"], r["dst_pod"]),
    "services": lambda r: _distinct(r["src_service"], r["dst_service"]),
    "local_labels": lambda r: _local(r, True, "labels"),
    "remote_labels": lambda r: _local(r, False, "labels"),
    "dns_questions": lambda r: r["dns_questions"],
    "dns_answers": lambda r: r["dns_answers"],
    "dns_question_types": lambda r: r["dns_question_types"],
    "dns_request": lambda r: r["dns_request"],
    "dns_response": lambda r: r["dns_response"],
    "grpc_method": lambda r: r["grpc_method"],
    "grpc_status": lambda r: r["grpc_status"],
    "partial": lambda r: r["partial"],
    "error": lambda r: r["error"],
    "has_response": lambda r: r["has_response"],
}
for _proto in ("http", "dns", "grpc", "redis", "kafka", "postgresql", "tls", "tcp", "udp"):
    FIELDS[_proto] = lambda r, p=_proto: r["protocol"] == p
ALIASES = {
    "response.status": "status_code",
    "request.method": "method",
    "src.ns": "src.namespace",
    "dst.ns": "dst.namespace",
    "elapsedTime": "elapsed_time",
}


def _dotted(node: Node) -> str | None:
    parts = []
    while isinstance(node, Select):
        parts.append(node.field)
        node = node.operand
    if not isinstance(node, Ident):
        return None
    return ".".join([node.name, *reversed(parts)])


class Time(int):
    """Nanoseconds since the epoch (a timestamp, as opposed to a duration)."""


def evaluate(node: Node, row: dict, now_ns: int, scope: dict | None = None) -> Any:
    scope = scope or {}
    ev = lambda n: evaluate(n, row, now_ns, scope)  # noqa: E731
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Ident) and node.name in scope:
        return scope[node.name]
    if isinstance(node, Ident | Select):
        name = _dotted(node)
        name = ALIASES.get(name, name)
        if name in FIELDS:
            value = FIELDS[name](row)
            return Time(value[1]) if isinstance(value, tuple) else value
        assert isinstance(node, Select)
        return ev(node.operand).get(node.field, "")
    if isinstance(node, Index):
        container, key = ev(node.operand), ev(node.index)
        if _dotted(node.operand) == "query_string":
            for pair in container.split("&"):
                name, _, value = pair.partition("=")
                if name == key:
                    return value
            return ""
        if isinstance(container, dict):
            return container.get(key, "")
        return container[key] if 0 <= key < len(container) else ""
    if isinstance(node, Unary):
        value = ev(node.operand)
        return (not value) if node.op == "!" else -value
    if isinstance(node, Cond):
        return ev(node.then) if ev(node.cond) else ev(node.other)
    if isinstance(node, ListExpr):
        return [ev(i) for i in node.items]
    if isinstance(node, Binary):
        return _binary(node, ev)
    if isinstance(node, Call):
        return _call(node, row, now_ns, scope, ev)
    raise TypeError(node)


def _binary(node: Binary, ev) -> Any:
    op = node.op
    if op == "&&":
        return bool(ev(node.left)) and bool(ev(node.right))
    if op == "||":
        return bool(ev(node.left)) or bool(ev(node.right))
    left, right = ev(node.left), ev(node.right)
    if op == "in":
        if isinstance(right, dict):
            return left in right
        return any(item == left or left == item for item in right)
    if op == "==":
        return left == right or right == left
    if op == "!=":
        return not (left == right or right == left)
    compare = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    if op in compare:
        return compare[op](left, right)
    if op == "+":
        total = left + right
        return Time(total) if isinstance(left, Time) or isinstance(right, Time) else total
    if op == "-":
        if isinstance(left, Time) and isinstance(right, Time):
            return int(left) - int(right)
        return Time(left - right) if isinstance(left, Time) else left - right
    if op == "*":
        return left * right
    if op == "/":
        if isinstance(left, float) or isinstance(right, float):
            return left / right if right else float("inf")
        if right == 0:
            return 0
        quotient = abs(left) // abs(right)
        return quotient if (left >= 0) == (right >= 0) else -quotient
    if op == "%":
        if right == 0:
            return 0
        return int(abs(left) % abs(right)) * (1 if left >= 0 else -1)
    raise ValueError(op)


def _call(node: Call, row: dict, now_ns: int, scope: dict, ev) -> Any:
    name = node.name
    if node.target is None:
        args = node.args
        if name == "now":
            return Time(now_ns)
        if name == "timestamp":
            return Time(parse_time_ns(ev(args[0])))
        if name == "duration":
            return parse_duration_ns(ev(args[0]))
        if name == "size":
            return len(ev(args[0]))
        if name == "map_get":
            mapping, key, default = (ev(a) for a in args)
            return mapping.get(key, default)
        if name == "string":
            value = ev(args[0])
            return ("true" if value else "false") if isinstance(value, bool) else str(value)
        if name == "int":
            value = ev(args[0])
            try:
                return int(value)
            except ValueError:
                return 0
        if name == "matches":
            return re.search(ev(args[1]), ev(args[0])) is not None
        raise ValueError(name)
    if name in ("exists", "all", "exists_one", "filter", "map"):
        collection = ev(node.target)
        items = list(collection.keys()) if isinstance(collection, dict) else list(collection)
        var = node.args[0].name  # type: ignore[attr-defined]
        results = [evaluate(node.args[1], row, now_ns, {**scope, var: item}) for item in items]
        if name == "exists":
            return any(results)
        if name == "all":
            return all(results)
        if name == "exists_one":
            return sum(1 for r in results if r) == 1
        if name == "filter":
            return [item for item, keep in zip(items, results, strict=True) if keep]
        return results
    target = ev(node.target)
    args = [ev(a) for a in node.args]
    if name == "contains":
        return args[0] in target
    if name == "startsWith":
        return target.startswith(args[0])
    if name == "endsWith":
        return target.endswith(args[0])
    if name == "matches":
        return re.search(args[0], target) is not None
    if name == "size":
        return len(target)
    if name == "lowerAscii":
        return target.lower()
    if name == "upperAscii":
        return target.upper()
    raise ValueError(name)
