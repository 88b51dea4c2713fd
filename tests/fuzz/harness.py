"""libFuzzer entry point of one target: `python -m tests.fuzz.harness TARGET [libFuzzer flags] CORPUS...`.

The target's modules are imported under atheris' instrumentation (coverage of the netrecall code the
target exercises, plus sqlglot for the SQL guard), everything else plain. `-timeout=1` makes an input
that takes over a second a hang; a crash leaves its input where `-artifact_prefix` says.
"""

from __future__ import annotations

import sys

DISSECTORS = ("http1", "dns", "redis", "postgresql", "kafka", "http2", "tls")

# The modules each target's coverage is measured on (atheris instruments them as they are imported).
INSTRUMENT = {
    "capture": [
        "netrecall.ingest.capture_file",
        "netrecall.ingest.pcap",
        "netrecall.ingest.pcapng",
        "netrecall.ingest.frames",
    ],
    "decode": ["netrecall.ingest.decode"],
    "tcp": ["netrecall.dissect.tcp"],
    "kfl": ["netrecall.query.kfl"],
    "sqlguard": ["netrecall.query.sqlguard", "sqlglot"],
    "ingest": ["netrecall.hub.ingest", "netrecall.ingest.flows"],
    **{name: ["netrecall.dissect"] for name in DISSECTORS},
}


def main() -> None:
    import atheris

    name = sys.argv[1]
    argv = [sys.argv[0], *sys.argv[2:]]
    with atheris.instrument_imports(include=[*INSTRUMENT[name], "tests.fuzz"]):
        from tests.fuzz import targets

        if name in DISSECTORS:  # the protocol modules (and Kafka's schemas) are imported on first use
            targets.warm_up(name)
        elif name == "kfl":
            targets.kfl(b"http")
        elif name == "sqlguard":
            targets.warm_up(name)
        elif name == "ingest":
            targets.ingest(b"")
    atheris.Setup(argv, targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
