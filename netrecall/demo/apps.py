"""The programs the demo's pods run, each in its own network namespace (stdlib only, so they start fast).

`python -m netrecall.demo.apps ROLE` with the topology in the NETRECALL_DEMO environment variable (JSON).
Roles: frontend, checkout, catalog, payment, gateway (HTTP servers), loadgen (the client driving the
shop), prober (the kubelet's health checks, from the node). Names are resolved through the real DNS
server of the demo (dnsmasq) with glibc's resolver, as a pod would.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONFIG: dict[str, Any] = json.loads(os.environ.get("NETRECALL_DEMO", "{}"))
PORT = 8080


def _peer(role: str) -> str:
    return CONFIG["pods"][role]["ip"]


def _resolve(name: str) -> str:
    """A real lookup through the pod's resolv.conf (the demo's DNS server); A records only."""
    infos = socket.getaddrinfo(name, PORT, family=socket.AF_INET, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


def _call(method: str, ip: str, path: str, host: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{ip}:{PORT}{path}", data=data, method=method)
    request.add_header("Host", host)
    request.add_header("User-Agent", f"{CONFIG.get('role', 'app')}/1.4")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shop"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
            return
        ROUTES[CONFIG["role"]](self, "GET")

    def do_POST(self) -> None:
        ROUTES[CONFIG["role"]](self, "POST")


CATALOG_HOST = "catalog.shop.svc.cluster.local"
GATEWAY_HOST = "api.payment-gateway.svc.cluster.local"
PRODUCTS = [
    {"id": i, "name": name, "price": price}
    for i, (name, price) in enumerate(
        [("espresso", 3.2), ("flat white", 3.9), ("croissant", 2.5), ("bagel", 2.8), ("tea", 2.1)], start=1
    )
]


def frontend(h: Handler, method: str) -> None:
    if method == "GET" and h.path == "/":
        status, body = _call("GET", _resolve(CATALOG_HOST + "."), "/products", f"{CATALOG_HOST}:{PORT}")
        h._reply(status, {"page": "home", "products": len(json.loads(body)) if status == 200 else 0})
    elif method == "GET" and h.path.startswith("/product/"):
        product = h.path.rsplit("/", 1)[1]
        status, body = _call(
            "GET", _resolve(CATALOG_HOST + "."), f"/products/{product}", f"{CATALOG_HOST}:{PORT}"
        )
        h._reply(status, json.loads(body))
    elif method == "POST" and h.path == "/checkout":
        order = h._body()
        status, body = _call(
            "POST", _peer("checkout"), "/orders", "checkout.shop.svc.cluster.local:8080", order
        )
        if status == 200:
            h._reply(200, {"order": json.loads(body).get("order"), "status": "confirmed"})
        else:
            h._reply(502, {"error": "checkout failed", "upstream_status": status})
    else:
        h._reply(404, {"error": "not found"})


def catalog(h: Handler, method: str) -> None:
    if method == "GET" and h.path == "/products":
        h._reply(200, PRODUCTS)
    elif method == "GET" and h.path.startswith("/products/"):
        wanted = h.path.rsplit("/", 1)[1]
        found = [p for p in PRODUCTS if str(p["id"]) == wanted]
        h._reply(200 if found else 404, found[0] if found else {"error": "no such product"})
    else:
        h._reply(404, {"error": "not found"})


def checkout(h: Handler, method: str) -> None:
    if method == "POST" and h.path == "/orders":
        order = h._body()
        total = round(sum(p["price"] for p in PRODUCTS if p["id"] in order.get("items", [])), 2)
        order_id = f"ord-{random.randrange(16**8):08x}"
        status, body = _call(
            "POST",
            _peer("payment"),
            "/charge",
            "payment.payment.svc.cluster.local:8080",
            {"order": order_id, "amount": total, "currency": "EUR"},
        )
        if status == 200:
            h._reply(200, {"order": order_id, "amount": total})
        else:
            h._reply(
                500, {"error": "payment failed", "order": order_id, "detail": json.loads(body).get("error")}
            )
    else:
        h._reply(404, {"error": "not found"})


def payment(h: Handler, method: str) -> None:
    if method == "POST" and h.path == "/charge":
        charge = h._body()
        try:
            gateway_ip = _resolve(GATEWAY_HOST + ".")
        except socket.gaierror as exc:
            h._reply(503, {"error": f"payment gateway unavailable: {GATEWAY_HOST}: {exc.strerror}"})
            return
        status, body = _call("POST", gateway_ip, "/v1/authorize", f"{GATEWAY_HOST}:{PORT}", charge)
        h._reply(200 if status == 200 else 502, {"charged": status == 200, "gateway": json.loads(body)})
    else:
        h._reply(404, {"error": "not found"})


def gateway(h: Handler, method: str) -> None:
    if method == "POST" and h.path == "/v1/authorize":
        charge = h._body()
        h._reply(
            200,
            {
                "authorized": True,
                "auth_code": f"A{random.randrange(10**6):06d}",
                "amount": charge.get("amount"),
            },
        )
    else:
        h._reply(404, {"error": "not found"})


ROUTES = {
    "frontend": frontend,
    "catalog": catalog,
    "checkout": checkout,
    "payment": payment,
    "gateway": gateway,
}


def serve() -> None:
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    ready = CONFIG.get("ready_file")
    if ready:
        with open(ready, "w") as handle:
            handle.write("ready\n")
    server.serve_forever()


def loadgen() -> None:
    """A steady shopper: home pages, product pages and checkouts, until the duration is over."""
    rng = random.Random(CONFIG.get("seed", 7))
    frontend_ip = _peer("frontend")
    host = "frontend.shop.svc.cluster.local:8080"
    deadline = time.monotonic() + float(CONFIG["duration"])
    interval = 1.0 / float(CONFIG.get("rate", 2.5))
    while time.monotonic() < deadline:
        started = time.monotonic()
        pick = rng.random()
        if pick < 0.25:
            threading.Thread(target=_call, args=("GET", frontend_ip, "/", host), daemon=True).start()
        elif pick < 0.5:
            path = f"/product/{rng.randint(1, 6)}"  # 6 does not exist: an honest 404 now and then
            threading.Thread(target=_call, args=("GET", frontend_ip, path, host), daemon=True).start()
        else:
            order = {
                "items": rng.sample(range(1, 6), rng.randint(1, 3)),
                "customer": f"c{rng.randint(100, 999)}",
            }
            threading.Thread(
                target=_call, args=("POST", frontend_ip, "/checkout", host, order), daemon=True
            ).start()
        time.sleep(max(0.0, interval * rng.uniform(0.6, 1.4) - (time.monotonic() - started)))
    time.sleep(1.5)  # let the last calls finish


def prober() -> None:
    """The kubelet's HTTP liveness probes, from the node's address."""
    targets = [(role, pod["ip"]) for role, pod in CONFIG["pods"].items() if pod.get("probe")]
    deadline = time.monotonic() + float(CONFIG["duration"])
    period = float(CONFIG.get("probe_period", 5.0))
    while time.monotonic() < deadline:
        for role, ip in targets:
            request = urllib.request.Request(f"http://{ip}:{PORT}/healthz")
            request.add_header("User-Agent", "kube-probe/1.30")
            request.add_header("Host", f"{ip}:{PORT}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    response.read()
            except OSError as exc:
                print(f"probe {role} failed: {exc}", file=sys.stderr)
        time.sleep(period)


def main() -> None:
    role = sys.argv[1]
    CONFIG["role"] = role
    if role in ROUTES:
        serve()
    elif role == "loadgen":
        loadgen()
    elif role == "prober":
        prober()
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
