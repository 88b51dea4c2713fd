"""The grafana-clickhouse-datasource plugin's query expansion, reproduced to run dashboard SQL here.

Source of truth: the plugin's own code (grafana/clickhouse-datasource). In the browser,
`applyTemplateVariables` (src/data/CHDatasource.ts) first rewrites `$__conditionalAll(cond, $var)` —
to `1=1` when the variable's value is '' or '$__all' — then Grafana's template service replaces
variables, the plugin's formatter joining multi-values as 'a','b'. On the server, pkg/macros/macros.go
expands, through grafana/sqlds (regex `\\$__name(?:\\((.*?)\\))?`, arguments split on commas and trimmed):
  $__timeFilter(c)   -> c >= toDateTime(FROM) AND c <= toDateTime(TO)   (Unix seconds)
  $__fromTime / $__toTime -> toDateTime(FROM) / toDateTime(TO)
  $__timeInterval(c) -> toStartOfInterval(toDateTime(c), INTERVAL N second), N = max(interval, 1)
  $__interval_s      -> N
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ALL = "$__all"


@dataclass
class QueryContext:
    from_s: int
    to_s: int
    interval_s: float
    variables: dict[str, list[str]] = field(default_factory=dict)  # name -> selected values ([ALL] = All)


def _macro_args(sql: str, open_paren: int) -> list[str]:
    """CHDatasource.getMacroArgs: split at commas of bracket depth 1, up to the matching ')'."""
    args: list[str] = []
    depth = 0
    last = open_paren + 1
    for match in re.finditer(r"[(),]", sql[open_paren:]):
        token, at = match.group(0), open_paren + match.start()
        depth += token == "("
        depth -= token == ")"
        if token == "," and depth == 1:
            args.append(sql[last:at])
            last = at + 1
        if depth == 0:
            args.append(sql[last:at])
            return args
    return []


def apply_conditional_all(sql: str, variables: dict[str, list[str]]) -> str:
    macro = "$__conditionalAll("
    at = sql.rfind(macro)
    while at != -1:
        args = _macro_args(sql, at + len(macro) - 1)
        if len(args) != 2:
            return sql
        name = args[1].strip()[1:]
        value = ",".join(variables.get(name, [""]))
        phrase = "1=1" if value in ("", ALL) else args[0]
        sql = sql.replace(f"{macro}{args[0]},{args[1]})", phrase, 1)
        at = sql.rfind(macro)
    return sql


def _quote(values: list[str]) -> str:
    return ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


def replace_variables(sql: str, variables: dict[str, list[str]]) -> str:
    """Grafana's template service: `${name:singlequote}` and, through the plugin's formatter, `$name`."""

    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            return match.group(0)
        return _quote(variables[name])

    return re.sub(r"\$\{(\w+)(?::singlequote)?\}|\$(\w+)", one, sql)


def _time_filter(ctx: QueryContext, args: list[str]) -> str:
    (column,) = args
    return f"{column} >= toDateTime({ctx.from_s}) AND {column} <= toDateTime({ctx.to_s})"


def _time_interval(ctx: QueryContext, args: list[str]) -> str:
    (column,) = args
    return f"toStartOfInterval(toDateTime({column}), INTERVAL {int(max(ctx.interval_s, 1))} second)"


BACKEND_MACROS = {
    "fromTime": lambda ctx, args: f"toDateTime({ctx.from_s})",
    "toTime": lambda ctx, args: f"toDateTime({ctx.to_s})",
    "timeFilter": _time_filter,
    "timeInterval": _time_interval,
    "interval_s": lambda ctx, args: str(int(max(ctx.interval_s, 1))),
}


def expand_backend(sql: str, ctx: QueryContext) -> str:
    for name, expand in BACKEND_MACROS.items():
        for match in re.finditer(rf"\$__{name}(?:\((.*?)\))?", sql):
            args = [a.strip() for a in match.group(1).split(",")] if match.group(1) is not None else []
            sql = sql.replace(match.group(0), expand(ctx, args))
    return sql


def expand(sql: str, ctx: QueryContext) -> str:
    """What ClickHouse receives for a panel's rawSql."""
    return expand_backend(replace_variables(apply_conditional_all(sql, ctx.variables), ctx.variables), ctx)
