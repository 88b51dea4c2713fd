"""Record the HTTP/2 and gRPC test captures from real servers and clients (run as root; needs iproute2,
tcpdump, curl, Debian's nghttp2-server and nghttp2-client, grpcio and hypercorn in the venv).

    .venv/bin/python tests/captures/dissect/record_http2.py [NAME...]

A network namespace `nrh2` holds the servers (10.78.0.2); the clients run in the root namespace
(10.78.0.1) and tcpdump listens on the root end of the veth pair. Each capture is small (< 300 KB) and
committed next to this script; tests/test_dissect_http2.py compares what netrecall dissects from them with
tshark's HTTP/2 and gRPC dissection.

- h2c_nghttpd.pcap: nghttpd --no-tls on port 8081 (prior knowledge), padding its frames:
  curl --http2-prior-knowledge (query string, 404, an 80 KB body in many DATA frames, a POST with a
  body), nghttp with three concurrent streams, padding on both sides and a request header block split into
  CONTINUATION frames, and a server push (PUSH_PROMISE) nghttp accepts.
- h2c_upgrade.pcap: hypercorn (PyPI; nghttpd does not implement the upgrade) on port 8082 reached by
  `curl --http2` (HTTP/1.1 `Upgrade: h2c`, then HTTP/2): the upgraded request answered on stream 1, then
  a 404 and a large body on streams 3 and 5 of the same connection.
- grpc_calls.pcap: a grpcio server on port 50051 (generic handlers, no code generation) and a grpcio
  client: unary, server-streaming, client-streaming and bidi calls, NOT_FOUND with a grpc-message that
  needs percent-encoding, UNAVAILABLE, UNIMPLEMENTED (a trailers-only answer), DEADLINE_EXCEEDED and a
  stream the client cancels (RST_STREAM CANCEL).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from veth import Veth

HERE = Path(__file__).parent
NS = "nrh2"
HOST_IF, NS_IF = "nrh2h", "nrh2n"
HOST_IP, NS_IP = "10.78.0.1", "10.78.0.2"
LAB = Veth(NS, HOST_IF, NS_IF, HOST_IP, NS_IP)
PRIOR_PORT, UPGRADE_PORT, GRPC_PORT = 8081, 8082, 50051

ASGI_APP = r"""
BIG = "".join(f"line {i:06d} of a larger h2 body\n" for i in range(2500)).encode()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    size = 0
    while True:
        event = await receive()
        size += len(event.get("body", b""))
        if not event.get("more_body"):
            break
    if scope["path"] == "/missing":
        status, body = 404, b"not found\n"
    elif scope["path"] == "/big.txt":
        status, body = 200, BIG
    else:
        status, body = 200, b'{"path": "%s", "received": %d}\n' % (scope["path"].encode(), size)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

GRPC_SERVER = r"""
import sys, time
from concurrent import futures
import grpc

def echo(request, context):
    return b"echo:" + request

def lookup(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item: caf\u00e9 50% off")

def unavailable(request, context):
    context.set_code(grpc.StatusCode.UNAVAILABLE)
    context.set_details("backend down")
    return b""

def slow(request, context):
    time.sleep(1.0)
    return b"too late"

def count_up(request, context):
    for i in range(int(request or b"3")):
        yield b"item-%d" % i

def total(request_iterator, context):
    return b"%d" % sum(len(r) for r in request_iterator)

def chat(request_iterator, context):
    for request in request_iterator:
        yield b"re:" + request

def forever(request, context):
    for i in range(1000):
        if not context.is_active():
            return
        yield b"tick-%d" % i
        time.sleep(0.05)

handlers = {
    "Echo": grpc.unary_unary_rpc_method_handler(echo),
    "Lookup": grpc.unary_unary_rpc_method_handler(lookup),
    "Unavailable": grpc.unary_unary_rpc_method_handler(unavailable),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "CountUp": grpc.unary_stream_rpc_method_handler(count_up),
    "Total": grpc.stream_unary_rpc_method_handler(total),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Forever": grpc.unary_stream_rpc_method_handler(forever),
}
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.v1.Items", handlers),))
server.add_insecure_port(sys.argv[1])
server.start()
server.wait_for_termination()
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), check=check, capture_output=True)
    done.stdout = done.stdout.decode("utf-8", "replace")
    return done


def run(*cmd: str) -> None:
    done = sh(*cmd, check=False)
    if done.returncode not in (0,):
        print(f"  ({' '.join(cmd[:3])}... exited {done.returncode})")


def _htdocs(work: Path) -> Path:
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_text("<html><body>hello over h2</body></html>\n" * 10)
    (www / "data.json").write_text('{"items": [1, 2, 3], "ok": true}\n')
    (www / "style.css").write_text("body { color: #333; }\n" * 20)
    # incompressible-looking text so the body really crosses many DATA frames
    (www / "big.txt").write_text("".join(f"line {i:06d} of a larger h2 body\n" for i in range(2500)))
    (work / "upload.bin").write_bytes(bytes(range(256)) * 20)
    return www


def record_h2c_nghttpd(work: Path) -> None:
    www = _htdocs(work)
    base = f"http://{NS_IP}:{PRIOR_PORT}"
    server = LAB.in_ns(
        "nghttpd", "--no-tls", "-d", str(www), "-b", "8", "-p", "/index.html=/style.css", str(PRIOR_PORT)
    )
    with server, LAB.capture(HERE / "h2c_nghttpd.pcap", f"tcp port {PRIOR_PORT}"):
        LAB.wait_port(PRIOR_PORT)
        time.sleep(0.3)
        curl = ["curl", "-s", "-o", "/dev/null", "--max-time", "5", "--http2-prior-knowledge"]
        # one URL per connection: curl 7.88 fails to reuse a prior-knowledge connection (exit 16)
        for url in ("/index.html", "/data.json?x=1&y=two", "/missing", "/big.txt"):
            run(*curl, base + url)
        run(*curl, "--data-binary", f"@{work / 'upload.bin'}", f"{base}/data.json?posted=1")  # POST body
        # three concurrent streams with padding and a header block continued in CONTINUATION frames
        run(
            *("nghttp", "-n", "--no-push", "-b", "16", "--continuation"),
            *(f"{base}/data.json", f"{base}/big.txt", f"{base}/nothere"),
        )
        # a server push the client accepts: /style.css promised on the request for /index.html
        run("nghttp", "-n", f"{base}/index.html")


def record_h2c_upgrade(work: Path) -> None:
    (work / "app.py").write_text(ASGI_APP)
    base = f"http://{NS_IP}:{UPGRADE_PORT}"
    hypercorn = str(Path(sys.executable).with_name("hypercorn"))
    with (
        LAB.in_ns(hypercorn, "--root-path", "", "--bind", f"{NS_IP}:{UPGRADE_PORT}", "app:app", cwd=work),
        LAB.capture(HERE / "h2c_upgrade.pcap", f"tcp port {UPGRADE_PORT}"),
    ):
        LAB.wait_port(UPGRADE_PORT)
        time.sleep(0.3)
        # the first request goes out as HTTP/1.1 with Upgrade: h2c, the next ones as HTTP/2 streams 3, 5
        run(
            *(
                "curl",
                "-s",
                "--max-time",
                "5",
                "--http2",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
            ),
            *(f"{base}/index.html?via=upgrade", f"{base}/missing", f"{base}/big.txt"),
        )


def _grpc_client() -> None:
    import grpc

    target = f"{NS_IP}:{GRPC_PORT}"
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)

        def call(kind: str, name: str) -> Any:
            return getattr(channel, kind)(f"/demo.v1.Items/{name}")

        call("unary_unary", "Echo")(b"hello", timeout=5)
        call("unary_unary", "Echo")(b"x" * 20000, timeout=5)  # a message across several DATA frames
        list(call("unary_stream", "CountUp")(b"4", timeout=5))
        call("stream_unary", "Total")(iter([b"a", b"bb", b"ccc"]), timeout=5)
        list(call("stream_stream", "Chat")(iter([b"one", b"two"]), timeout=5))
        for name in ("Lookup", "Unavailable", "Slow", "Missing"):
            with contextlib.suppress(grpc.RpcError):
                call("unary_unary", name)(b"q", timeout=0.5 if name == "Slow" else 5)
        stream = call("unary_stream", "Forever")(b"", timeout=5)
        for index, _ in enumerate(stream):
            if index == 2:
                stream.cancel()  # the client resets the stream: RST_STREAM CANCEL
                break
        time.sleep(0.3)
        call("unary_unary", "Echo")(b"after the cancel", timeout=5)


def record_grpc(work: Path) -> None:
    (work / "server.py").write_text(GRPC_SERVER)
    with (
        LAB.in_ns(sys.executable, str(work / "server.py"), f"{NS_IP}:{GRPC_PORT}"),
        LAB.capture(HERE / "grpc_calls.pcap", f"tcp port {GRPC_PORT}"),
    ):
        LAB.wait_port(GRPC_PORT)
        time.sleep(0.5)
        # the client runs in its own process: grpcio keeps threads and a connection per process
        client = subprocess.run(
            [sys.executable, __file__, "--grpc-client"], capture_output=True, text=True, check=False
        )
        if client.returncode:
            raise RuntimeError(f"grpc client failed: {client.stderr[-800:]}")
        time.sleep(0.3)


RECORDERS = {
    "h2c_nghttpd": record_h2c_nghttpd,
    "h2c_upgrade": record_h2c_upgrade,
    "grpc_calls": record_grpc,
}


def main(names: list[str]) -> None:
    LAB.up(ns_offload_off=True)
    try:
        for name in names or list(RECORDERS):
            with tempfile.TemporaryDirectory(prefix=f"nr-{name}-") as work:
                Path(work).chmod(0o755)
                RECORDERS[name](Path(work))
            out = HERE / f"{name}.pcap"
            print(f"{out.name}: {out.stat().st_size} bytes")
    finally:
        LAB.down()


if __name__ == "__main__":
    if sys.argv[1:] == ["--grpc-client"]:
        _grpc_client()
    else:
        main(sys.argv[1:])
