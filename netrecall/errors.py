"""The one exception type that reaches users: a single line saying what broke and where."""


class NetrecallError(Exception):
    """An error the user can act on. The message is one line; the CLI prints it without a traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
