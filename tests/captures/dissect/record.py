"""Record the dissection test captures from real servers and clients (run as root; needs iproute2, tcpdump,
nginx-light, dnsmasq, curl and dig from bind9-dnsutils).

    .venv/bin/python tests/captures/dissect/record.py [NAME...]

A network namespace `nrdissect` holds the servers (10.77.0.2); the clients run in the root namespace
(10.77.0.1) and tcpdump listens on the root end of the veth pair. Each capture is small (< 200 KB) and
committed next to this script; the tests compare what netrecall dissects from them with tshark.

- http_python.pcap: Python's http.server speaking HTTP/1.1 on port 8000: curl keep-alive (several URLs
  on one connection), query strings, 404, HEAD, POST with Content-Length, POST with a chunked body,
  `Expect: 100-continue`, a chunked response, HTTP/1.0 with close-delimited bodies.
- http_nginx.pcap: nginx on the non-standard port 9099: gzip (chunked) responses, 304 by
  If-None-Match, 204, HEAD, a raw-socket client pipelining three GETs in one segment.
- http_pipelined_head.pcap: GET, HEAD, GET pipelined in one segment (tshark mis-frames it).
- dns_dnsmasq.pcap: dnsmasq answering A, AAAA, CNAME, SRV, TXT, MX, PTR (NOERROR), NXDOMAIN, SERVFAIL
  (DNSSEC required of an upstream that cannot sign), the same over TCP (`dig +tcp`), and a query
  nobody answers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from veth import Veth

HERE = Path(__file__).parent
NS = "nrdissect"
HOST_IF, NS_IF = "nrd0", "nrd1"
HOST_IP, NS_IP = "10.77.0.1", "10.77.0.2"
LAB = Veth(NS, HOST_IF, NS_IF, HOST_IP, NS_IP)

PY_SERVER = r"""
import sys, gzip, json
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self):
        body = self._body()
        out = json.dumps({"received": len(body), "path": self.path}).encode()
        self.send_response(201, "Created")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world\n" * 50):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/gz"):
            out = gzip.compress(b"compressed body " * 100)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if self.path.startswith("/old"):
            self.protocol_version = "HTTP/1.0"  # close-delimited body: no Content-Length
            self.close_connection = True
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"body until close\n" * 20)
            return
        super().do_GET()

import functools
handler = functools.partial(Handler, directory=sys.argv[3])
ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    gzip on;
    gzip_min_length 20;
    gzip_types text/plain application/json;
    etag on;
    server {{
        listen {ip}:9099;
        root {d}/www;
        location = /nocontent {{ return 204; }}
    }}
}}
"""

DNSMASQ_ARGS = [
    "--no-daemon",
    "--no-resolv",
    "--no-hosts",
    "--bind-interfaces",
    f"--listen-address={NS_IP}",
    "--local=/test/",  # unknown names under .test are NXDOMAIN, answered locally
    "--address=/a.test/10.1.2.3",
    "--host-record=v6.test,10.1.2.4,fd00::4",
    "--cname=alias.test,a.test",
    "--srv-host=_http._tcp.svc.test,a.test,8080,10,5",
    "--txt-record=txt.test,hello dns,second string",
    "--mx-host=mail.test,a.test,10",
    "--ptr-record=3.2.1.10.in-addr.arpa,a.test",
    # Everything else goes to an upstream that cannot prove its answers while DNSSEC is required:
    # validation fails, the answer is SERVFAIL (a plain dead upstream makes dnsmasq stay silent).
    "--server=127.0.0.2",
    "--dnssec",
    "--dnssec-check-unsigned",
    "--trust-anchor=.,12345,8,2," + "a" * 64,
    "--log-facility=/dev/null",
]
UPSTREAM_ARGS = [
    "--no-daemon",
    "--no-resolv",
    "--no-hosts",
    "--bind-interfaces",
    "--listen-address=127.0.0.2",
    "--address=/fail.example/10.9.9.9",
    "--log-facility=/dev/null",
]


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), check=check, capture_output=True)
    done.stdout = done.stdout.decode("utf-8", "replace")
    return done


def curl(*args: str) -> None:
    sh("curl", "-s", "-o", "/dev/null", "--max-time", "5", *args, check=False)


def record_http_python(work: Path) -> None:
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_text("<html><body>hello</body></html>\n" * 20)
    (www / "data.json").write_text('{"items": [1, 2, 3]}\n')
    (www / "big.txt").write_text("line of a larger file\n" * 3000)
    (work / "server.py").write_text(PY_SERVER)
    base = f"http://{NS_IP}:8000"
    server = LAB.in_ns(sys.executable, str(work / "server.py"), NS_IP, "8000", str(www))
    with server, LAB.capture(HERE / "http_python.pcap", "tcp port 8000"):
        LAB.wait_port(8000)
        time.sleep(0.3)
        # keep-alive: four requests on one connection, with a query string and a 404
        curl(
            "--http1.1",
            f"{base}/index.html",
            f"{base}/data.json?x=1&y=two",
            f"{base}/missing",
            f"{base}/big.txt",
        )
        curl("--http1.1", "-I", f"{base}/index.html")  # HEAD
        curl("--http1.1", "-d", "name=value&other=1", f"{base}/form")  # POST, Content-Length
        chunked_body = work / "chunked.bin"
        chunked_body.write_bytes(b"x" * 3000)
        curl(
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{chunked_body}",
            f"{base}/upload",
        )
        curl("--http1.1", "-H", "Expect: 100-continue", "--data-binary", f"@{chunked_body}", f"{base}/expect")
        curl("--http1.1", f"{base}/chunked", f"{base}/gz")
        curl("--http1.0", f"{base}/old")
        curl(
            "--http1.1", "-H", "If-Modified-Since: Wed, 21 Oct 2099 07:28:00 GMT", f"{base}/index.html"
        )  # 304


def record_http_nginx(work: Path) -> None:
    www = work / "www"
    www.mkdir()
    (www / "page.txt").write_text("nginx page with enough text to be gzipped\n" * 200)
    (www / "small.json").write_text('{"ok": true, "message": "gzip me if you can, this is json"}\n')
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=work, ip=NS_IP))
    base = f"http://{NS_IP}:9099"
    with LAB.in_ns("nginx", "-c", str(conf)), LAB.capture(HERE / "http_nginx.pcap", "tcp port 9099"):
        LAB.wait_port(9099)
        time.sleep(0.3)
        curl("--http1.1", "--compressed", f"{base}/page.txt", f"{base}/small.json", f"{base}/nope")
        curl("--http1.1", "-I", f"{base}/page.txt")
        curl("--http1.1", f"{base}/nocontent")
        etag = sh("curl", "-s", "-I", f"{base}/page.txt").stdout
        tag = next(
            (line.split(":", 1)[1].strip() for line in etag.splitlines() if line.lower().startswith("etag")),
            "",
        )
        curl("--http1.1", "-H", f"If-None-Match: {tag}", f"{base}/page.txt")  # 304
        pipeline(
            f"GET /small.json HTTP/1.1\r\nHost: {NS_IP}:9099\r\n\r\n"
            f"GET /page.txt?pipelined=2 HTTP/1.1\r\nHost: {NS_IP}:9099\r\nAccept-Encoding: gzip\r\n\r\n"
            f"GET /nope?pipelined=3 HTTP/1.1\r\nHost: {NS_IP}:9099\r\nConnection: close\r\n\r\n",
            9099,
        )


def pipeline(requests: str, port: int) -> None:
    """Several requests written at once on one connection (one segment), then read to the end."""
    with socket.create_connection((NS_IP, port), 5) as sock:
        sock.sendall(requests.encode())
        while sock.recv(65536):
            pass


def record_http_pipelined_head(work: Path) -> None:
    """A pipelined HEAD between two GETs: tshark 4.0 loses the framing here (docs/protocols.md)."""
    www = work / "www"
    www.mkdir()
    (www / "page.txt").write_text("nginx page with enough text to be gzipped\n" * 200)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=work, ip=NS_IP))
    with LAB.in_ns("nginx", "-c", str(conf)), LAB.capture(HERE / "http_pipelined_head.pcap", "tcp port 9099"):
        LAB.wait_port(9099)
        time.sleep(0.3)
        pipeline(
            f"GET /page.txt?n=1 HTTP/1.1\r\nHost: {NS_IP}:9099\r\n\r\n"
            f"HEAD /page.txt HTTP/1.1\r\nHost: {NS_IP}:9099\r\n\r\n"
            f"GET /page.txt?n=3 HTTP/1.1\r\nHost: {NS_IP}:9099\r\nAccept-Encoding: gzip\r\n"
            "Connection: close\r\n\r\n",
            9099,
        )


def record_dns(work: Path) -> None:
    with (
        LAB.in_ns("dnsmasq", *UPSTREAM_ARGS),
        LAB.in_ns("dnsmasq", *DNSMASQ_ARGS),
        LAB.capture(HERE / "dns_dnsmasq.pcap", "port 53 or port 5354"),
    ):
        LAB.wait_port(53, udp=True)

        def dig(*args: str) -> None:
            sh("dig", f"@{NS_IP}", "+tries=1", "+time=2", *args, check=False)

        for name, qtype in [
            ("a.test", "A"),
            ("v6.test", "AAAA"),
            ("alias.test", "A"),
            ("_http._tcp.svc.test", "SRV"),
            ("txt.test", "TXT"),
            ("mail.test", "MX"),
            ("nothere.test", "A"),
            ("x.fail.example", "A"),
        ]:
            dig(name, qtype)
        dig("-x", "10.1.2.3")
        dig("+tcp", "a.test", "A")
        dig("+tcp", "nothere.test", "AAAA")
        dig("+tcp", "txt.test", "TXT")
        dig("-p", "5354", "+time=1", "lost.test", "A")  # nobody listens: a query without an answer


RECORDERS = {
    "http_python": record_http_python,
    "http_nginx": record_http_nginx,
    "http_pipelined_head": record_http_pipelined_head,
    "dns_dnsmasq": record_dns,
}


def main(names: list[str]) -> None:
    LAB.up(loopback_alias=True)
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
    main(sys.argv[1:])
