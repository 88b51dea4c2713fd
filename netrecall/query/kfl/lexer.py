"""KFL tokens, following CEL's lexical grammar (strings with escapes, raw and triple-quoted strings,
decimal/hex ints, uints, doubles), plus Kubeshark's legacy `and`/`or`/`not` words."""

from __future__ import annotations

import re
from dataclasses import dataclass

from netrecall.query.kfl.errors import KflError

KEYWORDS = {"true", "false", "null", "in"}
LEGACY_WORDS = {"and": "&&", "or": "||", "not": "!"}  # KFL v1 spellings, accepted with a note
# CEL reserves these; using one as a field name is an error in CEL too.
RESERVED = {
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
}

OPERATORS = [
    "==",
    "!=",
    "<=",
    ">=",
    "&&",
    "||",
    "<",
    ">",
    "!",
    "+",
    "-",
    "*",
    "/",
    "%",
    "?",
    ":",
    ".",
    ",",
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
]

_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F]+[uU]?"
    r"|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "`": "`",
    "?": "?",
}


@dataclass(frozen=True)
class Token:
    kind: str  # 'ident' 'string' 'int' 'uint' 'double' 'op' 'kw' 'eof'
    value: object
    pos: int
    text: str = ""  # the source spelling (for legacy-word notes and messages)


_SURROGATE = re.compile("[\ud800-\udfff]")


def tokenize(text: str) -> list[Token]:
    bad = _SURROGATE.search(text)
    if bad:  # bytes that were not UTF-8 (argv decodes them to lone surrogates): say where, not a traceback
        raise KflError("the filter is not valid UTF-8", text, bad.start())
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if text.startswith("//", i):  # CEL line comment
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        start = i
        if (ch in "rRbB" and i + 1 < n and text[i + 1] in "\"'") or (
            ch in "rRbB" and i + 2 < n and text[i + 1] in "rRbB" and text[i + 2] in "\"'"
        ):
            prefix = ""
            while text[i] in "rRbB":
                prefix += text[i].lower()
                i += 1
            if "b" in prefix:
                raise KflError("bytes literals are not supported in KFL filters", text, start)
            value, i = _read_string(text, i, raw="r" in prefix)
            tokens.append(Token("string", value, start, text[start:i]))
            continue
        if ch in "\"'":
            value, i = _read_string(text, i, raw=False)
            tokens.append(Token("string", value, start, text[start:i]))
            continue
        # ASCII digits only: str.isdigit() is also true for '²' or '٣', which no number pattern matches
        if ch in "0123456789" or (ch == "." and i + 1 < n and text[i + 1] in "0123456789"):
            match = _NUMBER.match(text, i)
            assert match is not None  # a digit always matches
            spelled = match.group(0)
            i = match.end()
            if i < n and (text[i].isalpha() or text[i] == "_"):
                raise KflError(f"malformed number {text[start : i + 1]!r}", text, i)
            tokens.append(_number_token(spelled, start, text))
            continue
        match = _IDENT.match(text, i)
        if match:
            word = match.group(0)
            i = match.end()
            if word in KEYWORDS:
                tokens.append(Token("kw", word, start, word))
            elif word in LEGACY_WORDS:
                tokens.append(Token("op", LEGACY_WORDS[word], start, word))
            else:
                tokens.append(Token("ident", word, start, word))
            continue
        for op in OPERATORS:
            if text.startswith(op, i):
                tokens.append(Token("op", op, start, op))
                i += len(op)
                break
        else:
            if ch == "=":
                raise KflError("unexpected '=': use '==' to compare", text, start)
            if ch in "&|":
                raise KflError(f"unexpected {ch!r}: use '{ch * 2}'", text, start)
            raise KflError(f"unexpected character {ch!r}", text, start)
    tokens.append(Token("eof", None, n, ""))
    return tokens


def _number_token(spelled: str, pos: int, text: str) -> Token:
    unsigned = spelled[-1] in "uU"
    body = spelled[:-1] if unsigned else spelled
    if body[:2].lower() == "0x":
        return Token("uint" if unsigned else "int", int(body, 16), pos, spelled)
    if any(c in body for c in ".eE"):
        if unsigned:
            raise KflError(f"malformed number {spelled!r}: a double cannot be unsigned", text, pos)
        return Token("double", float(body), pos, spelled)
    return Token("uint" if unsigned else "int", int(body), pos, spelled)


def _read_string(text: str, i: int, raw: bool) -> tuple[str, int]:
    """Read a quoted string starting at text[i] (the quote); returns (value, index after it)."""
    start = i
    quote = text[i]
    triple = text.startswith(quote * 3, i)
    delim = quote * 3 if triple else quote
    i += len(delim)
    out: list[str] = []
    n = len(text)
    while True:
        if i >= n:
            raise KflError("unterminated string", text, start)
        if text.startswith(delim, i):
            return "".join(out), i + len(delim)
        ch = text[i]
        if ch == "\n" and not triple:
            raise KflError("unterminated string (newline inside a quoted string)", text, start)
        if ch == "\\" and not raw:
            value, i = _read_escape(text, i)
            out.append(value)
            continue
        out.append(ch)
        i += 1


def _read_escape(text: str, i: int) -> tuple[str, int]:
    """One backslash escape at text[i]: \\n, \\xHH, \\uHHHH, \\UHHHHHHHH, \\ooo (octal)."""
    if i + 1 >= len(text):
        raise KflError("unterminated escape sequence", text, i)
    code = text[i + 1]
    if code in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[code], i + 2
    widths = {"x": 2, "X": 2, "u": 4, "U": 8}
    if code in widths:
        digits = text[i + 2 : i + 2 + widths[code]]
        if len(digits) != widths[code] or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise KflError(f"invalid \\{code} escape: expected {widths[code]} hex digits", text, i)
        value = int(digits, 16)
        if value > 0x10FFFF:
            raise KflError("invalid \\U escape: beyond the last Unicode code point", text, i)
        return chr(value), i + 2 + widths[code]
    if code in "0123":
        digits = text[i + 1 : i + 4]
        if len(digits) == 3 and all(c in "01234567" for c in digits):
            return chr(int(digits, 8)), i + 4
    raise KflError(f"invalid escape sequence '\\{code}'", text, i)
