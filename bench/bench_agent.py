"""The node agent under a fixed-rate packet stream, per backend, side by side with tcpdump.

A generator (iperf3, UDP, 100-byte payloads, paced) in one namespace "pod" sends at a fixed packet rate
to an iperf3 server in another pod; the agent captures the sender's host-side veth in the node namespace
and ships to a remote store (the ClickHouse HTTP front, its own process: the agent does not load chDB).
tcpdump captures the same interface at the same time, writing a pcap. For each rate: packets sent,
captured, dropped (kernel + user space), the agent's CPU (% of one core, over the traffic window only)
and peak RSS, and tcpdump's.

Targets: peak RSS at most 200 MB at 50k packets/s with a remote sink (each backend). Also printed: the
highest rate each backend held with zero drops (stepping up until drops appear).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, print_table, verdict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent_helpers import Proc  # noqa: E402 - the same process helpers the tests use
from tests.netlab import NetLab  # noqa: E402

RATES_REPORTED = (10_000, 50_000)
RATE_STEPS = (10_000, 25_000, 50_000, 75_000, 100_000, 150_000)
SECONDS = 4
PAYLOAD = 100
RSS_TARGET_MB = 200
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _hwm_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(lab: NetLab, backend: str, rate: int, sink_url: str, work: Path) -> dict:
    veth = lab.pods["a"].host_veth
    spool = work / f"spool-{backend}-{rate}"
    agent = Proc(
        lab.node(
            sys.executable,
            "-m",
            "netrecall",
            "agent",
            "run",
            "--iface",
            veth,
            "--backend",
            backend,
            "--store",
            sink_url,
            "--spool-dir",
            str(spool),
            "--summary-json",
            "--log-every",
            "60",
            "--node",
            "bench",
        )
    )
    agent.wait_for("capturing with", 120)
    dump = Proc(lab.node("tcpdump", "-i", veth, "-s", "262144", "-n", "-w", str(work / "tcpdump.pcap")))
    dump.wait_for("listening on", 20)
    time.sleep(0.5)
    cpu0 = {"agent": _cpu_ticks(agent.proc.pid), "tcpdump": _cpu_ticks(dump.proc.pid)}
    started = time.monotonic()
    # iperf3: a C sender with a pacing timer holds a fixed packet rate where a Python loop cannot
    generator = subprocess.run(
        lab.in_pod(
            "a",
            "iperf3",
            "-c",
            lab.pods["b"].ip,
            "-u",
            "-l",
            str(PAYLOAD),
            "-b",
            str(rate * PAYLOAD * 8),
            "-t",
            str(SECONDS),
            "--pacing-timer",
            "200",
            "-J",
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    time.sleep(1.0)  # let both drain what the kernel holds
    window = time.monotonic() - started
    cpu1 = {"agent": _cpu_ticks(agent.proc.pid), "tcpdump": _cpu_ticks(dump.proc.pid)}
    rss = {"agent": _hwm_mb(agent.proc.pid), "tcpdump": _hwm_mb(dump.proc.pid)}
    dump.stop(signal.SIGINT)
    agent.stop(timeout=120)
    summary = agent.summary()
    counters = summary.get("counters", {})
    sent = int(json.loads(generator.stdout)["end"]["sum"]["packets"])
    for _ in range(40):  # tcpdump prints its counts on exit; the reader thread may lag a moment
        if "captured" in dump.text():
            break
        time.sleep(0.05)
    tcpdump_text = dump.text()

    def total(name: str) -> int:
        return sum(counters.get(name, {}).values())

    got = re.search(r"(\d+) packets? captured", tcpdump_text)
    kdrop = re.search(r"(\d+) packets? dropped by kernel", tcpdump_text)
    return {
        "sent": sent,
        "rate": sent / SECONDS,
        "agent_captured": total("captured_packets"),
        "agent_drops": total("kernel_drops") + total("userspace_drops"),
        "agent_inserted": total("inserted_packets"),
        "agent_cpu": 100.0 * (cpu1["agent"] - cpu0["agent"]) / TICKS / window,
        "agent_rss": rss["agent"],
        "tcpdump_captured": int(got.group(1)) if got else 0,
        "tcpdump_drops": int(kdrop.group(1)) if kdrop else 0,
        "tcpdump_cpu": 100.0 * (cpu1["tcpdump"] - cpu0["tcpdump"]) / TICKS / window,
        "tcpdump_rss": rss["tcpdump"],
        "chdb_loaded": summary.get("chdb_loaded"),
        "backend": summary.get("backend"),
    }


def _backends() -> list[str]:
    try:
        import bcc  # noqa: F401

        return ["afpacket", "ebpf"]
    except ImportError:
        print("  bcc is not importable: eBPF backend skipped (run `make bench`, which links Debian's bcc)")
        return ["afpacket"]


def run() -> bool:
    if os.geteuid() != 0:
        print("  needs root (network namespaces, packet capture)")
        return False
    work = OUT / "agent"
    work.mkdir(parents=True, exist_ok=True)
    lab = NetLab().up()
    lab.add_pod("a", 10)
    lab.add_pod("b", 11)
    holder = subprocess.Popen(
        lab.in_pod("b", "iperf3", "-s", "-B", lab.pods["b"].ip),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port = _free_port()
    front_path = work / "front"
    front = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "chfront.py"),
            "--path",
            str(front_path),
            "--host",
            lab.uplink_root_ip,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sink = f"http://{lab.uplink_root_ip}:{port}/netrecall"
    ok = True
    rows = []
    best: dict[str, int] = {}
    try:
        for _ in range(100):
            try:
                socket.create_connection((lab.uplink_root_ip, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        for backend in _backends():
            results: dict[int, dict] = {}
            for rate in RATE_STEPS:
                result = _measure(lab, backend, rate, sink, work)
                results[rate] = result
                held = result["agent_drops"] == 0 and result["agent_captured"] >= result["sent"]
                if held:
                    best[backend] = int(result["rate"])
                if not held and rate >= max(RATES_REPORTED):
                    break
            for rate in RATES_REPORTED:
                r = results[rate]
                rows.append(
                    [
                        backend,
                        f"{r['rate']:,.0f}",
                        r["sent"],
                        r["agent_captured"],
                        r["agent_drops"],
                        r["agent_cpu"],
                        r["agent_rss"],
                        r["tcpdump_captured"],
                        r["tcpdump_drops"],
                        r["tcpdump_cpu"],
                        r["tcpdump_rss"],
                    ]
                )
            r50 = results[max(RATES_REPORTED)]
            ok &= verdict(
                f"{backend} RSS <= {RSS_TARGET_MB} MB at 50k pkt/s (remote sink)",
                r50["agent_rss"] <= RSS_TARGET_MB and r50["chdb_loaded"] is False,
                f"{r50['agent_rss']:.0f} MB, chDB loaded: {r50['chdb_loaded']}",
            )
            (work / f"results-{backend}.json").write_text(json.dumps(results, indent=1))
        print_table(
            "agent vs tcpdump on one veth, UDP 142-byte frames, remote store sink",
            [
                "backend",
                "rate/s",
                "sent",
                "captured",
                "drops",
                "cpu %",
                "rss MB",
                "tcpdump cap",
                "tcpdump drops",
                "tcpdump cpu %",
                "tcpdump rss MB",
            ],
            rows,
        )
        for backend, rate in best.items():
            print(f"  {backend}: highest rate held with zero drops: {rate:,} pkt/s (steps {RATE_STEPS})")
    finally:
        front.terminate()
        holder.terminate()
        front.wait(10)
        holder.wait(10)
        lab.down()
    return ok
