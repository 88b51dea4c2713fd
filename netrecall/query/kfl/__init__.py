"""KFL, Kubeshark's filter language (KFL2, CEL syntax), compiled to ClickHouse SQL through sqlglot.

`parse(text)` gives the syntax tree; `compile_filter(text, table)` gives a `KflFilter` whose `where` is a
ClickHouse boolean expression with every literal bound as a `{pN:Type}` parameter (values in `params`).
"""

from netrecall.query.kfl.catalogue import CATALOGUES, LEGACY_ALIASES, Field
from netrecall.query.kfl.compiler import KflFilter, compile_filter
from netrecall.query.kfl.errors import KflError
from netrecall.query.kfl.parser import parse

__all__ = ["CATALOGUES", "LEGACY_ALIASES", "Field", "KflError", "KflFilter", "compile_filter", "parse"]
