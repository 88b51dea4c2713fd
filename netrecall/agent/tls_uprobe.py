"""TLS plaintext from OpenSSL through eBPF uprobes (bcc), joined to the TCP flow it travelled on.

Probe points, in every process that maps the given libssl (or one process, `pid`):
- uprobes on `SSL_write`/`SSL_read`/`SSL_write_ex`/`SSL_read_ex` remember (SSL*, buffer, size pointer)
  per thread; the uretprobes copy what was written or read (up to 16 KiB per call, the largest TLS
  record) into a perf buffer when the call succeeded.
- The socket underneath: while a thread is inside an SSL call, the tracepoints
  `syscalls:sys_enter_{write,read,sendto,recvfrom}` give the file descriptor and
  `sock:sock_{send,recv}_length` the `struct sock *`; `sock:inet_sock_set_state` maps every TCP socket
  to its 5-tuple as it connects or is accepted. Kprobes are not needed (this kernel has none) and no
  kernel struct is read, so the program does not depend on the kernel's struct layouts (bcc compiles
  against Debian's 6.1 headers).
  A socket established before the tracer started is resolved from /proc/PID/fd and /proc/PID/net/tcp.

Events become api_calls by the ordinary pipeline: each (process, SSL*) stream is replayed as a TCP
connection whose sequence numbers count plaintext bytes, through the same engine and protocol modules as
captured packets; the calls carry the flow id of the real 5-tuple, so the HTTP call sits next to the
`tls` row of the same connection. docs/tls-plaintext.md has the design and the measured facts.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netrecall.agent.capture_ebpf import _kernel_headers
from netrecall.dissect.calls import Call, Context
from netrecall.dissect.engine import Engine, PacketChunk
from netrecall.dissect.tcp import ACK, FIN, SYN

DEFAULT_LIBSSL = "/lib/x86_64-linux-gnu/libssl.so.3"
TRACEFS = Path("/sys/kernel/tracing")
MAX_DATA = 16384
WRITE, READ = 0, 1

BPF_PROGRAM = r"""
#include <uapi/linux/ptrace.h>

#define MAX_DATA 16384

struct call_t { u64 ssl; u64 buf; u64 size_ptr; };
struct ssl_key_t { u64 ssl; u32 tgid; u32 pad; };
struct conn_t { u64 sk; s32 fd; u32 pad; };
struct tuple_t { u16 family; u16 sport; u16 dport; u16 pad; u8 saddr[16]; u8 daddr[16]; };
struct event_t {
    u64 ts;
    u64 ssl;
    u32 pid;
    u32 tid;
    s32 fd;
    u32 len;
    u32 captured;
    u8 direction;
    u8 known;
    u16 family;
    u16 sport;
    u16 dport;
    u8 saddr[16];
    u8 daddr[16];
    char comm[16];
    char data[MAX_DATA];
};

BPF_HASH(calls, u64, struct call_t, 10240);          // thread -> the SSL call it is inside
BPF_HASH(ssl_conns, struct ssl_key_t, struct conn_t, 65536);  // (SSL*, process) -> socket, fd
BPF_TABLE("lru_hash", u64, struct tuple_t, socks, 65536);     // struct sock * -> 5-tuple
BPF_PERCPU_ARRAY(scratch, struct event_t, 1);
BPF_PERF_OUTPUT(events);

static __always_inline int wanted(u64 id) {
    return FILTER_TGID == 0 || (id >> 32) == FILTER_TGID;
}

static __always_inline int enter(struct pt_regs *ctx, u64 size_ptr) {
    u64 id = bpf_get_current_pid_tgid();
    if (!wanted(id))
        return 0;
    struct call_t call = {};
    call.ssl = PT_REGS_PARM1(ctx);
    call.buf = PT_REGS_PARM2(ctx);
    call.size_ptr = size_ptr;
    calls.update(&id, &call);
    return 0;
}

int enter_plain(struct pt_regs *ctx) { return enter(ctx, 0); }
int enter_ex(struct pt_regs *ctx) { return enter(ctx, PT_REGS_PARM4(ctx)); }

static __always_inline int leave(struct pt_regs *ctx, u8 direction) {
    u64 id = bpf_get_current_pid_tgid();
    struct call_t *call = calls.lookup(&id);
    if (!call)
        return 0;
    int ret = (int)PT_REGS_RC(ctx);  // every probed function returns int: the upper half of rax is junk
    u64 n = 0;
    if (call->size_ptr) {
        if (ret == 1)
            bpf_probe_read_user(&n, sizeof(n), (void *)call->size_ptr);
    } else if (ret > 0) {
        n = ret;
    }
    u32 zero = 0;
    struct event_t *e = scratch.lookup(&zero);
    if (n == 0 || !e) {
        calls.delete(&id);
        return 0;
    }
    e->ts = bpf_ktime_get_ns();
    e->ssl = call->ssl;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->direction = direction;
    e->len = n;
    e->known = 0;
    e->fd = -1;
    struct ssl_key_t key = {.ssl = call->ssl, .tgid = id >> 32};
    struct conn_t *conn = ssl_conns.lookup(&key);
    if (conn) {
        e->fd = conn->fd;
        struct tuple_t *tuple = socks.lookup(&conn->sk);
        if (tuple) {
            e->known = 1;
            e->family = tuple->family;
            e->sport = tuple->sport;
            e->dport = tuple->dport;
            __builtin_memcpy(e->saddr, tuple->saddr, 16);
            __builtin_memcpy(e->daddr, tuple->daddr, 16);
        }
    }
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    u32 size = n > MAX_DATA ? MAX_DATA : n;
    e->captured = size;
    bpf_probe_read_user(e->data, size, (void *)call->buf);
    calls.delete(&id);
    events.perf_submit(ctx, e, sizeof(struct event_t) - MAX_DATA + size);
    return 0;
}

int leave_write(struct pt_regs *ctx) { return leave(ctx, 0); }
int leave_read(struct pt_regs *ctx) { return leave(ctx, 1); }

// The connection record of the SSL call this thread is inside, created on first sight; NULL outside one.
static __always_inline struct conn_t *current_conn(void) {
    u64 id = bpf_get_current_pid_tgid();
    struct call_t *call = calls.lookup(&id);
    if (!call)
        return 0;
    struct ssl_key_t key = {.ssl = call->ssl, .tgid = id >> 32};
    struct conn_t fresh = {.sk = 0, .fd = -1};
    return ssl_conns.lookup_or_try_init(&key, &fresh);
}

static __always_inline void note_fd(s64 fd) {
    struct conn_t *conn = current_conn();
    if (conn)
        conn->fd = fd;
}

static __always_inline void note_sock(u64 sk) {
    struct conn_t *conn = current_conn();
    if (conn)
        conn->sk = sk;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { note_fd(args->fd); return 0; }
TRACEPOINT_PROBE(sock, sock_send_length) { note_sock((u64)args->sk); return 0; }
TRACEPOINT_PROBE(sock, sock_recv_length) { note_sock((u64)args->sk); return 0; }

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6 /* IPPROTO_TCP */ || args->newstate == 7 /* TCP_CLOSE */)
        return 0;
    struct tuple_t tuple = {};
    tuple.family = args->family;
    tuple.sport = args->sport;
    tuple.dport = args->dport;
    if (args->family == 2 /* AF_INET */) {
        __builtin_memcpy(tuple.saddr, args->saddr, 4);
        __builtin_memcpy(tuple.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(tuple.saddr, args->saddr_v6, 16);
        __builtin_memcpy(tuple.daddr, args->daddr_v6, 16);
    }
    u64 sk = (u64)args->skaddr;
    socks.update(&sk, &tuple);
    return 0;
}
"""

_EVENT_HEAD = struct.Struct("<QQIIiIIBBHHH16s16s16s")
SYMBOLS = (
    ("SSL_write", "enter_plain", "leave_write"),
    ("SSL_read", "enter_plain", "leave_read"),
    ("SSL_write_ex", "enter_ex", "leave_write"),
    ("SSL_read_ex", "enter_ex", "leave_read"),
)


@dataclass(frozen=True)
class PlaintextEvent:
    """One successful SSL_write/SSL_read: what the process sent (write) or received (read) in clear."""

    ts_ns: int  # wall clock
    pid: int
    tid: int
    comm: str
    ssl: int  # the SSL* in that process: one TLS connection
    fd: int  # -1 when no system call was seen under this SSL* yet
    direction: int  # WRITE or READ
    local: tuple[bytes, int] | None  # (16-byte IP, port) of this process's end, when known
    remote: tuple[bytes, int] | None
    length: int  # bytes the call moved; `data` holds the first MAX_DATA of them
    data: bytes


# --- capability ---------------------------------------------------------------------------------------------
def _kernel_config() -> dict[str, str]:
    """CONFIG_* lines of the running kernel (from /proc/config.gz or /boot/config-RELEASE)."""
    text = ""
    proc = Path("/proc/config.gz")
    boot = Path(f"/boot/config-{os.uname().release}")
    if proc.exists():
        text = gzip.decompress(proc.read_bytes()).decode(errors="replace")
    elif boot.exists():
        text = boot.read_text(errors="replace")
    config = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            config[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:].split(" ")[0]] = "n"
    return config


def ensure_tracefs() -> bool:
    """tracefs mounted at /sys/kernel/tracing (bcc finds tracepoints there); mounts it when it can."""
    if (TRACEFS / "events").is_dir():
        return True
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount(b"nodev", str(TRACEFS).encode(), b"tracefs", 0, None)
    return (TRACEFS / "events").is_dir()


def _bpf_class() -> Any:
    _kernel_headers()  # the same cached headers the capture classifier compiles against
    from bcc import BPF  # Debian's python3-bpfcc, exposed to the venv by tests/setup/bcc_headers.sh

    return BPF


def probe_capability(library: str = DEFAULT_LIBSSL, symbol: str = "SSL_write") -> tuple[bool, str]:
    """Whether uprobes can be attached to `symbol` in `library` here, with a one-line reason."""
    config = _kernel_config()
    for option in ("CONFIG_UPROBES", "CONFIG_UPROBE_EVENTS", "CONFIG_BPF_EVENTS"):
        if config and config.get(option) != "y":
            return (
                False,
                f"uprobes unavailable: kernel built without {option} ({option}={config.get(option)})",
            )
    if not Path(library).exists():
        return False, f"uprobes unavailable: no library at {library}"
    if not ensure_tracefs():
        return False, f"uprobes unavailable: tracefs is not mounted at {TRACEFS} and could not be mounted"
    try:
        bpf_class = _bpf_class()
    except ImportError:
        return False, "uprobes unavailable: bcc is not installed (Debian python3-bpfcc)"
    try:
        bpf = bpf_class(text=b"int probe(struct pt_regs *ctx) { return 0; }")
    except Exception as exc:
        return False, f"uprobes unavailable: bcc could not compile a probe: {_first_line(exc)}"
    try:
        bpf.attach_uprobe(name=library.encode(), sym=symbol.encode(), fn_name=b"probe")
    except Exception as exc:
        return False, f"uprobes unavailable: attaching to {symbol} in {library} failed: {_first_line(exc)}"
    finally:
        _detach_all(bpf)
    return True, f"uprobes work: attached to {symbol} in {library}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _detach_all(bpf: Any) -> None:
    """Detach and free; bcc's own cleanup also writes to uprobe_events, which PMU-attached probes never
    used, so its complaints about that are swallowed here rather than printed at exit."""
    with contextlib.suppress(Exception):
        bpf.cleanup()


# --- the tracer ---------------------------------------------------------------------------------------------
class PlaintextTracer:
    """Attach to libssl (all processes, or one pid) and collect PlaintextEvents until closed."""

    def __init__(self, library: str = DEFAULT_LIBSSL, pid: int | None = None) -> None:
        if not ensure_tracefs():
            raise RuntimeError(f"tracefs is not mounted at {TRACEFS}")
        bpf_class = _bpf_class()
        self.bpf = bpf_class(text=BPF_PROGRAM.encode(), cflags=[f"-DFILTER_TGID={int(pid or 0)}"])
        for symbol, entry, exit_ in SYMBOLS:
            where = {"name": library.encode(), "sym": symbol.encode(), "pid": pid or -1}
            self.bpf.attach_uprobe(fn_name=entry.encode(), **where)
            self.bpf.attach_uretprobe(fn_name=exit_.encode(), **where)
        self.events: list[PlaintextEvent] = []
        self.lost = 0
        self._clock_offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(
            time.CLOCK_MONOTONIC
        )
        self.bpf[b"events"].open_perf_buffer(self._on_event, page_cnt=256, lost_cb=self._on_lost)

    def _on_lost(self, count: int) -> None:
        self.lost += count

    def _on_event(self, _cpu: int, data: Any, size: int) -> None:
        raw = ctypes.string_at(data, size)
        (ts, ssl_ptr, pid, tid, fd, length, captured, direction, known, family, sport, dport, saddr, daddr,
         comm) = _EVENT_HEAD.unpack_from(raw)  # fmt: skip
        local = remote = None
        if known:
            local, remote = (_ip16(family, saddr), sport), (_ip16(family, daddr), dport)
        elif fd >= 0:
            local, remote = socket_tuple(pid, fd) or (None, None)
        self.events.append(
            PlaintextEvent(
                ts_ns=ts + self._clock_offset,
                pid=pid,
                tid=tid,
                comm=comm.split(b"\0", 1)[0].decode(errors="replace"),
                ssl=ssl_ptr,
                fd=fd,
                direction=direction,
                local=local,
                remote=remote,
                length=length,
                data=raw[_EVENT_HEAD.size : _EVENT_HEAD.size + captured],
            )
        )

    def poll(self, timeout_ms: int = 100) -> list[PlaintextEvent]:
        """Read what the kernel has; return the events collected so far (and forget them)."""
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        out, self.events = self.events, []
        return out

    def close(self) -> None:
        _detach_all(self.bpf)

    def __enter__(self) -> PlaintextTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ip16(family: int, raw: bytes) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + raw[:4] if family == socket.AF_INET else raw


def socket_tuple(pid: int, fd: int) -> tuple[tuple[bytes, int], tuple[bytes, int]] | None:
    """(local, remote) of a TCP socket from /proc, for sockets established before the tracer started."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not target.startswith("socket:["):
        return None
    inode = target[8:-1]
    for name, size in (("tcp", 4), ("tcp6", 16)):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[9] == inode:
                    return _proc_address(fields[1], size), _proc_address(fields[2], size)
    return None


def _proc_address(text: str, size: int) -> tuple[bytes, int]:
    """/proc/net/tcp's ADDR:PORT: the address as 32-bit words in host order, the port in hex."""
    address, port = text.split(":")
    raw = b"".join(struct.pack("<I", int(address[i : i + 8], 16)) for i in range(0, len(address), 8))
    return _ip16(socket.AF_INET if size == 4 else socket.AF_INET6, raw), int(port, 16)


# --- into the pipeline --------------------------------------------------------------------------------------
FlowIdOf = Callable[[bytes, int, bytes, int], int]


def store_flow_ids(store: Any) -> FlowIdOf:
    """The packets table's flow id of a TCP 5-tuple, computed by the store's own expression."""
    from netrecall.schema.tables import flow_id_expr

    sql = (
        f"SELECT {flow_id_expr('ip_a', 'port_a', 'ip_b', 'port_b')} FROM (SELECT toUInt8(6) AS l4, "
        "toIPv6({a:String}) AS ip_a, toUInt16({pa:UInt16}) AS port_a, "
        "toIPv6({b:String}) AS ip_b, toUInt16({pb:UInt16}) AS port_b)"
    )

    def flow_id(ip_a: bytes, port_a: int, ip_b: bytes, port_b: int) -> int:
        params = {"a": socket.inet_ntop(socket.AF_INET6, ip_a), "pa": port_a}
        params |= {"b": socket.inet_ntop(socket.AF_INET6, ip_b), "pb": port_b}
        return int(store.scalar(sql, params))

    return flow_id


def plaintext_calls(
    events: Iterable[PlaintextEvent], flow_id_of: FlowIdOf, ctx: Context | None = None
) -> list[Call]:
    """api_calls rows from plaintext: each (process, SSL*) stream replayed as a TCP connection through the
    engine and protocol modules. When both ends of a connection were traced, the client's view is kept."""
    streams: dict[tuple[int, int], list[PlaintextEvent]] = {}
    for event in events:
        if event.local is not None and event.remote is not None:
            streams.setdefault((event.pid, event.ssl), []).append(event)
    views: dict[int, list[tuple[bool, list[Call]]]] = {}
    for stream in streams.values():
        flow_id = flow_id_of(*stream[0].local, *stream[0].remote)  # type: ignore[misc]
        calls = _replay(stream, flow_id, ctx)
        local = stream[0].local
        is_client = any((c["src_ip"], c["src_port"]) == local for c in calls)
        views.setdefault(flow_id, []).append((is_client, calls))
    out: list[Call] = []
    for candidates in views.values():
        chosen = next((calls for is_client, calls in candidates if is_client), candidates[0][1])
        out += chosen
    return out


def _replay(stream: list[PlaintextEvent], flow_id: int, ctx: Context | None) -> list[Call]:
    """One stream as packets: a SYN each way, then each event's bytes at its own sequence numbers (a call
    that moved more than was captured leaves a hole, which the protocol module treats as capture loss)."""
    local, remote = stream[0].local, stream[0].remote
    assert local is not None and remote is not None
    first = stream[0].ts_ns
    packets = [
        (first, local, remote, SYN, 0xFFFFFFFF, b""),
        (first, remote, local, SYN | ACK, 0xFFFFFFFF, b""),
    ]
    next_seq = [0, 0]
    for event in sorted(stream, key=lambda e: e.ts_ns):
        side = 0 if event.direction == WRITE else 1
        src, dst = (local, remote) if side == 0 else (remote, local)
        packets.append((event.ts_ns, src, dst, ACK, next_seq[side], event.data))
        next_seq[side] = (next_seq[side] + event.length) & 0xFFFFFFFF
    last = max(first, stream[-1].ts_ns)
    packets += [
        (last, local, remote, FIN | ACK, next_seq[0], b""),
        (last, remote, local, FIN | ACK, next_seq[1], b""),
    ]
    run = Context(config=ctx.config) if ctx is not None else Context()
    engine = Engine(run)
    engine.process(
        PacketChunk(
            ts=[p[0] for p in packets],
            flow_id=np.full(len(packets), flow_id, dtype=np.uint64),
            l4=[6] * len(packets),
            src_ip=[p[1][0] for p in packets],
            dst_ip=[p[2][0] for p in packets],
            src_port=[p[1][1] for p in packets],
            dst_port=[p[2][1] for p in packets],
            tcp_flags=[p[3] for p in packets],
            tcp_seq=[p[4] for p in packets],
            payload=[p[5] for p in packets],
        )
    )
    engine.finish()
    if ctx is not None:
        ctx.parse_errors.update(run.parse_errors)
    return run.calls
