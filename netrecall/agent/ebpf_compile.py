"""Compile and load the capture classifier with bcc in a short-lived helper process.

bcc compiles C with an embedded clang/LLVM: loading and running it costs the calling process well over
100 MB that it never gives back. The agent runs this module as a child instead: the child compiles and
loads the programs and maps, hands their file descriptors to the agent over a Unix socket
(SCM_RIGHTS), and exits; the kernel objects live on through the agent's descriptors.

Run as `python -m netrecall.agent.ebpf_compile FD JSON` with FD one end of a socketpair and JSON
{"program": C text, "cflags": [...]}; it sends {"ok": true} with the descriptors
[ingress program, egress program, frames map, l2len map], or {"error": message}.
"""

from __future__ import annotations

import json
import socket
import sys


def main() -> int:
    sock = socket.socket(fileno=int(sys.argv[1]))
    request = json.loads(sys.argv[2])
    try:
        from bcc import BPF
    except ImportError:
        sock.sendall(json.dumps({"error": "bcc is not installed (Debian python3-bpfcc)"}).encode())
        return 1
    try:
        bpf = BPF(text=request["program"], cflags=request["cflags"])
        ingress = bpf.load_func("nr_ingress", BPF.SCHED_CLS)
        egress = bpf.load_func("nr_egress", BPF.SCHED_CLS)
        fds = [ingress.fd, egress.fd, bpf["frames"].map_fd, bpf["l2len"].map_fd]
    except Exception as exc:
        text = str(exc).strip()
        sock.sendall(json.dumps({"error": text.splitlines()[0] if text else type(exc).__name__}).encode())
        return 1
    socket.send_fds(sock, [json.dumps({"ok": True}).encode()], fds)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
