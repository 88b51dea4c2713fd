"""`python -m netrecall` runs the CLI."""

import sys

from netrecall.cli import program

sys.exit(program())
