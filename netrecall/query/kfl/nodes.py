"""The KFL syntax tree: plain dataclasses, each with the offset of the character it starts at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Node:
    pos: int


@dataclass(frozen=True)
class Literal(Node):
    value: Any
    kind: str  # 'string' | 'int' | 'uint' | 'double' | 'bool' | 'null'


@dataclass(frozen=True)
class Ident(Node):
    name: str


@dataclass(frozen=True)
class Select(Node):
    """`operand.field` (a dotted field name, or a key of a map)."""

    operand: Node
    field: str


@dataclass(frozen=True)
class Index(Node):
    """`operand[index]`."""

    operand: Node
    index: Node


@dataclass(frozen=True)
class Call(Node):
    """`name(args)` (target None) or `target.name(args)`; macros (exists, all, ...) are calls too."""

    target: Node | None
    name: str
    args: tuple[Node, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Unary(Node):
    op: str  # '!' | '-'
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str  # '||' '&&' '==' '!=' '<' '<=' '>' '>=' 'in' '+' '-' '*' '/' '%'
    left: Node
    right: Node


@dataclass(frozen=True)
class Cond(Node):
    """`cond ? then : other`."""

    cond: Node
    then: Node
    other: Node


@dataclass(frozen=True)
class ListExpr(Node):
    items: tuple[Node, ...]


def dotted_name(node: Node) -> str | None:
    """`a.b.c` as 'a.b.c' when the node is a chain of selects on an identifier, else None."""
    parts: list[str] = []
    while isinstance(node, Select):
        parts.append(node.field)
        node = node.operand
    if not isinstance(node, Ident):
        return None
    parts.append(node.name)
    return ".".join(reversed(parts))


def to_text(node: Node) -> str:
    """The tree back as KFL text, fully parenthesised (used by property tests and notes)."""
    if isinstance(node, Literal):
        if node.kind == "string":
            return '"' + "".join(_escape_char(c) for c in node.value) + '"'
        if node.kind == "bool":
            return "true" if node.value else "false"
        if node.kind == "null":
            return "null"
        if node.kind == "uint":
            return f"{node.value}u"
        return repr(node.value)
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, Select):
        return f"{to_text(node.operand)}.{node.field}"
    if isinstance(node, Index):
        return f"{to_text(node.operand)}[{to_text(node.index)}]"
    if isinstance(node, Call):
        args = ", ".join(to_text(a) for a in node.args)
        return f"{to_text(node.target)}.{node.name}({args})" if node.target else f"{node.name}({args})"
    if isinstance(node, Unary):
        return f"{node.op}({to_text(node.operand)})"
    if isinstance(node, Binary):
        return f"({to_text(node.left)} {node.op} {to_text(node.right)})"
    if isinstance(node, Cond):
        return f"({to_text(node.cond)} ? {to_text(node.then)} : {to_text(node.other)})"
    if isinstance(node, ListExpr):
        return "[" + ", ".join(to_text(i) for i in node.items) + "]"
    raise TypeError(f"unknown node {node!r}")


def _escape_char(ch: str) -> str:
    if ch == '"':
        return '\\"'
    if ch == "\\":
        return "\\\\"
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\x{ord(ch):02x}"
    if 0xD800 <= ord(ch) <= 0xDFFF:  # lone surrogates (from non-UTF-8 input) travel as \u escapes
        return f"\\u{ord(ch):04x}"
    return ch
