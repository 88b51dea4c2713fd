"""netrecall: a network flight recorder for Kubernetes, stored in ClickHouse."""

import os

# numpy's OpenBLAS starts (and spins) a thread per core when imported; netrecall does no linear algebra,
# and those threads cost ~0.1 s of CPU at every start.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
