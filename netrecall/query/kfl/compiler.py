"""KFL syntax tree -> type-checked sqlglot expression tree -> ClickHouse SQL.

One pass does both jobs: each node comes back with its CEL type and its sqlglot expression, and a type
error raises before any SQL text exists. Every literal the user wrote becomes a `{pN:Type}` parameter;
the only SQL text not built from sqlglot nodes is the field catalogue's own expressions.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp

from netrecall.errors import NetrecallError
from netrecall.query.kfl.catalogue import (
    BOOL,
    CATALOGUES,
    DOUBLE,
    DURATION,
    FLOW_ONLY_FLAGS,
    INT,
    LEGACY_ALIASES,
    LIST_STRING,
    MAP_STRING,
    STRING,
    TIMESTAMP,
    Field,
)
from netrecall.query.kfl.errors import KflError
from netrecall.query.kfl.nodes import (
    Binary,
    Call,
    Cond,
    Ident,
    Index,
    ListExpr,
    Literal,
    Node,
    Select,
    Unary,
    dotted_name,
)
from netrecall.query.kfl.parser import parse_with_notes
from netrecall.timeutil import MAX_TIME_NS, MIN_TIME_NS, parse_duration_ns, parse_time_ns

NUMERIC = (INT, DOUBLE)
COMPARE_OPS = {"==": exp.EQ, "!=": exp.NEQ, "<": exp.LT, "<=": exp.LTE, ">": exp.GT, ">=": exp.GTE}
ORDERED = (INT, DOUBLE, STRING, TIMESTAMP, DURATION)
MACROS = {"exists", "all", "exists_one", "filter", "map"}
STRING_METHODS = {"contains", "startsWith", "endsWith", "matches", "lowerAscii", "upperAscii", "size"}
GLOBAL_FUNCTIONS = {"size", "map_get", "timestamp", "duration", "now", "string", "int", "double", "matches"}
_NOTHING = object()
_LEGACY_OPS = {"and": "&&", "or": "||", "not": "!"}


@dataclass
class Typed:
    """A compiled sub-expression: its CEL type, its sqlglot tree, and its value when it is a constant."""

    type: str
    expr: exp.Expression
    const: Any = _NOTHING
    field: Field | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not _NOTHING


@dataclass(frozen=True)
class KflFilter:
    """A compiled filter: `where` is a ClickHouse boolean expression over `table`'s columns, literals
    bound as `{pN:Type}` placeholders whose values are in `params`."""

    where: str
    params: dict[str, Any]
    table: str
    notes: tuple[str, ...] = ()
    expression: exp.Expression | None = field(default=None, compare=False, repr=False)


def list_of(element: str) -> str:
    return f"list<{element}>"


def element_of(list_type: str) -> str:
    return list_type[5:-1]


class Compiler:
    def __init__(self, text: str, table: str, now_ns: int | None) -> None:
        self.text = text
        self.table = table
        self.fields = CATALOGUES[table]
        self.now_ns = time.time_ns() if now_ns is None else now_ns
        self.params: dict[str, Any] = {}
        self.param_count = 0
        self.notes: list[str] = []
        self.scope: list[dict[str, tuple[str, str]]] = []  # macro variables: user name -> (sql name, type)
        self.lambda_count = 0

    # --- helpers -------------------------------------------------------------------------------------
    def error(self, reason: str, node: Node | int) -> KflError:
        return KflError(reason, self.text, node if isinstance(node, int) else node.pos)

    def param(self, value: Any, ch_type: str) -> exp.Expression:
        name = f"p{self.param_count}"
        self.param_count += 1
        self.params[name] = value
        return exp.Placeholder(this=exp.Var(this=name), kind=_data_type(ch_type))

    def const(self, kind: str, value: Any) -> Typed:
        if kind == STRING:
            return Typed(STRING, self.param(value, "String"), value)
        if kind == INT:
            return Typed(INT, self.param(int(value), "Int64"), int(value))
        if kind == DOUBLE:
            return Typed(DOUBLE, self.param(float(value), "Float64"), float(value))
        if kind == BOOL:
            return Typed(BOOL, self.param(bool(value), "Bool"), bool(value))
        if kind == TIMESTAMP:
            return Typed(
                TIMESTAMP, _fn("fromUnixTimestamp64Nano", self.param(int(value), "Int64")), int(value)
            )
        if kind == DURATION:
            return Typed(DURATION, self.param(int(value), "Int64"), int(value))
        raise AssertionError(kind)

    # --- dispatch ------------------------------------------------------------------------------------
    def visit(self, node: Node) -> Typed:
        if isinstance(node, Literal):
            return self.literal(node)
        if isinstance(node, Ident | Select):
            return self.reference(node)
        if isinstance(node, Index):
            return self.index(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Cond):
            return self.conditional(node)
        if isinstance(node, ListExpr):
            return self.list_expr(node)
        raise self.error(f"unsupported expression {type(node).__name__}", node)

    def literal(self, node: Literal) -> Typed:
        if node.kind == "null":
            raise self.error('KFL has no null: absent values compare as "", 0, false, [] or {}', node)
        if node.kind in ("int", "uint"):
            if not -(2**63) <= node.value < 2**64:
                raise self.error("integer literal out of range (64 bits)", node)
            if node.value >= 2**63:  # only a UInt64 holds it
                return Typed(INT, self.param(node.value, "UInt64"), node.value)
            return self.const(INT, node.value)
        return self.const(node.kind, node.value)

    # --- fields --------------------------------------------------------------------------------------
    def reference(self, node: Ident | Select) -> Typed:
        if isinstance(node, Ident):
            for frame in reversed(self.scope):
                if node.name in frame:
                    sql_name, kind = frame[node.name]
                    return Typed(kind, exp.to_identifier(sql_name))
        name = dotted_name(node)
        if name is not None:
            found = self.lookup(name, node)
            if found is not None:
                return found
        if isinstance(node, Select):
            operand_name = dotted_name(node.operand)
            operand_known = (
                operand_name is None or self.lookup(operand_name, node.operand, quiet=True) is not None
            )
            if operand_known:
                operand = self.visit(node.operand)
                if operand.type == MAP_STRING:  # CEL: map.key is map["key"]
                    return self.subscript(operand, self.const(STRING, node.field), node)
                if name is None:
                    raise self.error(f"{operand.type} value has no field {node.field!r}", node)
        raise self.unknown_field(name or "?", node)

    def lookup(self, name: str, node: Node, quiet: bool = False) -> Typed | None:
        found = self.fields.get(name)
        if found is None and name in LEGACY_ALIASES:
            modern = LEGACY_ALIASES[name]
            found = self.fields.get(modern)
            if found is not None and not quiet:
                self.notes.append(f"{name!r} is Kubeshark's legacy spelling: KFL2 calls it {modern!r}")
        if found is None:
            return None
        return Typed(found.type, _parse_sql(found.sql), field=found)

    def unknown_field(self, name: str, node: Node) -> KflError:
        candidates = list(self.fields) + list(LEGACY_ALIASES)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        if not close:  # `status` -> status_code, `namespace` -> src.namespace: match the last part too
            tails = {c.rsplit(".", 1)[-1]: c for c in self.fields}
            close = [
                tails[m]
                for m in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.75)
            ]
        hint = ""
        if close:
            suggestion = LEGACY_ALIASES.get(close[0], close[0])
            hint = f": did you mean {suggestion}?"
        elif self.table == "api_calls" and name in CATALOGUES["flows"]:
            hint = ": it is an L4 flow field (use it with conn/flow)"
        return self.error(f"unknown field {name!r}{hint}", node)

    # --- indexing --------------------------------------------------------------------------------------
    def index(self, node: Index) -> Typed:
        operand = self.visit(node.operand)
        key = self.visit(node.index)
        if operand.field is not None and operand.field.name == "query_string":
            self.expect(key, STRING, node.index, "a query parameter name")
            # Kubeshark treats query_string as a map of parameters; here it is the raw string.
            url = exp.Concat(expressions=[exp.Literal.string("?"), operand.expr])
            return Typed(STRING, _fn("extractURLParameter", url, key.expr))
        if operand.type == MAP_STRING:
            self.expect(key, STRING, node.index, "a map key")
            return self.subscript(operand, key, node)
        if operand.type.startswith("list<"):
            self.expect(key, INT, node.index, "a list index")
            # CEL lists are 0-based; ClickHouse arrays 1-based. Out of range gives the absent value.
            return Typed(element_of(operand.type), _fn("arrayElement", operand.expr, _add(key.expr, 1)))
        raise self.error(f"cannot index a {operand.type} value", node)

    def subscript(self, mapping: Typed, key: Typed, node: Node) -> Typed:
        # A missing key yields "" (ClickHouse's default), which is KFL's absent value.
        return Typed(STRING, _bracket(mapping.expr, key.expr))

    # --- calls ---------------------------------------------------------------------------------------
    def call(self, node: Call) -> Typed:
        if node.target is None:
            return self.global_call(node)
        if node.name in MACROS:
            return self.macro(node)
        target = self.visit(node.target)
        if node.name == "size":
            self.arity(node, 0)
            return self.size(target, node.target)
        if target.type != STRING and node.name in STRING_METHODS:
            raise self.error(f".{node.name}() needs a string, but this is a {target.type}", node.target)
        if node.name in ("contains", "startsWith", "endsWith", "matches"):
            self.arity(node, 1)
            arg = self.visit(node.args[0])
            self.expect(arg, STRING, node.args[0], f"the argument of .{node.name}()")
            return self.string_test(node.name, target, arg, node.args[0])
        if node.name in ("lowerAscii", "upperAscii"):
            self.arity(node, 0)
            return Typed(STRING, _fn("lower" if node.name == "lowerAscii" else "upper", target.expr))
        raise self.error(f"unknown method .{node.name}()", node)

    def string_test(self, name: str, target: Typed, arg: Typed, arg_node: Node) -> Typed:
        if name == "contains":
            if arg.is_const:  # LIKE with escaped wildcards lets the path ngram index skip granules
                pattern = "%" + _like_escape(arg.const) + "%"
                self.params[_param_name(arg.expr)] = pattern
                return Typed(BOOL, exp.Like(this=target.expr, expression=arg.expr))
            return Typed(
                BOOL, exp.GT(this=_fn("position", target.expr, arg.expr), expression=exp.Literal.number(0))
            )
        if name == "matches":
            if arg.is_const:
                self.check_regex(arg.const, arg_node)
            return Typed(BOOL, _fn("match", target.expr, arg.expr))
        return Typed(BOOL, _fn(name, target.expr, arg.expr))

    def check_regex(self, pattern: str, node: Node) -> None:
        # ClickHouse runs RE2; Python's re is close enough to catch typos (unbalanced brackets) early.
        if "\\C" in pattern:
            raise self.error("\\C (any byte) is not supported in regular expressions", node)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                re.compile(pattern)
        except re.error as exc:
            raise self.error(f"invalid regular expression: {exc.msg}", node) from None
        if re.search(r"\(\?<?[=!]", pattern) or re.search(r"\\[1-9]", pattern):
            raise self.error("lookaround and backreferences are not supported by RE2", node)

    def global_call(self, node: Call) -> Typed:
        name = node.name
        if name == "size":
            self.arity(node, 1)
            return self.size(self.visit(node.args[0]), node.args[0])
        if name == "now":
            self.arity(node, 0)
            return self.const(TIMESTAMP, self.now_ns)
        if name in ("timestamp", "duration"):
            self.arity(node, 1)
            arg = self.visit(node.args[0])
            if arg.type == TIMESTAMP and name == "timestamp":
                return arg
            if not (arg.is_const and arg.type == STRING):
                raise self.error(f'{name}() takes a quoted string, e.g. {name}("5m")', node.args[0])
            self.params.pop(_param_name(arg.expr))  # replaced by the parsed value
            try:
                value = parse_time_ns(arg.const) if name == "timestamp" else parse_duration_ns(arg.const)
            except NetrecallError as exc:
                raise self.error(str(exc), node.args[0]) from None
            if not MIN_TIME_NS <= value <= MAX_TIME_NS:  # bound as Int64 nanoseconds (fuzz/kfl)
                raise self.error(f"{name}() is out of range: times lie between 1677 and 2262", node.args[0])
            return self.const(TIMESTAMP if name == "timestamp" else DURATION, value)
        if name == "map_get":
            self.arity(node, 3)
            mapping, key, default = (self.visit(a) for a in node.args)
            self.expect(mapping, MAP_STRING, node.args[0], "the first argument of map_get()")
            self.expect(key, STRING, node.args[1], "a map key")
            self.expect(default, STRING, node.args[2], "the default of map_get()")
            value = _bracket(mapping.expr, key.expr)
            if default.is_const and default.const == "":  # m[k] is already "" when k is absent
                self.params.pop(_param_name(default.expr))
                return Typed(STRING, value)
            return Typed(
                STRING,
                exp.If(this=_map_contains(mapping.expr, key.expr.copy()), true=value, false=default.expr),
            )
        if name == "string":
            self.arity(node, 1)
            arg = self.visit(node.args[0])
            if arg.type not in (STRING, INT, DOUBLE, BOOL):
                raise self.error(f"string() cannot convert a {arg.type}", node.args[0])
            if arg.type == BOOL:
                return Typed(
                    STRING,
                    exp.If(this=arg.expr, true=exp.Literal.string("true"), false=exp.Literal.string("false")),
                )
            return Typed(STRING, _fn("toString", arg.expr))
        if name in ("int", "double"):
            self.arity(node, 1)
            arg = self.visit(node.args[0])
            target = INT if name == "int" else DOUBLE
            if arg.type == STRING:
                return Typed(target, _fn("toInt64OrZero" if name == "int" else "toFloat64OrZero", arg.expr))
            if arg.type in NUMERIC:
                return Typed(target, _fn("toInt64" if name == "int" else "toFloat64", arg.expr))
            if arg.type == TIMESTAMP and name == "int":  # CEL: seconds since the epoch
                return Typed(INT, _fn("toInt64", _fn("toUnixTimestamp", arg.expr)))
            raise self.error(f"{name}() cannot convert a {arg.type}", node.args[0])
        if name == "matches":
            self.arity(node, 2)
            target, arg = self.visit(node.args[0]), self.visit(node.args[1])
            self.expect(target, STRING, node.args[0], "the text to match")
            self.expect(arg, STRING, node.args[1], "a regular expression")
            return self.string_test("matches", target, arg, node.args[1])
        if name in MACROS or name in STRING_METHODS:
            raise self.error(f"{name}() is a method: write x.{name}(...)", node)
        close = difflib.get_close_matches(name, sorted(GLOBAL_FUNCTIONS), n=1)
        hint = f": did you mean {close[0]}()?" if close else ""
        raise self.error(f"unknown function {name}(){hint}", node)

    def size(self, target: Typed, node: Node) -> Typed:
        if target.type == STRING:
            return Typed(INT, _fn("toInt64", _fn("lengthUTF8", target.expr)))  # CEL counts code points
        if target.type.startswith("list<") or target.type == MAP_STRING:
            return Typed(INT, _fn("toInt64", _fn("length", target.expr)))
        raise self.error(f"size() needs a string, list or map, but this is a {target.type}", node)

    def macro(self, node: Call) -> Typed:
        assert node.target is not None
        if len(node.args) != 2 or not isinstance(node.args[0], Ident):
            raise self.error(f".{node.name}(x, predicate) takes a variable name and an expression", node)
        collection = self.visit(node.target)
        if collection.type.startswith("list<"):
            element, source = element_of(collection.type), collection.expr
        elif collection.type == MAP_STRING:  # CEL macros over a map range over its keys
            element, source = STRING, _fn("mapKeys", collection.expr)
        else:
            raise self.error(
                f".{node.name}() needs a list or a map, but this is a {collection.type}", node.target
            )
        # The SQL lambda variable is generated: the user's name never reaches the SQL text.
        sql_name = f"_v{self.lambda_count}"
        self.lambda_count += 1
        self.scope.append({node.args[0].name: (sql_name, element)})
        try:
            body = self.visit(node.args[1])
        finally:
            self.scope.pop()
        lam = exp.Lambda(this=body.expr, expressions=[exp.to_identifier(sql_name)])
        if node.name == "map":
            return Typed(list_of(body.type), _fn("arrayMap", lam, source))
        self.expect(body, BOOL, node.args[1], f"the predicate of .{node.name}()")
        if node.name == "exists":
            return Typed(BOOL, _fn("arrayExists", lam, source))
        if node.name == "all":
            return Typed(BOOL, _fn("arrayAll", lam, source))
        if node.name == "exists_one":
            return Typed(BOOL, exp.EQ(this=_fn("arrayCount", lam, source), expression=exp.Literal.number(1)))
        return Typed(list_of(element), _fn("arrayFilter", lam, source))

    # --- operators -----------------------------------------------------------------------------------
    def unary(self, node: Unary) -> Typed:
        operand = self.visit(node.operand)
        if node.op == "!":
            self.expect(operand, BOOL, node.operand, "the operand of !")
            return Typed(BOOL, exp.Not(this=_paren_if_needed(operand.expr)))
        if operand.type not in (INT, DOUBLE, DURATION):
            raise self.error(f"cannot negate a {operand.type}", node)
        if operand.is_const:
            self.params.pop(_param_name(operand.expr), None)
            return self.const(operand.type, -operand.const)
        return Typed(operand.type, exp.Neg(this=_paren_if_needed(operand.expr)))

    def binary(self, node: Binary) -> Typed:
        op = node.op
        if op in ("&&", "||"):
            left, right = self.visit(node.left), self.visit(node.right)
            self.expect(left, BOOL, node.left, f"the left side of {op}")
            self.expect(right, BOOL, node.right, f"the right side of {op}")
            cls = exp.And if op == "&&" else exp.Or
            return Typed(BOOL, cls(this=_paren_if_needed(left.expr), expression=_paren_if_needed(right.expr)))
        if op == "in":
            return self.membership(node)
        left, right = self.visit(node.left), self.visit(node.right)
        if op in COMPARE_OPS:
            return self.compare(op, left, right, node)
        return self.arithmetic(op, left, right, node)

    def compare(self, op: str, left: Typed, right: Typed, node: Binary) -> Typed:
        if not _comparable(left.type, right.type):
            hint = ""
            if STRING in (left.type, right.type) and INT in (left.type, right.type):
                hint = " (quote numbers only when the field is a string; status_code is an int)"
            raise self.error(f"cannot compare {left.type} with {right.type} using {op}{hint}", node)
        if op not in ("==", "!=") and left.type not in ORDERED:
            raise self.error(f"{left.type} values have no order: {op} does not apply", node)
        if left.type == MAP_STRING:
            raise self.error("maps cannot be compared with == or !=; test keys with `in` or map[key]", node)
        if op in ("==", "!="):
            left, right = self.special_equality(left, right), self.special_equality(right, left)
        left, right = _raw_number(left, right), _raw_number(right, left)
        cls = COMPARE_OPS[op]
        return Typed(BOOL, cls(this=_paren_if_needed(left.expr), expression=_paren_if_needed(right.expr)))

    def special_equality(self, side: Typed, other: Typed) -> Typed:
        """Rewrite a field compared with a constant so the comparison is exact and index-friendly:
        an IP field compares the raw IPv6 column; the protocol compares the lowercase stored value."""
        if side.field is None or not other.is_const or other.type != STRING:
            return side
        name = _param_name(other.expr)
        if side.field.ip_column:
            parsed = _parse_ip(other.const)
            if parsed is not None:
                self.params[name] = parsed
                other.expr.set("kind", _data_type("IPv6"))
                return Typed(side.type, exp.column(side.field.ip_column), field=side.field)
        if side.field.name == "protocol":
            self.params[name] = other.const.lower()
        return side

    def membership(self, node: Binary) -> Typed:
        left = self.visit(node.left)
        if isinstance(node.right, ListExpr) and node.right.items:
            items = [self.visit(item) for item in node.right.items]
            for item, item_node in zip(items, node.right.items, strict=True):
                if not _comparable(left.type, item.type):
                    raise self.error(
                        f"cannot look for a {left.type} in a list holding {item.type}", item_node
                    )
            if all(item.is_const for item in items) and left.type in (STRING, INT, DOUBLE):
                lhs = left.expr
                known = left.field
                if known is not None and known.ip_column and all(_parse_ip(i.const) for i in items):
                    for item in items:  # every item is an address: compare the raw column (bloom index)
                        self.params[_param_name(item.expr)] = _parse_ip(item.const)
                        item.expr.set("kind", _data_type("IPv6"))
                    lhs = exp.column(known.ip_column)
                elif known is not None and known.name == "protocol":
                    for item in items:
                        self.params[_param_name(item.expr)] = item.const.lower()
                return Typed(BOOL, exp.In(this=_paren_if_needed(lhs), expressions=[i.expr for i in items]))
            array = exp.Array(expressions=[i.expr for i in items])
            return Typed(BOOL, _fn("has", array, left.expr))
        right = self.visit(node.right)
        if (
            right.field is not None
            and right.field.any_of
            and left.is_const
            and left.type == STRING
            and left.const
        ):
            # `"prod" in namespaces` as `src_namespace = p OR dst_namespace = p`: the set index can skip.
            tests = [exp.EQ(this=exp.column(c), expression=left.expr) for c in right.field.any_of]
            return Typed(BOOL, exp.Paren(this=exp.or_(*tests)))
        if right.type == MAP_STRING:
            self.expect(left, STRING, node.left, "a map key")
            return Typed(BOOL, _map_contains(right.expr, left.expr))
        if right.type.startswith("list<"):
            element = element_of(right.type)
            if element != "dyn" and not _comparable(left.type, element):
                raise self.error(f"cannot look for a {left.type} in a {right.type}", node)
            if isinstance(node.right, ListExpr):  # x in []
                return Typed(BOOL, exp.false())
            return Typed(BOOL, _fn("has", right.expr, left.expr))
        raise self.error(f"`in` needs a list or a map on its right, but this is a {right.type}", node.right)

    def arithmetic(self, op: str, left: Typed, right: Typed, node: Binary) -> Typed:
        lt, rt = left.type, right.type
        if lt in NUMERIC and rt in NUMERIC:
            kind = DOUBLE if DOUBLE in (lt, rt) else INT
            if op == "/" and kind == INT:  # CEL integer division truncates; division by zero gives 0 here
                return Typed(INT, _fn("intDivOrZero", left.expr, right.expr))
            if op == "%":
                if kind == DOUBLE:
                    raise self.error("% applies to integers only", node)
                return Typed(INT, _fn("moduloOrZero", left.expr, right.expr))
            if op == "/":
                return Typed(
                    DOUBLE, exp.Div(this=_paren_if_needed(left.expr), expression=_paren_if_needed(right.expr))
                )
            cls = {"+": exp.Add, "-": exp.Sub, "*": exp.Mul}[op]
            # `a - b - c` needs no brackets around `a - b`: without them the SQL of a long chain stays flat
            # (with them, 50 terms nested past the recursion limit of sqlglot's parser: fuzz/kfl)
            chained = (exp.Add, exp.Sub) if cls in (exp.Add, exp.Sub) else (exp.Mul,)
            lhs = left.expr if isinstance(left.expr, chained) else _paren_if_needed(left.expr)
            return Typed(kind, cls(this=lhs, expression=_paren_if_needed(right.expr)))
        if op == "+" and lt == rt == STRING:
            return Typed(STRING, _fn("concat", left.expr, right.expr))
        if op == "+" and lt.startswith("list<") and lt == rt:
            return Typed(lt, _fn("arrayConcat", left.expr, right.expr))
        if (
            op in "+-" and (lt, rt) in ((TIMESTAMP, DURATION), (DURATION, DURATION), (DURATION, TIMESTAMP))
        ) or (op == "-" and lt == rt == TIMESTAMP):
            return self.time_arithmetic(op, left, right, node)
        raise self.error(f"cannot apply {op} to {lt} and {rt}", node)

    def time_arithmetic(self, op: str, left: Typed, right: Typed, node: Binary) -> Typed:
        if op == "-" and right.type == TIMESTAMP and left.type == DURATION:
            raise self.error("cannot subtract a timestamp from a duration", node)
        result = DURATION if left.type == right.type else TIMESTAMP
        if left.is_const and right.is_const:  # fold `now() - duration("5m")` into one parameter
            self.params.pop(_param_name(_placeholder(left.expr)), None)
            self.params.pop(_param_name(_placeholder(right.expr)), None)
            value = left.const + right.const if op == "+" else left.const - right.const
            if not MIN_TIME_NS <= value <= MAX_TIME_NS:
                raise self.error(f"the {result} is out of range: times lie between 1677 and 2262", node)
            return self.const(result, value)
        lhs = _fn("toUnixTimestamp64Nano", left.expr) if left.type == TIMESTAMP else left.expr
        rhs = _fn("toUnixTimestamp64Nano", right.expr) if right.type == TIMESTAMP else right.expr
        cls = exp.Add if op == "+" else exp.Sub
        value_ns = cls(this=_paren_if_needed(lhs), expression=_paren_if_needed(rhs))
        if result == DURATION:
            return Typed(DURATION, value_ns)
        return Typed(TIMESTAMP, _fn("fromUnixTimestamp64Nano", value_ns))

    def conditional(self, node: Cond) -> Typed:
        cond, then, other = self.visit(node.cond), self.visit(node.then), self.visit(node.other)
        self.expect(cond, BOOL, node.cond, "the condition of ?:")
        if not _comparable(then.type, other.type):
            raise self.error(
                f"both branches of ?: must have one type, not {then.type} and {other.type}", node.other
            )
        kind = DOUBLE if {then.type, other.type} == {INT, DOUBLE} else then.type
        return Typed(kind, exp.If(this=cond.expr, true=then.expr, false=other.expr))

    def list_expr(self, node: ListExpr) -> Typed:
        if not node.items:
            return Typed(list_of("dyn"), exp.Array(expressions=[]))
        items = [self.visit(i) for i in node.items]
        kind = items[0].type
        for item, item_node in zip(items, node.items, strict=True):
            if not _comparable(item.type, kind):
                raise self.error(f"a list holds one type: {item.type} among {kind}", item_node)
            if item.type.startswith(("list<", "map<")):
                raise self.error("lists of lists or maps are not supported", item_node)
        if {i.type for i in items} == {INT, DOUBLE}:
            kind = DOUBLE
        return Typed(list_of(kind), exp.Array(expressions=[i.expr for i in items]))

    # --- checks --------------------------------------------------------------------------------------
    def expect(self, value: Typed, kind: str, node: Node, what: str) -> None:
        if value.type != kind and not (kind == DOUBLE and value.type == INT):
            raise self.error(f"{what} must be a {kind}, but this is a {value.type}", node)

    def arity(self, node: Call, count: int) -> None:
        if len(node.args) != count:
            raise self.error(
                f"{node.name}() takes {count} argument{'s' if count != 1 else ''}, got {len(node.args)}", node
            )


_TO_INT64 = re.compile(r"^toInt64\((\w+)\)$")


def _raw_number(side: Typed, other: Typed) -> Typed:
    """A numeric field compared with a constant compares its own column (`status_code >= 500`, not
    `toInt64(status_code) >= 500`): no per-row conversion, and the comparison stays exact for UInt64."""
    if side.field is None or not other.is_const or other.type not in NUMERIC:
        return side
    match = _TO_INT64.match(side.field.sql)
    return Typed(side.type, exp.column(match.group(1)), field=side.field) if match else side


def _comparable(a: str, b: str) -> bool:
    if a == b:
        return True
    if a in NUMERIC and b in NUMERIC:
        return True
    return "list<dyn>" in (a, b) and (a.startswith("list<") and b.startswith("list<"))


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _add(expr: exp.Expression, number: int) -> exp.Expression:
    return exp.Add(this=_paren_if_needed(expr), expression=exp.Literal.number(number))


def _paren_if_needed(expr: exp.Expression) -> exp.Expression:
    # sqlglot prints trees as built: keep the KFL grouping explicit wherever an operator nests.
    if isinstance(expr, exp.Binary | exp.Not | exp.Neg | exp.In | exp.Like | exp.Lambda):
        return exp.Paren(this=expr)
    return expr


def _bracket(mapping: exp.Expression, key: exp.Expression) -> exp.Expression:
    """map[key]; for `if(c, m1, m2)` (local/remote labels) `if(c, m1[key], m2[key])`, so the engine looks
    the key up in each column instead of building a whole map per row first."""
    if isinstance(mapping, exp.If) and not mapping.args.get("expressions"):
        return exp.If(
            this=mapping.this,
            true=_bracket(mapping.args["true"], key.copy()),
            false=_bracket(mapping.args["false"], key.copy()),
        )
    if isinstance(mapping, exp.Column) and not mapping.table:
        # m.values[indexOf(m.keys, k)]: half the cost of m[k] measured on 10M rows (0 -> "" when absent)
        return _fn(
            "arrayElement", _subcolumn(mapping, "values"), _fn("indexOf", _subcolumn(mapping, "keys"), key)
        )
    return exp.Bracket(this=_paren_unless_column(mapping), expressions=[key])


def _subcolumn(column: exp.Column, name: str) -> exp.Expression:
    return exp.Column(this=exp.to_identifier(name), table=exp.to_identifier(column.name))


def _map_contains(mapping: exp.Expression, key: exp.Expression) -> exp.Expression:
    """key in map: has(m.keys, k) reads only the keys subcolumn (mapContains reads the whole map)."""
    if isinstance(mapping, exp.If) and not mapping.args.get("expressions"):
        return exp.If(
            this=mapping.this,
            true=_map_contains(mapping.args["true"], key.copy()),
            false=_map_contains(mapping.args["false"], key.copy()),
        )
    if isinstance(mapping, exp.Column) and not mapping.table:
        return _fn("has", _subcolumn(mapping, "keys"), key)
    return _fn("mapContains", mapping, key)


def _paren_unless_column(expr: exp.Expression) -> exp.Expression:
    return expr if isinstance(expr, exp.Column | exp.Identifier) else exp.Paren(this=expr)


def _placeholder(expr: exp.Expression) -> exp.Expression:
    found = expr if isinstance(expr, exp.Placeholder) else expr.find(exp.Placeholder)
    assert found is not None
    return found


def _param_name(expr: exp.Expression) -> str:
    return _placeholder(expr).this.name


@lru_cache(maxsize=64)
def _data_type_cached(ch_type: str) -> exp.DataType:
    return exp.DataType.build(ch_type, dialect="clickhouse")


def _data_type(ch_type: str) -> exp.DataType:
    return _data_type_cached(ch_type).copy()


@lru_cache(maxsize=512)
def _parse_sql_cached(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="clickhouse")


def _parse_sql(sql: str) -> exp.Expression:
    return _parse_sql_cached(sql).copy()


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _parse_ip(text: str) -> str | None:
    """The literal as the IPv6 form the column stores (IPv4 v4-mapped), or None when it is not an IP."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return f"::ffff:{address}"
    return str(address)


def referenced_names(node: Node | None) -> set[str]:
    """Every identifier in the tree (used to route L4 flag filters to `flows`)."""
    found: set[str] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, Ident):
            found.add(current.name)
        for value in vars(current).values():
            if isinstance(value, Node):
                stack.append(value)
            elif isinstance(value, tuple):
                stack.extend(v for v in value if isinstance(v, Node))
    return found


def compile_filter(text: str, table: str = "api_calls", *, now_ns: int | None = None) -> KflFilter:
    """Compile KFL text into a WHERE expression over `table` (api_calls, or flows for L4 `conn`/`flow`
    filters: a filter naming an L4-only flag is routed to `flows` whatever `table` says).

    An empty or blank filter means everything (`where = "1"`). Errors raise KflError with a caret line.
    """
    tree, legacy_words = parse_with_notes(text)
    if table not in CATALOGUES:
        raise NetrecallError(f"KFL filters apply to {', '.join(CATALOGUES)}, not {table!r}")
    if tree is None:
        return KflFilter("1", {}, table)
    if table == "api_calls" and referenced_names(tree) & FLOW_ONLY_FLAGS:
        table = "flows"
    compiler = Compiler(text, table, now_ns)
    typed = compiler.visit(tree)
    if typed.type != BOOL:
        raise KflError(f"a filter must be a condition (true or false), but this is a {typed.type}", text, 0)
    notes = [
        f"{word!r} is Kubeshark's legacy spelling: KFL2 writes {_LEGACY_OPS[word]}"
        for word, _ in legacy_words
    ] + compiler.notes
    where = typed.expr.sql(dialect="clickhouse")
    return KflFilter(where, compiler.params, table, tuple(dict.fromkeys(notes)), typed.expr)


__all__ = ["LIST_STRING", "KflFilter", "compile_filter", "referenced_names"]
