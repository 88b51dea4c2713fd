"""Kafka (the binary protocol clients speak to brokers): detection by content, framing, pairing by
correlation id, and the request/response bodies decoded with kio's generated schemas.

- Framing: every message is a 4-byte size and that many bytes. A request starts with header v1/v2
  (api key, api version, correlation id, client id; v2 — flexible versions — adds tagged fields); a
  response starts with header v0/v1 (correlation id; v1 adds tagged fields), where ApiVersions'
  response always uses v0.
- Detection: a direction starting with a plausible request header (size, a known api key, a version
  <= 30, a printable client id) is the client. Port 9092 is supporting evidence: a stream to it that
  does not frame as Kafka is still taken, so the garbage becomes a flagged row and a kafka parse error.
- Pairing: by correlation id (a response whose id no request had is kept as a partial orphan). Produce
  with acks=0 gets no response and is emitted at once.
- Bodies: decoded with kio (Kafka's message JSON turned into Python entities with native readers) when
  it has the (api key, version) schema; from them: the topics named (names, or ids resolved through the
  Metadata responses seen in the run), the first non-zero error code (top level or per partition) and
  the first error message. A version kio has no schema for still gives a row with the header fields.
- Errors: a frame that breaks the rules (size, api key, client id) becomes a flagged `tcp` row and a
  kafka parse error; the direction resynchronises at the next plausible message. A hole in the capture
  inside a message of known size keeps the framing (the call is partial); elsewhere it resynchronises.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import fields, is_dataclass
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, get_args, get_origin

from netrecall.dissect.calls import Call, Context, call_id, call_id_in, id_prefix
from netrecall.dissect.protocols.base import MORE, NO, ParseError

if TYPE_CHECKING:
    from netrecall.dissect.tcp import HalfStream, TcpConn

NAME = "kafka"
PORTS = frozenset({9092})  # supporting evidence only: content decides elsewhere
MAX_MESSAGE = 100 * 1024 * 1024  # Kafka's default socket.request.max.bytes
MAX_VERSION = 30  # no API has come near this many versions
API_KEY_LIMIT = 128  # keys up to here frame as requests mid-stream (unknown ones get a row, not an error)
MAX_CLIENT_ID = 1024
MIDSTREAM_SCAN = 64 * 1024  # how far into a mid-connection capture to look for a first request
_HEAD = struct.Struct(">ihhih")  # size, api key, api version, correlation id, client id length
_INT32 = struct.Struct(">i")
_INT16 = struct.Struct(">h")
_PRINTABLE = bytes(range(32, 127))

API_NAMES = dict(
    enumerate(
        [
            "Produce",
            "Fetch",
            "ListOffsets",
            "Metadata",
            "LeaderAndIsr",
            "StopReplica",
            "UpdateMetadata",
            "ControlledShutdown",
            "OffsetCommit",
            "OffsetFetch",
            "FindCoordinator",
            "JoinGroup",
            "Heartbeat",
            "LeaveGroup",
            "SyncGroup",
            "DescribeGroups",
            "ListGroups",
            "SaslHandshake",
            "ApiVersions",
            "CreateTopics",
            "DeleteTopics",
            "DeleteRecords",
            "InitProducerId",
            "OffsetForLeaderEpoch",
            "AddPartitionsToTxn",
            "AddOffsetsToTxn",
            "EndTxn",
            "WriteTxnMarkers",
            "TxnOffsetCommit",
            "DescribeAcls",
            "CreateAcls",
            "DeleteAcls",
            "DescribeConfigs",
            "AlterConfigs",
            "AlterReplicaLogDirs",
            "DescribeLogDirs",
            "SaslAuthenticate",
            "CreatePartitions",
            "CreateDelegationToken",
            "RenewDelegationToken",
            "ExpireDelegationToken",
            "DescribeDelegationToken",
            "DeleteGroups",
            "ElectLeaders",
            "IncrementalAlterConfigs",
            "AlterPartitionReassignments",
            "ListPartitionReassignments",
            "OffsetDelete",
            "DescribeClientQuotas",
            "AlterClientQuotas",
            "DescribeUserScramCredentials",
            "AlterUserScramCredentials",
            "Vote",
            "BeginQuorumEpoch",
            "EndQuorumEpoch",
            "DescribeQuorum",
            "AlterPartition",
            "UpdateFeatures",
            "Envelope",
            "FetchSnapshot",
            "DescribeCluster",
            "DescribeProducers",
            "BrokerRegistration",
            "BrokerHeartbeat",
            "UnregisterBroker",
            "DescribeTransactions",
            "ListTransactions",
            "AllocateProducerIds",
            "ConsumerGroupHeartbeat",
            "ConsumerGroupDescribe",
            "ControllerRegistration",
            "GetTelemetrySubscriptions",
            "PushTelemetry",
            "AssignReplicasToDirs",
            "ListConfigResources",
            "DescribeTopicPartitions",
            "ShareGroupHeartbeat",
            "ShareGroupDescribe",
            "ShareFetch",
            "ShareAcknowledge",
            "AddRaftVoter",
            "RemoveRaftVoter",
            "UpdateRaftVoter",
            "InitializeShareGroupState",
            "ReadShareGroupState",
            "WriteShareGroupState",
            "DeleteShareGroupState",
            "ReadShareGroupStateSummary",
            "StreamsGroupHeartbeat",
            "StreamsGroupDescribe",
            "DescribeShareGroupOffsets",
            "AlterShareGroupOffsets",
            "DeleteShareGroupOffsets",
        ]
    )
)
API_VERSIONS = 18
PRODUCE = 0


def api_name(api_key: int) -> str:
    return API_NAMES.get(api_key, f"Unknown({api_key})")


# --- what to pick out of a decoded body: a plan per kio entity class ------------------------------------
ERROR, MESSAGE, TOPIC, TOPIC_LIST, TOPIC_ID, ENTITY, ENTITY_LIST = range(7)
Plan = list[tuple[str, int, Any]]  # (field name, kind, nested plan)
_PLANS: dict[type, Plan] = {}


def _unwrap(field_type: Any) -> Any:
    if get_origin(field_type) is UnionType:
        return next((t for t in get_args(field_type) if t is not NoneType), field_type)
    return field_type


def _plan(cls: type) -> Plan:
    """The fields of `cls` that hold error codes, error messages, topics or nested entities holding them."""
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    from kio.schema.types import TopicName

    plan = _PLANS[cls] = []  # placed first: schemas do not nest recursively, but be safe
    for field in fields(cls):  # type: ignore[arg-type]
        kafka_type = field.metadata.get("kafka_type", "")
        field_type = _unwrap(field.type)
        if kafka_type == "error_code":
            plan.append((field.name, ERROR, None))
        elif field.name == "error_message":
            plan.append((field.name, MESSAGE, None))
        elif field_type is TopicName:
            plan.append((field.name, TOPIC, None))
        elif field.name == "topic_id" and kafka_type == "uuid":
            plan.append((field.name, TOPIC_ID, None))
        elif get_origin(field_type) is tuple:
            inner = _unwrap(get_args(field_type)[0])
            if inner is TopicName:
                plan.append((field.name, TOPIC_LIST, None))
            elif is_dataclass(inner):
                nested = _plan(inner)  # type: ignore[arg-type]
                if nested:
                    plan.append((field.name, ENTITY_LIST, nested))
        elif is_dataclass(field_type):
            nested = _plan(field_type)  # type: ignore[arg-type]
            if nested:
                plan.append((field.name, ENTITY, nested))
    return plan


class Facts:
    """What a decoded body says: topics (in order, once each), the first error and the first message."""

    __slots__ = ("error", "message", "names_by_id", "topic_ids", "topics")

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.topic_ids: list[uuid.UUID] = []
        self.error = 0
        self.message = ""

    def walk(self, entity: Any, plan: Plan) -> None:
        for name, kind, nested in plan:
            value = getattr(entity, name)
            if value is None:
                continue
            if kind == ENTITY_LIST:
                for item in value:
                    self.walk(item, nested)
            elif kind == ERROR:
                if value and not self.error:  # an IntEnum: truth and int() without the enum's property
                    self.error = int(value)
            elif kind == TOPIC:
                if value not in self.topics:
                    self.topics.append(value)
            elif kind == TOPIC_ID:
                if value.int and value not in self.topic_ids:
                    self.topic_ids.append(value)
            elif kind == ENTITY:
                self.walk(value, nested)
            elif kind == MESSAGE:
                if not self.message and value:
                    self.message = value
            else:  # TOPIC_LIST
                for topic in value:
                    if topic not in self.topics:
                        self.topics.append(topic)


_ERROR_NAMES: dict[int, str] = {}


def error_name(code: int) -> str:
    """UNKNOWN_TOPIC_OR_PARTITION and the like (kio's ErrorCode, upper-cased)."""
    if not _ERROR_NAMES:
        from kio.schema.errors import ErrorCode

        _ERROR_NAMES.update({member.value: member.name.upper() for member in ErrorCode})
    return _ERROR_NAMES.get(code, f"ERROR_{code}")


# (api key, version, is request) -> (entity reader, plan, flexible header) or None: no schema
_SCHEMAS: dict[tuple[int, int, bool], tuple[Any, Plan, bool] | None] = {}


def schema(api_key: int, version: int, request: bool) -> tuple[Any, Plan, bool] | None:
    key = (api_key, version, request)
    if key in _SCHEMAS:
        return _SCHEMAS[key]
    # kio is imported on first use: its import costs 0.15 s (it pulls in hypothesis), a run without Kafka
    # does not pay it
    from kio.index import load_request_schema, load_response_schema
    from kio.serial import entity_reader

    try:
        cls = load_request_schema(api_key, version) if request else load_response_schema(api_key, version)
    except Exception:  # kio has no schema for it: an API or version newer (or older) than kio's Kafka
        found = None
    else:
        found = (
            _guarded(cls, entity_reader(cls)),
            _plan(cls),
            cls.__header_schema__.__version__ >= (2 if request else 1),
        )
    _SCHEMAS[key] = found
    return found


# --- lengths checked before kio reads ------------------------------------------------------------------
# kio's native reader reserves an array's claimed element count up front: a message claiming 2^31
# elements made it ask for 260 GB and abort the whole process (fuzz/kafka). A count or length can never
# be larger than the bytes left (every element takes at least one), so a walk of the message's shape in
# Python checks them first; a message that fails it is undecodable, as any other that does not fit.
_FIXED = {"bool": 1, "int8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "int64": 8}
_FIXED |= {"float64": 8, "uuid": 16, "error_code": 2, "datetime": 8, "datetime_i64": 8}
_FIXED |= {"timedelta_i32": 4, "timedelta_i64": 8}


def _guarded(cls: Any, reader: Any) -> Any:
    walk = _compiled_walk(cls, bool(getattr(cls, "__flexible__", False)))

    def read(data: bytes, pos: int) -> Any:
        walk(data, pos)
        return reader(data, pos)

    return read


# The walk runs on every message, so each entity class's fields are looked at once and turned into a
# shape: a list of steps (neighbouring fixed-size fields merged into one), and the shape into the source
# of one Python function that walks it with no call per field (the shape interpreted step by step, one
# call per count and varint, cost four times kio's own decoding: a quarter of the Kafka benchmark).
FIXED, STRING, BYTES, ARRAY, ENTITY, OPTIONAL, UNKNOWN = range(7)
Shape = list[tuple[int, Any]]
_SHAPES: dict[Any, Shape] = {}


def _shape(cls: Any) -> Shape:
    shape = _SHAPES.get(cls)
    if shape is not None:
        return shape
    from kio.serial._introspect import classify_field, is_optional

    shape = []
    for f in fields(cls):
        if "tag" in f.metadata:  # in the tagged section, skipped as a whole by the walk
            continue
        kind = classify_field(f)
        nested = is_dataclass(kind.type_)
        step = (ENTITY, _shape(kind.type_)) if nested else _value_step(f, kind)
        if kind.is_array:
            step = (ARRAY, step)
        elif nested and is_optional(f):  # a nullable struct: an int8 marker, negative for null
            step = (OPTIONAL, step[1])
        if step[0] == FIXED and shape and shape[-1][0] == FIXED:
            shape[-1] = (FIXED, shape[-1][1] + step[1])
        else:
            shape.append(step)
    _SHAPES[cls] = shape
    return shape


def _value_step(f: Any, kind: Any) -> tuple[int, Any]:
    kafka_type = f.metadata.get("kafka_type", "")
    if kafka_type == "timedelta":
        return FIXED, 8 if "64" in getattr(kind.type_, "__name__", "") else 4
    if kafka_type in _FIXED:
        return FIXED, _FIXED[kafka_type]
    if kafka_type == "string":
        return STRING, None
    if kafka_type in ("bytes", "records"):
        return BYTES, None
    return UNKNOWN, kafka_type  # an error only if a message reaches it


_SHORT = "the message ends inside a field"


def _compiled_walk(cls: Any, flexible: bool) -> Any:
    """walk(data, pos) -> the position after the entity at pos; ParseError where a length or count
    claims more bytes than are left, or a field runs past the end."""
    lines = ["def walk(data, pos):", " n = len(data)"]
    _walk_source(_shape(cls), flexible, lines, 1)
    lines.append(" return pos")
    namespace = {
        "ParseError": ParseError,
        "SHORT": _SHORT,
        "int32": _INT32.unpack_from,
        "int16": _INT16.unpack_from,
        "uvarint": _uvarint,
        "skip_tagged_fields": skip_tagged_fields,
    }
    exec(compile("\n".join(lines), f"<kafka walk of {cls.__qualname__}>", "exec"), namespace)
    return namespace["walk"]


def _walk_source(shape: Shape, flexible: bool, lines: list[str], depth: int) -> None:
    """Lines walking one entity (its tagged fields included) at indentation `depth`."""
    pad = " " * depth
    for step, arg in shape:
        if step == FIXED:
            lines += [f"{pad}pos += {arg}", f"{pad}if pos > n: raise ParseError(SHORT)"]
        elif step == ARRAY:
            count = f"c{depth}"
            _count_source(flexible, True, count, lines, pad)
            kind, inner = arg
            if kind == FIXED:
                lines += [f"{pad}pos += {inner} * {count}", f"{pad}if pos > n: raise ParseError(SHORT)"]
            elif kind == UNKNOWN:
                message = f"kafka type {inner!r} not known to the length check"
                lines.append(f"{pad}if {count}: raise ParseError({message!r})")
            else:
                lines.append(f"{pad}for _ in range({count}):")
                if kind == ENTITY:
                    _walk_source(inner, flexible, lines, depth + 1)
                else:
                    _value_source(kind, flexible, lines, depth + 1)
        elif step == ENTITY:
            _walk_source(arg, flexible, lines, depth)
        elif step == OPTIONAL:
            lines += [f"{pad}pos += 1", f"{pad}if pos > n: raise ParseError(SHORT)"]
            lines.append(f"{pad}if data[pos - 1] < 0x80:")
            _walk_source(arg, flexible, lines, depth + 1)
        elif step == UNKNOWN:
            lines.append(f"{pad}raise ParseError({f'kafka type {arg!r} not known to the length check'!r})")
        else:
            _value_source(step, flexible, lines, depth)
    if flexible:  # an empty tagged-field section (one zero byte) is the common case
        lines += [
            f"{pad}if pos < n and data[pos] == 0: pos += 1",
            f"{pad}else: pos = skip_tagged_fields(data, pos)",
        ]


def _value_source(kind: int, flexible: bool, lines: list[str], depth: int) -> None:
    """A string or bytes value: its length, then that many bytes (no more than are left, by the count)."""
    pad = " " * depth
    _count_source(flexible, kind == BYTES, "v", lines, pad)
    lines.append(f"{pad}if v > 0: pos += v")


def _count_source(flexible: bool, wide: bool, name: str, lines: list[str], pad: str) -> None:
    """A length or element count into `name` (null: 0), never more than the bytes left."""
    if flexible:  # an unsigned varint, plus one; a single byte in the common case
        lines += [
            f"{pad}if pos < n and data[pos] < 0x80:",
            f"{pad} {name} = data[pos] - 1",
            f"{pad} pos += 1",
            f"{pad}else:",
            f"{pad} {name}, pos = uvarint(data, pos)",
            f"{pad} {name} -= 1",
        ]
    else:
        size = 4 if wide else 2
        lines += [
            f"{pad}if pos + {size} > n: raise ParseError(SHORT)",
            f"{pad}{name} = {'int32' if wide else 'int16'}(data, pos)[0]",
            f"{pad}pos += {size}",
        ]
    lines.append(
        f"{pad}if {name} > n - pos: raise ParseError(f'a length of {{{name}}} with {{n - pos}} bytes left')"
    )
    if name != "v":
        lines.append(f"{pad}if {name} < 0: {name} = 0")


def skip_tagged_fields(message: bytes, pos: int) -> int:
    """The position after a tagged-field section (a count, then tag, size and data per field)."""
    count, pos = _uvarint(message, pos)
    for _ in range(count):
        _, pos = _uvarint(message, pos)
        size, pos = _uvarint(message, pos)
        pos += size
    if pos > len(message):
        raise ParseError("tagged fields run past the message")
    return pos


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise ParseError("bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


# --- detection and headers --------------------------------------------------------------------------------
def request_header(data: bytes | bytearray, pos: int, known_only: bool) -> tuple[int, int] | None:
    """(size, header length without tagged fields) if a plausible request starts at `pos`, None if it
    cannot be one; raises IndexError when too few bytes are there to tell."""
    if len(data) - pos < 14:
        raise IndexError
    size, api_key, version, _, client_len = _HEAD.unpack_from(data, pos)
    if not 10 <= size <= MAX_MESSAGE or not 0 <= version <= MAX_VERSION:
        return None
    if not (api_key in API_NAMES if known_only else 0 <= api_key < API_KEY_LIMIT):
        return None
    if client_len == -1:
        return size, 10
    if not 0 <= client_len <= min(MAX_CLIENT_ID, size - 10):
        return None
    end = pos + 14 + client_len
    if len(data) < end:
        raise IndexError
    if data[pos + 14 : end].translate(None, _PRINTABLE):  # what is left is not printable ASCII
        return None
    return size, 10 + client_len


def _classify(data: bytearray) -> str:
    """'req', 'more' or 'no' for the first bytes of one direction."""
    try:
        return "req" if request_header(data, 0, known_only=True) else "no"
    except IndexError:
        if len(data) >= 4 and not 10 <= _INT32.unpack_from(data, 0)[0] <= MAX_MESSAGE:
            return "no"
        return "more"


def find_request(data: bytes | bytearray, pos: int, limit: int) -> int | None:
    """The first position from `pos` where a plausible request starts whose end is the buffer's end or
    the start of another plausible request (two in a row make a chance match unlikely)."""
    end = min(len(data), pos + limit)
    while pos < end:
        pos = data.find(b"\x00", pos, end)  # sizes below 16 MiB start with a zero byte
        if pos < 0:
            return None
        try:
            found = request_header(data, pos, known_only=True)
        except IndexError:
            return None
        if found is not None:
            after = pos + 4 + found[0]
            if after == len(data):
                return pos
            try:
                if after < len(data) and request_header(data, after, known_only=True):
                    return pos
            except IndexError:
                return pos  # the next message has only begun: take this one
        pos += 1
    return None


# --- the session ----------------------------------------------------------------------------------------
class Message:
    """One request or response as framed: its place in the stream and what its bytes said."""

    __slots__ = (
        "api_key",
        "body",
        "client_id",
        "correlation_id",
        "error",
        "facts",
        "last_ts",
        "no_answer",
        "partial",
        "seq",
        "size",
        "ts",
        "version",
    )

    def __init__(self, ts: int, seq: int, size: int) -> None:
        self.ts = ts
        self.last_ts = ts
        self.seq = seq
        self.size = size
        self.api_key = -1
        self.version = -1
        self.correlation_id = 0
        self.client_id = ""
        self.body = b""
        self.facts: Facts | None = None
        self.error = ""
        self.partial = False
        self.no_answer = False  # Produce with acks=0


class _Direction:
    __slots__ = ("discard", "half", "is_request", "resync", "skipped")

    def __init__(self, half: HalfStream, is_request: bool) -> None:
        self.half = half
        self.is_request = is_request
        self.resync = half.mid_start  # look for the next message start instead of framing at once
        self.skipped = False  # bytes were lost or skipped before the next message: it is partial
        self.discard = 0  # bytes still to drop: the rest of a message a capture hole went through


class KafkaSession:
    protocol = NAME

    def __init__(self, conn: TcpConn, client: int, topic_names: dict[uuid.UUID, str]) -> None:
        self.conn = conn
        self.ctx: Context = conn.ctx
        self.client = client
        self.topic_names = topic_names  # topic id -> name, from Metadata responses (shared by the run)
        self.dirs = (_Direction(conn.halves[0], client == 0), _Direction(conn.halves[1], client == 1))
        self.pending: dict[int, Message] = {}  # correlation id -> request waiting for its response
        self.body_limit = conn.ctx.config.body_limit
        # fixed for the connection: the row's endpoints, and the id prefix of a call the client started
        # (index True) or of a response nothing asked for (index False)
        self.ends = conn.call(NAME, client, 0)
        del self.ends["ts"]
        self.id_prefixes = (
            id_prefix(NAME, conn.flow_id, conn.port[1 - client]),
            id_prefix(NAME, conn.flow_id, conn.port[client]),
        )

    # --- session contract -------------------------------------------------------------------------------
    def feed(self, side: int) -> None:
        d = self.dirs[side]
        half = d.half
        buf = half.buf
        pos = 0
        base = half.base
        seg_off, seg_ts = half.seg_off, half.seg_ts
        last_seg = len(seg_off) - 1
        si = 0  # segment holding the byte being looked at: offsets only grow here, so a cursor, no bisect
        try:
            while pos < len(buf):
                if d.discard:
                    take = min(d.discard, len(buf) - pos)
                    d.discard -= take
                    pos += take
                    continue
                if d.resync:
                    found = self._resync(d, buf, pos)
                    if found is None:
                        d.skipped = True
                        pos = max(pos, len(buf) - 64)  # a message start may straddle the boundary
                        break
                    d.skipped = d.skipped or found > pos
                    d.resync = False
                    pos = found
                    continue
                if len(buf) - pos < 4:
                    break
                size = _INT32.unpack_from(buf, pos)[0]
                if not (10 if d.is_request else 4) <= size <= MAX_MESSAGE:
                    raise ParseError(f"bad message size {size}")
                if len(buf) - pos < 4 + size:
                    if d.is_request:  # check the header now: garbage must not wait for 100 MB to arrive
                        self._check_request_head(buf, pos)
                    break
                if last_seg < 0:
                    ts = last_ts = half.last_ts
                else:
                    offset = base + pos
                    while si < last_seg and seg_off[si + 1] <= offset:
                        si += 1
                    ts = seg_ts[si]
                    offset += 3 + size
                    while si < last_seg and seg_off[si + 1] <= offset:
                        si += 1
                    last_ts = seg_ts[si]
                self._message(d, buf, pos, size, ts, last_ts)
                pos += 4 + size
        except ParseError as exc:
            self._broken(d, str(exc), half.base + pos)
            pos = len(buf)
            d.resync = True
            d.skipped = True
        half.consume(pos)

    def on_gap(self, side: int, missing: int) -> None:
        d = self.dirs[side]
        self.feed(side)
        buf = d.half.buf
        if d.discard:
            d.discard = max(0, d.discard - missing)
            return
        if not d.resync and len(buf) >= 4:
            size = _INT32.unpack_from(buf, 0)[0]
            rest = 4 + size - len(buf)
            if rest >= missing:  # the hole lies inside this message: the framing survives
                self._damaged(d, bytes(buf), size)
                d.half.consume(len(buf))
                d.discard = rest - missing
                return
        d.half.consume(len(buf))
        d.resync = True
        d.skipped = True

    def close(self) -> None:
        for side in (self.client, 1 - self.client):
            d = self.dirs[side]
            self.feed(side)
            buf = d.half.buf
            if len(buf) >= 4 and not d.resync and not d.discard:
                size = _INT32.unpack_from(buf, 0)[0]
                if self.conn.finished:  # the connection ended inside a message: it was cut short
                    message = f"message cut short: {len(buf) - 4} of {size} bytes"
                    self.ctx.parse_error(NAME, message)
                    self._damaged(d, bytes(buf), size, error=f"kafka: {message}")
                else:  # the run ends while the message is still arriving: partial now, whole next run
                    self._damaged(d, bytes(buf), size)
                d.half.consume(len(buf))
        for request in sorted(self.pending.values(), key=lambda m: m.ts):
            self._emit(request, None)
        self.pending.clear()

    def pending_ts(self) -> int | None:
        times = [m.ts for m in self.pending.values()]
        for d in self.dirs:
            if d.half.buf and not d.resync:
                times.append(d.half.ts_at(d.half.base))
        return min(times) if times else None

    # --- framing --------------------------------------------------------------------------------------------
    def _check_request_head(self, buf: bytearray, pos: int) -> None:
        try:
            if request_header(buf, pos, known_only=False) is None:
                raise ParseError(f"not a Kafka request header: {bytes(buf[pos : pos + 16])!r}")
        except IndexError:
            pass

    def _resync(self, d: _Direction, buf: bytearray, pos: int) -> int | None:
        if d.is_request:
            return find_request(buf, pos, len(buf))
        # a response: a plausible size followed by the correlation id of a request waiting for it
        starts = []
        for corr in {_INT32.pack(c) for c in self.pending}:
            at = buf.find(corr, pos + 4)
            while at >= 0:
                if 4 <= _INT32.unpack_from(buf, at - 4)[0] <= MAX_MESSAGE:
                    starts.append(at - 4)
                    break
                at = buf.find(corr, at + 1)
        return min(starts) if starts else None

    def _message(self, d: _Direction, buf: bytearray, pos: int, size: int, ts: int, last_ts: int) -> None:
        """A whole message at pos; ts and last_ts: capture times of its first and last bytes."""
        half = d.half
        msg = Message(ts, (half.seq0 + half.base + pos) & 0xFFFFFFFF, size)
        msg.last_ts = last_ts
        msg.partial = d.skipped
        d.skipped = False
        data = bytes(buf[pos + 4 : pos + 4 + size])
        msg.body = data[: self.body_limit]
        if d.is_request:
            self._request(msg, data, whole=True)
        else:
            self._response(msg, data, whole=True)

    def _damaged(self, d: _Direction, buf: bytes, size: int, error: str = "") -> None:
        """A message of which only the first bytes arrived (a hole, or the end of the connection)."""
        half = d.half
        msg = Message(half.ts_at(half.base), half.seq_at(half.base), size)
        msg.last_ts = half.last_ts
        msg.partial = True
        msg.error = error
        data = buf[4:]
        msg.body = data[: self.body_limit]
        try:
            if d.is_request:
                self._request(msg, data, whole=False)
            else:
                self._response(msg, data, whole=False)
        except ParseError as exc:  # not even the header makes sense: a flagged row for the bytes
            self._broken(d, str(exc), half.base)

    def _request(self, msg: Message, data: bytes, whole: bool) -> None:
        if len(data) < 8:
            return
        msg.api_key, msg.version, msg.correlation_id = struct.unpack_from(">hhi", data)
        header_end = 8
        if len(data) >= 10:
            client_len = struct.unpack_from(">h", data, 8)[0]
            if client_len > 0:
                msg.client_id = data[10 : 10 + client_len].decode("utf-8", "replace")
            header_end = 10 + max(client_len, 0)
        if not 0 <= msg.api_key < API_KEY_LIMIT or not 0 <= msg.version <= MAX_VERSION:
            raise ParseError(f"not a Kafka request header: {data[:12]!r}")
        found = schema(msg.api_key, msg.version, True) if whole else None
        if found is not None:
            reader, plan, flexible = found
            try:
                pos = skip_tagged_fields(data, header_end) if flexible else header_end
                entity, used = reader(data, pos)
            except Exception as exc:  # the schema does not fit these bytes
                self._undecodable(msg, "request", exc)
            else:
                msg.facts = self._facts(entity, plan)
                if pos + used != len(data):
                    self._undecodable(msg, "request", ValueError(f"{len(data) - pos - used} bytes left over"))
                if msg.api_key == PRODUCE and getattr(entity, "acks", 1) == 0:
                    msg.no_answer = True
        if msg.no_answer:
            self._emit(msg, None)
            return
        earlier = self.pending.pop(msg.correlation_id, None)
        if earlier is not None:  # the id is used again: the earlier request got no answer
            self._emit(earlier, None)
        self.pending[msg.correlation_id] = msg

    def _response(self, msg: Message, data: bytes, whole: bool) -> None:
        if len(data) < 4:
            self._emit(None, msg)
            return
        msg.correlation_id = _INT32.unpack_from(data)[0]
        request = self.pending.pop(msg.correlation_id, None)
        if request is None:
            self._emit(None, msg)
            return
        msg.api_key, msg.version = request.api_key, request.version
        if whole:
            self._decode_response(msg, data)
        self._emit(request, msg)

    def _decode_response(self, msg: Message, data: bytes) -> None:
        found = schema(msg.api_key, msg.version, False)
        if found is None and msg.api_key == API_VERSIONS:
            # a broker answers an ApiVersions version it does not serve in v0 (UNSUPPORTED_VERSION)
            found = schema(API_VERSIONS, 0, False)
        if found is None:
            return
        reader, plan, flexible = found
        try:
            pos = skip_tagged_fields(data, 4) if flexible else 4
            entity, used = reader(data, pos)
        except Exception as exc:
            self._undecodable(msg, "response", exc)
            return
        if msg.api_key == 3:  # Metadata: learn topic ids, for the versions of other APIs that send ids only
            for topic in getattr(entity, "topics", None) or ():  # a nullable array may be null (fuzz/kafka)
                topic_id = getattr(topic, "topic_id", None)
                if topic_id is not None and topic_id.int and topic.name:
                    self.topic_names[topic_id] = topic.name
        msg.facts = self._facts(entity, plan)
        if pos + used != len(data):
            self._undecodable(msg, "response", ValueError(f"{len(data) - pos - used} bytes left over"))

    def _facts(self, entity: Any, plan: Plan) -> Facts:
        facts = Facts()
        facts.walk(entity, plan)
        for topic_id in facts.topic_ids:
            name = self.topic_names.get(topic_id) or str(topic_id)
            if name not in facts.topics:
                facts.topics.append(name)
        return facts

    def _undecodable(self, msg: Message, what: str, exc: Exception) -> None:
        text = (
            f"{what} does not decode as {api_name(msg.api_key)} v{msg.version}: {type(exc).__name__}: {exc}"
        )
        self.ctx.parse_error(NAME, text[:200])
        msg.error = msg.error or f"kafka: {text[:200]}"

    # --- output -----------------------------------------------------------------------------------------
    def _broken(self, d: _Direction, message: str, offset: int) -> None:
        self.ctx.parse_error(NAME, message)
        half = d.half
        ts = half.ts_at(offset)
        conn = self.conn
        call = conn.call("tcp", self.client, ts)
        port = conn.port[self.client if d.is_request else 1 - self.client]
        call.update(
            id=call_id("tcp", conn.flow_id, port, half.seq_at(offset), ts),
            error=f"kafka: {message}",
            partial=True,
            first_packet_ts=ts,
            last_packet_ts=half.last_ts,
        )
        call["has_request"] = True  # keep it even in a resumed run: the error is real
        self.ctx.emit(call)

    def _emit(self, req: Message | None, resp: Message | None) -> None:
        first = req if req is not None else resp
        assert first is not None
        ts = first.ts
        call: Call = {
            **self.ends,
            "ts": ts,
            "id": call_id_in(self.id_prefixes[req is not None], first.seq, ts),
            "first_packet_ts": ts,
            "kafka_correlation_id": first.correlation_id,
        }
        topics: list[str] = []
        error = ""
        if req is not None:
            call["method"] = api_name(req.api_key)
            call["kafka_api_key"] = req.api_key
            call["kafka_api_version"] = req.version
            call["client_id"] = req.client_id
            call["request_body_size"] = req.size
            call["request_body"] = req.body
            call["request_body_truncated"] = req.size > len(req.body)
            if req.facts is not None:
                topics = list(req.facts.topics)
            error = req.error
        else:
            call["has_request"] = False
        if resp is not None:
            call["has_response"] = True
            call["response_body_size"] = resp.size
            call["response_body"] = resp.body
            call["response_body_truncated"] = resp.size > len(resp.body)
            if req is not None:
                call["elapsed_time"] = max(0, resp.ts - req.ts) // 1000
            facts = resp.facts
            if facts is not None:
                topics += [t for t in facts.topics if t not in topics]
                call["status_code"] = facts.error
                if facts.error:
                    call["error_code"] = error_name(facts.error)
                if facts.message:
                    call["status_message"] = facts.message
            error = error or resp.error
        call["kafka_topics"] = topics
        call["path"] = ",".join(topics)
        call["partial"] = req is None or req.partial or (resp is not None and resp.partial)
        if error:
            call["error"] = error
        call["last_packet_ts"] = (resp or req).last_ts  # type: ignore[union-attr]
        self.ctx.emit(call)


class KafkaDissector:
    name = NAME

    def __init__(self) -> None:
        self.topic_names: dict[uuid.UUID, str] = {}  # learnt from Metadata responses during the run

    def detect(self, conn: TcpConn) -> int:
        halves = conn.halves
        verdicts = [_classify(h.buf) if h.buf else "empty" for h in halves]
        for side, verdict in enumerate(verdicts):
            if verdict == "req" and (conn.client is None or conn.client == side or halves[side].mid_start):
                return side
        if any(h.mid_start for h in halves):
            for side, half in enumerate(halves):
                if half.buf and find_request(half.buf, 0, MIDSTREAM_SCAN) is not None:
                    return side
            if all(len(h.buf) < MIDSTREAM_SCAN for h in halves if h.buf) and "more" in verdicts:
                return MORE
        if conn.port[0] in PORTS or conn.port[1] in PORTS:
            # the Kafka port, but not Kafka framing: parse it anyway, so it shows as a kafka parse error
            server = 0 if conn.port[0] in PORTS else 1
            client = conn.client if conn.client is not None else 1 - server
            if verdicts[client] == "no":
                return client
        if "more" in verdicts and "no" not in verdicts:
            return MORE
        return NO

    def session(self, conn: TcpConn, client: int) -> KafkaSession:
        return KafkaSession(conn, client, self.topic_names)
