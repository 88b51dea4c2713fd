"""A small single-node Kafka broker for recording test captures, built on kio (Aiven's Kafka protocol
entities: schemas generated from Apache Kafka's message JSON, with native readers and writers).

No Kafka broker installs from the registries here (Debian ships only clients: kcat, librdkafka), so
real clients (confluent-kafka / librdkafka) talk to this one. It keeps topics in memory and answers:
ApiVersions, Metadata, Produce (acks=0 gets no answer), Fetch (full fetch, no sessions), ListOffsets,
FindCoordinator, OffsetCommit, OffsetFetch and InitProducerId — the APIs a producer and a consumer
with manual assignment and commits use. Error cases on purpose:

- a topic that does not exist: Metadata answers UNKNOWN_TOPIC_OR_PARTITION for it;
- topic `oversized`: every Produce to it fails per partition with MESSAGE_TOO_LARGE and an
  error message;
- an API key or version it does not serve: the connection is closed (as Kafka does), except
  ApiVersions, answered with UNSUPPORTED_VERSION in a v0 response.

    python kafka_broker.py [--tshark-4.0] HOST PORT [PORT...]
"""

from __future__ import annotations

import asyncio
import datetime
import io
import struct
import sys
import uuid
from dataclasses import MISSING, fields, is_dataclass
from types import NoneType, UnionType
from typing import Any, get_args, get_origin

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

# api key -> (min, max) version served: the newest kio has schemas for (Fetch and Produce from v13 name
# topics by id) ...
NEWEST = {
    0: (3, 13),  # Produce
    1: (4, 18),  # Fetch
    2: (1, 11),  # ListOffsets
    3: (0, 13),  # Metadata
    8: (2, 10),  # OffsetCommit
    9: (1, 10),  # OffsetFetch
    10: (0, 6),  # FindCoordinator
    18: (0, 4),  # ApiVersions
    22: (0, 6),  # InitProducerId
}
# ... or, with --tshark-4.0, no newer than tshark 4.0's Kafka dissector decodes (its "Supports v0-N"),
# like a Kafka 2.8 broker; flexible versions remain (Metadata v9, OffsetCommit v8, OffsetFetch v7,
# FindCoordinator v3, InitProducerId v3, ApiVersions v3).
TSHARK_4_0 = {
    0: (3, 8),
    1: (4, 11),
    2: (1, 5),
    3: (0, 9),
    8: (2, 8),
    9: (1, 7),
    10: (0, 3),
    18: (0, 3),
    22: (0, 3),
}
TOPICS = {"orders": 2, "payments": 1, "oversized": 1}  # name -> partitions
CLUSTER_ID = "netrecall-kafka-test"
NODE_ID = 1
MAX_WAIT_S = 0.1  # a Fetch with nothing to return waits at most this long


def topic_id(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.topics.netrecall")


# --- building kio entities with the defaults filled in --------------------------------------------------
def _inner(field_type: Any) -> Any:
    if get_origin(field_type) is UnionType:
        return next(t for t in get_args(field_type) if t is not NoneType)
    return field_type


def _default(field: Any) -> Any:
    kind = field.metadata.get("kafka_type", "")
    field_type = field.type
    if get_origin(field_type) is UnionType and NoneType in get_args(field_type):
        return None
    if get_origin(field_type) is tuple:
        return ()
    if is_dataclass(field_type):
        return make(field_type)
    if kind == "error_code":
        return ErrorCode.none
    if kind.startswith("timedelta"):
        return datetime.timedelta(0)
    if kind == "uuid":
        return uuid.UUID(int=0)
    if kind == "string":
        return ""
    if kind == "bool":
        return False
    if kind == "records":
        return b""
    return 0


def make(cls: Any, **values: Any) -> Any:
    """An entity of `cls` from the given fields (those it does not have are ignored), defaults elsewhere."""
    args = {}
    for field in fields(cls):
        if field.name in values:
            args[field.name] = values[field.name]
        elif field.default is MISSING and field.default_factory is MISSING:
            args[field.name] = _default(field)
    return cls(**args)


def element(cls: Any, name: str) -> Any:
    """The entity class held by the tuple (or single) field `name` of `cls`."""
    field_type = _inner(next(f.type for f in fields(cls) if f.name == name))
    if get_origin(field_type) is tuple:
        return _inner(get_args(field_type)[0])
    return field_type


def has(cls: Any, name: str) -> bool:
    return any(f.name == name for f in fields(cls))


# --- the broker --------------------------------------------------------------------------------------
class Broker:
    def __init__(self, host: str, served: dict[int, tuple[int, int]]) -> None:
        self.host = host
        self.served = served
        self.logs: dict[tuple[str, int], list[bytes]] = {}  # (topic, partition) -> batches
        self.next_offset: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> offset
        self.names_by_id = {topic_id(name): name for name in TOPICS}
        self.producer_ids = 1000

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                message = await reader.readexactly(size)
                answer = await self.handle(message, port)
                if answer is False:
                    break
                if answer is not None:
                    writer.write(struct.pack(">i", len(answer)) + answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def handle(self, message: bytes, port: int) -> bytes | bool | None:
        """The response bytes, None for no response (acks=0), False to close the connection."""
        api_key, version, correlation_id = struct.unpack_from(">hhi", message)
        low, high = self.served.get(api_key, (1, 0))
        if not low <= version <= high:
            if api_key == 18:  # ApiVersions: tell the client what is served, in a v0 response
                return self._encode(18, 0, correlation_id, self._api_versions(18, 0, unsupported=True))
            return False
        request_cls = load_request_schema(api_key, version)
        header, offset = entity_reader(request_cls.__header_schema__)(message, 0)
        request, _ = entity_reader(request_cls)(message, offset)
        if api_key == 0 and request.acks == 0:
            self._produce(request, version)
            return None
        if api_key == 1:
            body = await self._fetch(request, version)
        else:
            handler = {
                0: self._produce,
                2: self._list_offsets,
                3: lambda r, v: self._metadata(r, v, port),
                8: self._offset_commit,
                9: self._offset_fetch,
                10: lambda r, v: self._find_coordinator(r, v, port),
                18: lambda r, v: self._api_versions(18, v),
                22: self._init_producer_id,
            }[api_key]
            body = handler(request, version)
        return self._encode(api_key, version, header.correlation_id, body)

    @staticmethod
    def _encode(api_key: int, version: int, correlation_id: int, body: Any) -> bytes:
        response_cls = load_response_schema(api_key, version)
        out = io.BytesIO()
        entity_writer(response_cls.__header_schema__)(
            out, response_cls.__header_schema__(correlation_id=correlation_id)
        )
        entity_writer(response_cls)(out, body)
        return out.getvalue()

    # --- APIs ---------------------------------------------------------------------------------------------
    def _api_versions(self, api_key: int, version: int, unsupported: bool = False) -> Any:
        cls = load_response_schema(api_key, version)
        entry = element(cls, "api_keys")
        keys = tuple(
            make(entry, api_key=k, min_version=lo, max_version=hi) for k, (lo, hi) in self.served.items()
        )
        code = ErrorCode.unsupported_version if unsupported else ErrorCode.none
        return make(cls, error_code=code, api_keys=keys)

    def _metadata(self, request: Any, version: int, port: int) -> Any:
        cls = load_response_schema(3, version)
        topic_cls = element(cls, "topics")
        partition_cls = element(topic_cls, "partitions")
        if request.topics is None:
            wanted = list(TOPICS)
        else:
            wanted = [t if isinstance(t, str) else t.name for t in request.topics]
        topics = []
        for name in wanted:
            count = TOPICS.get(name)
            if count is None:
                topics.append(make(topic_cls, name=name, error_code=ErrorCode.unknown_topic_or_partition))
                continue
            partitions = tuple(
                make(
                    partition_cls,
                    partition_index=p,
                    leader_id=NODE_ID,
                    leader_epoch=0,
                    replica_nodes=(NODE_ID,),
                    isr_nodes=(NODE_ID,),
                )
                for p in range(count)
            )
            topics.append(make(topic_cls, name=name, topic_id=topic_id(name), partitions=partitions))
        broker = make(element(cls, "brokers"), node_id=NODE_ID, host=self.host, port=port)
        return make(
            cls, brokers=(broker,), cluster_id=CLUSTER_ID, controller_id=NODE_ID, topics=tuple(topics)
        )

    def _append(self, topic: str, partition: int, records: bytes) -> int:
        """Store the record batches with their offsets assigned; the first offset."""
        key = (topic, partition)
        base = first = self.next_offset.get(key, 0)
        pos = 0
        while pos + 61 <= len(records):
            length = struct.unpack_from(">i", records, pos + 8)[0]
            batch = bytearray(records[pos : pos + 12 + length])
            last_delta = struct.unpack_from(">i", batch, 23)[0]
            struct.pack_into(">q", batch, 0, base)  # the base offset is outside the batch CRC
            self.logs.setdefault(key, []).append(bytes(batch))
            base += last_delta + 1
            pos += 12 + length
        self.next_offset[key] = base
        return first

    def _produce(self, request: Any, version: int) -> Any:
        cls = load_response_schema(0, version)
        topic_cls = element(cls, "responses")
        partition_cls = element(topic_cls, "partition_responses")
        topics = []
        for topic in request.topic_data:
            name = self._name(topic, "name")
            partitions = []
            for data in topic.partition_data:
                if name == "oversized":
                    partitions.append(
                        make(
                            partition_cls,
                            index=data.index,
                            error_code=ErrorCode.message_too_large,
                            base_offset=-1,
                            log_start_offset=-1,
                            error_message="this broker takes nothing on topic oversized",
                        )
                    )
                    continue
                first = self._append(name, data.index, data.records or b"")
                partitions.append(make(partition_cls, index=data.index, base_offset=first))
            topics.append(
                make(topic_cls, name=name, topic_id=topic_id(name), partition_responses=tuple(partitions))
            )
        return make(cls, responses=tuple(topics))

    async def _fetch(self, request: Any, version: int) -> Any:
        wait = min(request.max_wait.total_seconds(), MAX_WAIT_S)
        if not any(
            self._fetch_records(self._name(t, "topic"), p) for t in request.topics for p in t.partitions
        ):
            await asyncio.sleep(wait)
        cls = load_response_schema(1, version)
        topic_cls = element(cls, "responses")
        partition_cls = element(topic_cls, "partitions")
        topics = []
        for topic in request.topics:
            name = self._name(topic, "topic")
            partitions = []
            for part in topic.partitions:
                records = self._fetch_records(name, part)
                hw = self.next_offset.get((name, part.partition), 0)
                partitions.append(
                    make(
                        partition_cls,
                        partition_index=part.partition,
                        high_watermark=hw,
                        last_stable_offset=hw,
                        preferred_read_replica=-1,
                        records=records,
                    )
                )
            topics.append(make(topic_cls, topic=name, topic_id=topic_id(name), partitions=tuple(partitions)))
        return make(cls, responses=tuple(topics))

    def _name(self, topic: Any, field: str) -> str:
        """A request topic's name, looked up by its id in versions that send the id only."""
        name = getattr(topic, field, None)
        return name if name is not None else self.names_by_id.get(topic.topic_id, "")

    def _fetch_records(self, topic: str, part: Any) -> bytes:
        out = b""
        for batch in self.logs.get((topic, part.partition), []):
            last = struct.unpack_from(">q", batch, 0)[0] + struct.unpack_from(">i", batch, 23)[0]
            if last >= part.fetch_offset:
                out += batch
        return out

    def _list_offsets(self, request: Any, version: int) -> Any:
        cls = load_response_schema(2, version)
        topic_cls = element(cls, "topics")
        partition_cls = element(topic_cls, "partitions")
        topics = []
        for topic in request.topics:
            partitions = []
            for part in topic.partitions:
                end = self.next_offset.get((topic.name, part.partition_index), 0)
                offset = 0 if part.timestamp == -2 else end
                partitions.append(
                    make(
                        partition_cls,
                        partition_index=part.partition_index,
                        timestamp=-1,
                        offset=offset,
                        leader_epoch=0,
                    )
                )
            topics.append(make(topic_cls, name=topic.name, partitions=tuple(partitions)))
        return make(cls, topics=tuple(topics))

    def _find_coordinator(self, request: Any, version: int, port: int) -> Any:
        cls = load_response_schema(10, version)
        if has(cls, "coordinators"):
            coordinator_cls = element(cls, "coordinators")
            coordinators = tuple(
                make(coordinator_cls, key=key, node_id=NODE_ID, host=self.host, port=port)
                for key in request.coordinator_keys
            )
            return make(cls, coordinators=coordinators)
        return make(cls, node_id=NODE_ID, host=self.host, port=port)

    def _offset_commit(self, request: Any, version: int) -> Any:
        cls = load_response_schema(8, version)
        topic_cls = element(cls, "topics")
        partition_cls = element(topic_cls, "partitions")
        topics = []
        for topic in request.topics:
            for part in topic.partitions:
                self.committed[(request.group_id, topic.name, part.partition_index)] = part.committed_offset
            partitions = tuple(
                make(partition_cls, partition_index=p.partition_index) for p in topic.partitions
            )
            topics.append(make(topic_cls, name=topic.name, partitions=partitions))
        return make(cls, topics=tuple(topics))

    def _offset_fetch(self, request: Any, version: int) -> Any:
        cls = load_response_schema(9, version)
        if has(cls, "groups"):
            group_cls = element(cls, "groups")
            topic_cls = element(group_cls, "topics")
            partition_cls = element(topic_cls, "partitions")
            groups = []
            for group in request.groups:
                topics = tuple(
                    make(
                        topic_cls,
                        name=self._name(t, "name"),
                        topic_id=topic_id(self._name(t, "name")),
                        partitions=tuple(
                            make(
                                partition_cls,
                                partition_index=p,
                                committed_offset=self.committed.get(
                                    (group.group_id, self._name(t, "name"), p), -1
                                ),
                                committed_leader_epoch=-1,
                            )
                            for p in t.partition_indexes
                        ),
                    )
                    for t in group.topics or ()
                )
                groups.append(make(group_cls, group_id=group.group_id, topics=topics))
            return make(cls, groups=tuple(groups))
        topic_cls = element(cls, "topics")
        partition_cls = element(topic_cls, "partitions")
        topics = tuple(
            make(
                topic_cls,
                name=t.name,
                partitions=tuple(
                    make(
                        partition_cls,
                        partition_index=p,
                        committed_offset=self.committed.get((request.group_id, t.name, p), -1),
                        committed_leader_epoch=-1,
                    )
                    for p in t.partition_indexes
                ),
            )
            for t in request.topics or ()
        )
        return make(cls, topics=topics)

    def _init_producer_id(self, request: Any, version: int) -> Any:
        self.producer_ids += 1
        return make(load_response_schema(22, version), producer_id=self.producer_ids, producer_epoch=0)


async def main(host: str, ports: list[int], served: dict[int, tuple[int, int]]) -> None:
    broker = Broker(host, served)
    servers = [await asyncio.start_server(broker.serve, host, port) for port in ports]
    print("listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    args = sys.argv[1:]
    versions = TSHARK_4_0 if "--tshark-4.0" in args else NEWEST
    args = [a for a in args if not a.startswith("--")]
    asyncio.run(main(args[0], [int(p) for p in args[1:]], versions))
