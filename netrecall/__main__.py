"""`python -m netrecall` runs the CLI."""

import sys

from netrecall.cli import main

sys.exit(main())
