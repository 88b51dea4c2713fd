"""netrecall: a network flight recorder for Kubernetes, stored in ClickHouse."""

__version__ = "0.1.0"
