"""A precedence-climbing (Pratt) parser for KFL, following CEL's grammar:

expr     = or ['?' or ':' expr]
or       = and {'||' and}
and      = relation {'&&' relation}
relation = addition {('<' | '<=' | '>=' | '>' | '==' | '!=' | 'in') addition}
addition = multiplication {('+' | '-') multiplication}
multiplication = unary {('*' | '/' | '%') unary}
unary    = member | '!' {'!'} member | '-' {'-'} member
member   = primary {'.' IDENT ['(' args ')'] | '[' expr ']'}
primary  = IDENT ['(' args ')'] | '(' expr ')' | '[' list ']' | literal
"""

from __future__ import annotations

from netrecall.query.kfl.errors import KflError
from netrecall.query.kfl.lexer import RESERVED, Token, tokenize
from netrecall.query.kfl.nodes import Binary, Call, Cond, Ident, Index, ListExpr, Literal, Node, Select, Unary

# Binding power of each binary operator: higher binds tighter.
BINARY_PRECEDENCE = {
    "||": 1,
    "&&": 2,
    "==": 3,
    "!=": 3,
    "<": 3,
    "<=": 3,
    ">": 3,
    ">=": 3,
    "in": 3,
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
}
MAX_DEPTH = 64  # deeper nesting is refused: parsing, compiling and SQL printing recurse over the tree


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0
        self.legacy: list[tuple[str, int]] = []  # (spelling, position) of and/or/not words seen

    # --- token helpers -------------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if self.index < len(self.tokens) - 1:
            self.index += 1
        if token.kind == "op" and token.text in ("and", "or", "not"):
            self.legacy.append((token.text, token.pos))
        return token

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def expect_op(self, op: str, what: str) -> Token:
        if not self.is_op(op):
            raise self.error(f"expected '{op}' {what}, found {self.describe(self.tok)}")
        return self.advance()

    def error(self, reason: str, pos: int | None = None) -> KflError:
        return KflError(reason, self.text, self.tok.pos if pos is None else pos)

    @staticmethod
    def describe(token: Token) -> str:
        if token.kind == "eof":
            return "the end of the filter"
        return f"{token.text or token.value!r}" if token.kind != "string" else "a string"

    # --- grammar -------------------------------------------------------------------------------------
    def parse(self) -> Node:
        node = self.expr()
        if self.tok.kind != "eof":
            hint = ""
            if self.tok.kind in ("ident", "string", "int", "double") or self.is_op("("):
                hint = ": join conditions with && or ||"
            raise self.error(f"unexpected {self.describe(self.tok)}{hint}")
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"filter nested too deeply (more than {MAX_DEPTH} levels)")
        try:
            cond = self.binary(1)
            if self.is_op("?"):
                pos = self.advance().pos
                then = self.binary(1)
                self.expect_op(":", "in a conditional (cond ? a : b)")
                other = self.expr()
                return Cond(pos, cond, then, other)
            return cond
        finally:
            self.depth -= 1

    def binary(self, min_precedence: int) -> Node:
        left = self.unary()
        while True:
            token = self.tok
            op = (
                token.value
                if token.kind == "op"
                else ("in" if token.kind == "kw" and token.value == "in" else None)
            )
            precedence = BINARY_PRECEDENCE.get(op) if isinstance(op, str) else None
            if precedence is None or precedence < min_precedence:
                return left
            self.advance()
            right = self.binary(precedence + 1)  # left-associative
            if op not in ("&&", "||"):
                left = Binary(token.pos, op, left, right)
                continue
            # A long `a && b && c ...` chain becomes a balanced tree (same meaning: the operators are
            # associative), so thousands of terms do not nest thousands deep.
            operands, positions = [left, right], [token.pos]
            while self.is_op(op):
                positions.append(self.advance().pos)
                operands.append(self.binary(precedence + 1))
            left = _balanced(op, operands, positions)

    def unary(self) -> Node:
        if self.is_op("!", "-"):
            token = self.advance()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"filter nested too deeply (more than {MAX_DEPTH} levels)")
            try:
                # KFL v1's `not` governs a whole comparison (`not a == b`); CEL's `!` binds tightest.
                operand = self.binary(BINARY_PRECEDENCE["=="]) if token.text == "not" else self.unary()
            finally:
                self.depth -= 1
            if token.value == "-" and isinstance(operand, Literal) and operand.kind in ("int", "double"):
                return Literal(token.pos, -operand.value, operand.kind)  # fold negative literals
            return Unary(token.pos, str(token.value), operand)
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.is_op("."):
                self.advance()
                name_tok = self.tok
                if name_tok.kind != "ident":
                    raise self.error(
                        f"expected a field or method name after '.', found {self.describe(name_tok)}"
                    )
                self.advance()
                if self.is_op("("):
                    args = self.arguments()
                    node = Call(name_tok.pos, node, str(name_tok.value), args)
                else:
                    node = Select(node.pos, node, str(name_tok.value))
            elif self.is_op("["):
                pos = self.advance().pos
                index = self.expr()
                self.expect_op("]", "to close the index")
                node = Index(pos, node, index)
            else:
                return node

    def arguments(self) -> tuple[Node, ...]:
        self.expect_op("(", "")
        args: list[Node] = []
        if not self.is_op(")"):
            args.append(self.expr())
            while self.is_op(","):
                self.advance()
                args.append(self.expr())
        self.expect_op(")", "to close the argument list")
        return tuple(args)

    def primary(self) -> Node:
        token = self.tok
        if token.kind == "ident":
            if token.value in RESERVED:
                raise self.error(f"{token.value!r} is a reserved word")
            self.advance()
            if self.is_op("("):
                return Call(token.pos, None, str(token.value), self.arguments())
            return Ident(token.pos, str(token.value))
        if token.kind in ("string", "int", "uint", "double"):
            self.advance()
            return Literal(token.pos, token.value, token.kind)
        if token.kind == "kw":
            if token.value in ("true", "false"):
                self.advance()
                return Literal(token.pos, token.value == "true", "bool")
            if token.value == "null":
                self.advance()
                return Literal(token.pos, None, "null")
        if self.is_op("("):
            self.advance()
            node = self.expr()
            self.expect_op(")", "to close the parenthesis")
            return node
        if self.is_op("["):
            self.advance()
            items: list[Node] = []
            if not self.is_op("]"):
                items.append(self.expr())
                while self.is_op(","):
                    self.advance()
                    if self.is_op("]"):
                        break  # CEL allows a trailing comma
                    items.append(self.expr())
            self.expect_op("]", "to close the list")
            return ListExpr(token.pos, tuple(items))
        if self.is_op("{"):
            raise self.error("map literals are not supported in KFL filters")
        if token.kind == "eof":
            raise self.error("the filter ends too early: expected a value")
        raise self.error(f"unexpected {self.describe(token)}: expected a value")


def _balanced(op: str, operands: list[Node], positions: list[int]) -> Node:
    if len(operands) == 1:
        return operands[0]
    middle = len(operands) // 2
    return Binary(
        positions[middle - 1],
        op,
        _balanced(op, operands[:middle], positions[: middle - 1]),
        _balanced(op, operands[middle:], positions[middle:]),
    )


def _check_depth(tree: Node, text: str) -> None:
    """Refuse trees deeper than MAX_DEPTH (e.g. `1 + 1 + ...` thousands long): compiling and printing
    SQL recurse over the tree."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise KflError(f"filter nested too deeply (more than {MAX_DEPTH} levels)", text, node.pos)
        for value in vars(node).values():
            if isinstance(value, Node):
                stack.append((value, depth + 1))
            elif isinstance(value, tuple):
                stack.extend((v, depth + 1) for v in value if isinstance(v, Node))


def parse(text: str) -> Node | None:
    """Parse KFL text to its syntax tree; None for an empty or blank filter (meaning everything)."""
    return parse_with_notes(text)[0]


def parse_with_notes(text: str) -> tuple[Node | None, list[tuple[str, int]]]:
    """The tree plus the legacy words (and/or/not) it used, with their positions."""
    parser = Parser(text)
    if parser.tok.kind == "eof":
        return None, []
    tree = parser.parse()
    _check_depth(tree, text)
    return tree, parser.legacy
