"""Record the TLS test captures from real servers and clients (run as root; needs iproute2, tcpdump, openssl
and curl).

    .venv/bin/python tests/captures/dissect/record_tls.py [NAME...]

A network namespace `nrtls` holds the servers (10.80.0.2); the clients run in the root namespace
(10.80.0.1) and tcpdump listens on the root end of the veth pair. Each capture is small (< 100 KB) and
committed next to this script; tests/test_dissect_tls.py compares what netrecall dissects from them with
tshark.

- tls_openssl.pcap: `openssl s_server` (self-signed certificate) on 4433 (every version, ALPN h2 and
  http/1.1), 4434 (TLS 1.3 only) and 4435 (TLS 1.2 only, one cipher) against `openssl s_client`: TLS 1.3
  with SNI api.stripe.com and ALPN h2,http/1.1, TLS 1.3 with a forced cipher suite, TLS 1.2 with a forced
  ECDHE cipher and ALPN, TLS 1.2 with RSA key exchange, TLS 1.1 and TLS 1.0 (security level 0), no SNI;
  `curl -k`; Python's ssl module; and failures with a fatal alert: protocol_version (TLS 1.2 client
  against the 1.3-only server), handshake_failure (no shared cipher) and no_application_protocol.
- tls_fragmented.pcap: Python's ssl module (memory BIOs) whose ClientHello is cut into five handshake
  records, each record written in two TCP segments, against an s_server that sends at most 512 bytes
  per record; an HTTP request inside the session.
- tls_hrr.pcap: a TLS 1.3 HelloRetryRequest (the client's only key share is X25519, the server takes
  P-256 only), then the second ClientHello and the real ServerHello.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from veth import Veth

HERE = Path(__file__).parent
NS = "nrtls"
HOST_IF, NS_IF = "nrtls0", "nrtls1"
HOST_IP, NS_IP = "10.80.0.1", "10.80.0.2"
LAB = Veth(NS, HOST_IF, NS_IF, HOST_IP, NS_IP)
MAIN_PORT, TLS13_PORT, TLS12_PORT, FRAG_PORT, HRR_PORT = 4433, 4434, 4435, 4436, 4437
REQUEST = b"GET / HTTP/1.0\r\nHost: tls.test\r\n\r\n"


def sh(*cmd: str, check: bool = True, stdin: bytes = b"", timeout: float = 20) -> str:
    done = subprocess.run(list(cmd), check=check, capture_output=True, input=stdin, timeout=timeout)
    return done.stdout.decode("utf-8", "replace")


def certificate(work: Path) -> tuple[str, str]:
    cert, key = work / "cert.pem", work / "key.pem"
    sh(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
        "-days", "3650", "-subj", "/CN=tls.test",
    )  # fmt: skip
    return str(cert), str(key)


def s_server(cert: str, key: str, port: int, *args: str) -> contextlib.AbstractContextManager:
    return LAB.in_ns(
        "openssl", "s_server", "-accept", f"{NS_IP}:{port}", "-cert", cert, "-key", key, "-www", "-quiet",
        *args, keep_stderr=False,
    )  # fmt: skip


def s_client(port: int, *args: str) -> None:
    """One handshake (and one request when it succeeds); failures are the point of some runs."""
    sh(
        "openssl", "s_client", "-connect", f"{NS_IP}:{port}", "-ign_eof", *args,
        check=False, stdin=REQUEST, timeout=10,
    )  # fmt: skip


def python_client(port: int, server_name: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((NS_IP, port), 5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(REQUEST)
        while tls.recv(65536):
            pass


def record_openssl(work: Path) -> None:
    cert, key = certificate(work)
    legacy = "ALL:@SECLEVEL=0"  # TLS 1.0/1.1 need SHA-1 signatures, refused above security level 0
    with (
        s_server(cert, key, MAIN_PORT, "-cipher", legacy, "-alpn", "h2,http/1.1"),
        s_server(cert, key, TLS13_PORT, "-tls1_3"),
        s_server(cert, key, TLS12_PORT, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"),
        LAB.capture(HERE / "tls_openssl.pcap", f"tcp portrange {MAIN_PORT}-{TLS12_PORT}"),
    ):
        for port in (MAIN_PORT, TLS13_PORT, TLS12_PORT):
            LAB.wait_port(port)
        time.sleep(0.3)
        s_client(MAIN_PORT, "-tls1_3", "-servername", "api.stripe.com", "-alpn", "h2,http/1.1")
        s_client(
            MAIN_PORT,
            "-tls1_3",
            "-servername",
            "chacha.test",
            "-ciphersuites",
            "TLS_CHACHA20_POLY1305_SHA256",
        )
        s_client(
            MAIN_PORT, "-tls1_2", "-servername", "shop.test", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256",
            "-alpn", "http/1.1",
        )  # fmt: skip
        s_client(MAIN_PORT, "-tls1_2", "-servername", "rsa.test", "-cipher", "AES256-SHA")
        s_client(MAIN_PORT, "-tls1_1", "-servername", "old11.test", "-cipher", legacy)
        s_client(MAIN_PORT, "-tls1", "-servername", "old10.test", "-cipher", legacy)
        s_client(MAIN_PORT, "-noservername")  # no SNI: JA4 says "i"
        sh("curl", "-sk", "-o", "/dev/null", "--max-time", "5", f"https://{NS_IP}:{MAIN_PORT}/", check=False)
        python_client(MAIN_PORT, "python.test")
        s_client(TLS13_PORT, "-tls1_2", "-servername", "too-old.test")  # protocol_version
        s_client(
            TLS12_PORT, "-tls1_2", "-servername", "nocipher.test", "-cipher", "AES128-SHA"
        )  # handshake_failure
        s_client(MAIN_PORT, "-tls1_3", "-servername", "alpn.test", "-alpn", "h3")  # no_application_protocol


def _fragmented_hello(data: bytes, pieces: int) -> list[bytes]:
    """The client's first flight with its ClientHello cut into `pieces` handshake records."""
    if data[0] != 22:
        return [data]
    length = int.from_bytes(data[3:5], "big")
    header, body, rest = data[:3], data[5 : 5 + length], data[5 + length :]
    size = -(-len(body) // pieces)
    records = [
        header + len(part).to_bytes(2, "big") + part
        for part in (body[i : i + size] for i in range(0, len(body), size))
    ]
    return [*records, rest] if rest else records


def fragmenting_client(port: int, server_name: str) -> None:
    """Python's ssl over memory BIOs; the ClientHello goes out as five records, each in two segments."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with socket.create_connection((NS_IP, port), 5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = True
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            flight = outgoing.read()
            if first and flight:
                first = False
                for record in _fragmented_hello(flight, 5):
                    for part in (record[:3], record[3:]):  # a record header split across segments
                        sock.sendall(part)
                        time.sleep(0.02)
            elif flight:
                sock.sendall(flight)
            if done:
                break
            incoming.write(sock.recv(65536))
        tls.write(REQUEST)
        sock.sendall(outgoing.read())
        sock.settimeout(1.0)  # s_server -www keeps a TLS 1.3 session open after its answer
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                incoming.write(chunk)
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    while tls.read(65536):
                        pass


def record_fragmented(work: Path) -> None:
    cert, key = certificate(work)
    with (
        s_server(cert, key, FRAG_PORT, "-max_send_frag", "512", "-alpn", "http/1.1"),
        LAB.capture(HERE / "tls_fragmented.pcap", f"tcp port {FRAG_PORT}"),
    ):
        LAB.wait_port(FRAG_PORT)
        time.sleep(0.3)
        fragmenting_client(FRAG_PORT, "fragments.test")


def record_hello_retry(work: Path) -> None:
    """The client sends a key share for X25519 only; the server accepts P-256 only: HelloRetryRequest."""
    cert, key = certificate(work)
    with (
        s_server(cert, key, HRR_PORT, "-tls1_3", "-groups", "P-256"),
        LAB.capture(HERE / "tls_hrr.pcap", f"tcp port {HRR_PORT}"),
    ):
        LAB.wait_port(HRR_PORT)
        time.sleep(0.3)
        s_client(HRR_PORT, "-tls1_3", "-groups", "X25519:P-256", "-servername", "retry.test", "-alpn", "h2")


RECORDERS = {
    "tls_openssl": record_openssl,
    "tls_fragmented": record_fragmented,
    "tls_hrr": record_hello_retry,
}


def main(names: list[str]) -> None:
    LAB.up()
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
