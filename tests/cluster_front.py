"""The ClickHouse HTTP front (tests/chfront.py) on a chDB engine started with a cluster in its config,
recording every statement it receives: how tests/test_cluster.py runs netrecall's cluster paths on a
real Distributed engine.

`remote_servers` defines cluster CLUSTER with one shard whose replica is this very server
(localhost:9000 with tcp_port 9000), so ClickHouse treats the shard as local and executes Distributed
reads and inserts in-process — no network, no second server. Replicated engines and ON CLUSTER DDL
need ClickHouse Keeper, which chDB does not run: the test says what it substitutes.

    python tests/cluster_front.py --path DIR --port P --log FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import chdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chfront import ChFront, Request

CLUSTER = "nr"
CONFIG = f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <{CLUSTER}>
      <shard><replica><host>localhost</host><port>9000</port></replica></shard>
    </{CLUSTER}>
  </remote_servers>
  <macros><shard>01</shard><replica>r1</replica></macros>
</clickhouse>
"""


class RecordingFront(ChFront):
    """Appends each request's statement (the URL query or the body's text head) and settings to a log."""

    def __init__(self, path: Path, port: int, log: Path) -> None:
        super().__init__(path, port=port)
        self.log = log
        self._log_lock = threading.Lock()

    def execute(self, request: Request):
        statement = request.params.get("query")
        if statement is None:
            statement = request.body[:4000].decode("utf-8", "replace")
        settings = {k: v for k, v in request.params.items() if k not in ("query", "database") and "_" in k}
        with self._log_lock, self.log.open("a") as out:
            out.write(json.dumps({"sql": statement, "settings": settings}) + "\n")
        return super().execute(request)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    path = Path(args.path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path.parent / "cluster-config.xml"
    config.write_text(CONFIG)
    # the first handle starts the engine with the config; the front's handles share that engine
    keep = chdb.connect(f"{path}?config-file={config}")
    front = RecordingFront(path, args.port, Path(args.log))
    print(f"listening on {front.url}", flush=True)
    try:
        front.server.serve_forever()
    finally:
        keep.close()


if __name__ == "__main__":
    main()
