"""The `netrecall` command: one typer app; each command group lives in its own module and registers itself."""

from __future__ import annotations

import gc
import logging
import os
import sys

import typer

from netrecall.errors import NetrecallError

app = typer.Typer(
    name="netrecall",
    help="Network flight recorder for Kubernetes: packets, flows and API calls in ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module has `register(app)`; the order is the order of `netrecall --help`.
_COMMAND_MODULES = [
    "imports",
    "dissect",
    "query",
    "rootcause",
    "export",
    "snapshot",
    "retention",
    "schema",
    "storeinfo",
    "agent",
    "serve",
    "demo",
]


def _register_commands() -> None:
    import importlib

    for module_name in _COMMAND_MODULES:
        importlib.import_module(f"netrecall.cli.{module_name}").register(app)


def program() -> int:
    """The `netrecall` program (console script and `python -m netrecall`): main(), then the exit."""
    code = main()
    # The process ends here: spare the interpreter's exit a garbage collection over every object numpy,
    # pyarrow, pandas and the driver created (~0.15 s); stores and files are closed by now.
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure is one line on stderr and a non-zero exit, never a traceback."""
    _register_commands()
    # The ClickHouse driver logs its failures before raising them; the raised error is what users see.
    logging.getLogger("clickhouse_connect").addHandler(logging.NullHandler())
    try:
        app(args=argv, standalone_mode=False)
    except NetrecallError as exc:
        print(f"netrecall: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("netrecall: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors: typer vendors click, these are its exceptions
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        print("netrecall: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug of ours: still one line for the user, the traceback on request
        if os.environ.get("NETRECALL_DEBUG"):
            raise
        print(
            f"netrecall: internal error: {type(exc).__name__}: {exc} "
            "(set NETRECALL_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(program())
