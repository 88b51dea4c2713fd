"""The programs the incident pods run (stdlib only): `python apps.py server|client` with its JSON config in
the NRRCA_APP environment variable. Each runs inside a pod's network namespace (see record.py).

server: an HTTP/1.1 server on port 8080 answering `GET /<anything>/<id>` after `delay_ms` (or the number
in `delay_file` once that file exists), calling its dependencies first (`calls`: host, path with `{id}`,
timeout, `when`: only for request paths starting with it). A dependency that times out makes it answer
504, a refused or reset connection 502, an upstream 5xx the same class. One connection per call
(`Connection: close`), as many HTTP clients in a cluster do: every call starts with a handshake.

client: the load generator: `rate` requests a second for `duration` seconds, round robin over `targets`,
each request in its own thread so a slow answer does not slow the rate down.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CONFIG: dict[str, Any] = json.loads(os.environ.get("NRRCA_APP", "{}"))
PORT = 8080


def fetch(host: str, path: str, timeout: float) -> int:
    """GET http://host:8080/path: the status, or 504 (timed out) / 502 (refused, reset) from a failure."""
    request = urllib.request.Request(f"http://{host}:{PORT}{path}")
    request.add_header("User-Agent", f"{CONFIG.get('name', 'app')}/1.0")
    request.add_header("Connection", "close")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code
    except TimeoutError:
        return 504
    except urllib.error.URLError as exc:
        return 504 if isinstance(exc.reason, TimeoutError) else 502
    except (ConnectionError, OSError):
        return 502


def _delay_ms() -> float:
    path = CONFIG.get("delay_file")
    if path and Path(path).exists():
        return float(Path(path).read_text().strip() or 0)
    return float(CONFIG.get("delay_ms", 5))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "incident"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        item = self.path.rstrip("/").rsplit("/", 1)[-1]
        status = 200
        for call in CONFIG.get("calls", []):
            if call.get("when") and not self.path.startswith(call["when"]):
                continue
            got = fetch(call["host"], call["path"].replace("{id}", item), float(call.get("timeout", 2)))
            if got >= 500:
                status = 504 if got == 504 else 502
                break
        time.sleep(_delay_ms() / 1000)
        body = json.dumps({"item": item, "by": CONFIG.get("name", "")}).encode()
        body += b" " * int(CONFIG.get("padding", 0))
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the caller gave up and closed: its kernel answers the late response with a reset


def server() -> None:
    httpd = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    httpd.daemon_threads = True
    if CONFIG.get("ready_file"):
        Path(CONFIG["ready_file"]).write_text("ready")
    httpd.serve_forever()


def client() -> None:
    rng = random.Random(CONFIG.get("seed", 16))
    targets = CONFIG["targets"]
    interval = 1.0 / float(CONFIG.get("rate", 4))
    deadline = time.monotonic() + float(CONFIG["duration"])
    threads = []
    index = 0
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        target = targets[index % len(targets)]
        index += 1
        path = target["path"].replace("{id}", str(rng.randrange(1000, 99999)))
        thread = threading.Thread(
            target=fetch, args=(target["host"], path, float(target.get("timeout", 10))), daemon=True
        )
        thread.start()
        threads.append(thread)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    for thread in threads:
        thread.join(timeout=15)


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]]()
