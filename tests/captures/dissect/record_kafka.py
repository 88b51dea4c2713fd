"""Record the Kafka test captures from a real client against a small broker (run as root; needs iproute2,
tcpdump and the Python packages confluent-kafka and kio).

    .venv/bin/python tests/captures/dissect/record_kafka.py [NAME...]

No Kafka broker installs from the registries here (Debian ships clients only), so the broker is
kafka_broker.py beside this script, built on kio (Kafka's own message schemas, generated); the client
is confluent-kafka, i.e. librdkafka, a production client. A network namespace `nrkafka` holds the
broker (10.81.0.2, ports 9092 and 29092); the clients run in the root namespace (10.81.0.1) and tcpdump
listens on the root end of the veth pair. Each capture is small and committed next to this script.

- kafka_librdkafka.pcap: (the broker serves no newer versions than tshark 4.0 decodes) a producer
  (acks=all) writing to two topics, to `oversized` (MESSAGE_TOO_LARGE per partition, with an error
  message) and to a topic the broker does not have (Metadata answers UNKNOWN_TOPIC_OR_PARTITION); a
  producer with acks=0 (Produce without a response); a consumer with a group: ListOffsets, Fetch,
  FindCoordinator, OffsetCommit, OffsetFetch; an idempotent producer on the non-standard port 29092
  (InitProducerId). librdkafka negotiates flexible versions (compact strings, tagged fields, request
  header v2, response header v1; ApiVersions answered with header v0).
- kafka_librdkafka_newest.pcap: the same session against the broker serving the newest versions kio has
  schemas for: librdkafka 2.16 then uses versions tshark 4.0 cannot decode (Produce v10, Fetch with
  topic ids, Metadata v13, ...).
- kafka_raw.pcap: a raw-socket client speaking old, non-flexible versions (ApiVersions v0, Metadata v1),
  an ApiVersions version the broker does not serve (UNSUPPORTED_VERSION in a v0 answer), a Metadata
  version nobody can decode (v20: no schema; the broker closes), an unknown API key (93), garbage on
  port 9092, a request cut short by the client, garbage after a good exchange, then a good call again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from veth import Veth

HERE = Path(__file__).parent
NS = "nrkafka"
HOST_IF, NS_IF = "nrk0", "nrk1"
HOST_IP, NS_IP = "10.81.0.1", "10.81.0.2"
LAB = Veth(NS, HOST_IF, NS_IF, HOST_IP, NS_IP)
PORT, OTHER_PORT = 9092, 29092


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True)


@contextlib.contextmanager
def broker(*options: str) -> Iterator[None]:
    script = HERE / "kafka_broker.py"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NS, sys.executable, str(script), *options, NS_IP, str(PORT), str(OTHER_PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "listening"
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(5)
        errors = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if errors.strip():
            print("broker stderr:", errors[-2000:])


# --- kafka_librdkafka.pcap ---------------------------------------------------------------------------------
def record_librdkafka() -> None:
    """The broker serves no newer versions than tshark 4.0 decodes (like a Kafka 2.8 broker)."""
    librdkafka_session("kafka_librdkafka", "--tshark-4.0")


def record_librdkafka_newest() -> None:
    """The broker serves the newest versions kio knows: librdkafka picks its own newest (topic ids)."""
    librdkafka_session("kafka_librdkafka_newest")


def librdkafka_session(name: str, *broker_options: str) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    bootstrap = f"{NS_IP}:{PORT}"
    outcomes: list[tuple[str, str | None]] = []

    def delivered(err: object, msg: object) -> None:
        outcomes.append((msg.topic(), err.name() if err else None))  # type: ignore[attr-defined]

    with broker(*broker_options), LAB.capture(HERE / f"{name}.pcap"):
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "orders-svc",
                "linger.ms": 5,
                "message.timeout.ms": 1500,
            }
        )
        for i in range(4):
            producer.produce(
                "orders", key=b"k%d" % i, value=b"order %d" % i, partition=i % 2, on_delivery=delivered
            )
        producer.flush(10)
        producer.produce("payments", value=b"payment 1", on_delivery=delivered)
        producer.produce("oversized", value=b"x" * 100, on_delivery=delivered)
        producer.produce("missing-topic", value=b"nobody home", on_delivery=delivered)
        producer.flush(10)
        del producer

        fire = Producer({"bootstrap.servers": bootstrap, "client.id": "fire-and-forget", "acks": 0})
        for i in range(3):
            fire.produce("payments", value=b"fire %d" % i)
            fire.flush(10)
        del fire

        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "billing",
                "client.id": "billing-consumer",
                "fetch.wait.max.ms": 100,
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition("orders", p, OFFSET_BEGINNING) for p in (0, 1)])
        got = 0
        deadline = time.time() + 10
        while got < 4 and time.time() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got += 1
        consumer.commit(asynchronous=False)
        committed = consumer.committed([TopicPartition("orders", 0), TopicPartition("orders", 1)], timeout=5)
        consumer.close()

        idempotent = Producer(
            {
                "bootstrap.servers": f"{NS_IP}:{OTHER_PORT}",
                "client.id": "idempotent-svc",
                "enable.idempotence": True,
            }
        )
        idempotent.produce("payments", value=b"exactly once, please", on_delivery=delivered)
        idempotent.flush(10)
        del idempotent
        time.sleep(0.3)
    print("deliveries:", outcomes, "consumed:", got, "committed:", [tp.offset for tp in committed])


# --- kafka_raw.pcap -------------------------------------------------------------------------------------
def request(
    api_key: int, version: int, correlation_id: int, client_id: str, body: bytes = b"", flexible: bool = False
) -> bytes:
    """A request with header v1 (v2 with its empty tagged fields when `flexible`), framed with its size."""
    name = client_id.encode()
    header = struct.pack(">hhih", api_key, version, correlation_id, len(name)) + name
    message = header + (b"\x00" if flexible else b"") + body
    return struct.pack(">i", len(message)) + message


def metadata_v1(*topics: str) -> bytes:
    body = struct.pack(">i", len(topics))
    for topic in topics:
        body += struct.pack(">h", len(topic)) + topic.encode()
    return body


def exchange(sock: socket.socket, data: bytes, answers: int = 1) -> None:
    """Send, then read `answers` framed responses (or until the broker closes)."""
    sock.sendall(data)
    for _ in range(answers):
        head = recv_exactly(sock, 4)
        if len(head) < 4:
            return
        recv_exactly(sock, struct.unpack(">i", head)[0])


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        part = sock.recv(n - len(out))
        if not part:
            break
        out += part
    return out


def drain(sock: socket.socket) -> None:
    sock.settimeout(2)
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


def connect(port: int = PORT) -> socket.socket:
    sock = socket.create_connection((NS_IP, port), 5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def record_raw() -> None:
    with broker(), LAB.capture(HERE / "kafka_raw.pcap"):
        with connect() as sock:  # old versions, header v1 everywhere
            exchange(sock, request(18, 0, 1, "raw-client"))
            exchange(sock, request(3, 1, 2, "raw-client", metadata_v1("orders", "nope")))
            exchange(sock, request(18, 9, 3, "raw-client", b"\x00", flexible=True))  # a version not served
            exchange(sock, request(3, 20, 4, "raw-client", metadata_v1("orders")))  # undecodable: closed
            drain(sock)
        with connect() as sock:  # an API key nobody defines (yet)
            exchange(sock, request(18, 0, 10, "raw-client"))
            exchange(sock, request(93, 0, 11, "raw-client", b"\x00" * 8))
            drain(sock)
        with connect() as sock:  # garbage on the Kafka port
            sock.sendall(b"hello? is this the kafka? \r\n\r\n" + os.urandom(16))
            time.sleep(0.2)
        with connect() as sock:  # a request cut short: the size promises more than ever comes
            whole = request(3, 1, 20, "cut-client", metadata_v1("orders", "payments"))
            sock.sendall(struct.pack(">i", 400) + whole[4:])
            time.sleep(0.2)
        with connect() as sock:  # a good exchange, then garbage on the same connection
            exchange(sock, request(3, 1, 30, "raw-client", metadata_v1("payments")))
            sock.sendall(b"\x00\x00\x00\x10GARBAGE-GARBAGE!")
            drain(sock)
        with connect() as sock:  # and a good call after all that
            exchange(sock, request(3, 1, 40, "raw-client", metadata_v1("orders")))
        time.sleep(0.3)


RECORDERS = {
    "kafka_librdkafka": record_librdkafka,
    "kafka_librdkafka_newest": record_librdkafka_newest,
    "kafka_raw": record_raw,
}


def main(names: list[str]) -> None:
    LAB.up()
    try:
        for name in names or list(RECORDERS):
            RECORDERS[name]()
            out = HERE / f"{name}.pcap"
            print(f"{out.name}: {out.stat().st_size} bytes")
    finally:
        LAB.down()


if __name__ == "__main__":
    main(sys.argv[1:])
