"""The one exception type that reaches users: a single line saying what broke and where."""

# What str.splitlines() breaks a line at: a message quoting user input (a table name, a header, a path)
# shows these escaped, so it stays one line (fuzz/sqlguard: a refusal quoted `"url\xff\n..."` whole).
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class NetrecallError(Exception):
    """An error the user can act on. The message is one line; the CLI prints it without a traceback.

    `excerpt` is for errors that point into text the user typed (a KFL filter): lines of that text
    with a caret under the fault, shown below the message as they are.
    """

    def __init__(self, message: str, exit_code: int = 2, excerpt: str = "") -> None:
        one_line = message.translate(_LINE_BREAKS)
        super().__init__(f"{one_line}\n{excerpt}" if excerpt else one_line)
        self.exit_code = exit_code
