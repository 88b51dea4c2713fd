"""Export against tshark: real captures imported, then exported with filters, compared packet by packet
with what `tshark -r IN -Y FILTER -w OUT` writes; files written must open cleanly in tshark and capinfos."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import DPKT_EXAMPLES, require_tool
from export_helpers import (
    EXPORT_CAPTURES,
    MapResolver,
    assert_same_packets,
    load,
    packets,
    tool_warnings,
    tshark_select,
)

from netrecall.errors import NetrecallError
from netrecall.query.export import export_pcap, verify_export
from netrecall.query.selection import PacketFilters
from netrecall.timeutil import format_time_ns

NO_ICMP = "not icmp and not icmpv6"  # ICMP errors quote a UDP/TCP header: tshark matches its ports too

CASES = [
    # (capture, export filters, tshark display filter)
    (DPKT_EXAMPLES / "http.pcap", {"ips": ["145.254.160.237"]}, "ip.addr==145.254.160.237"),
    (DPKT_EXAMPLES / "http.pcap", {"ips": ["216.239.0.0/16"]}, "ip.addr==216.239.0.0/16"),
    (DPKT_EXAMPLES / "http.pcap", {"ports": [80]}, "tcp.port==80 or udp.port==80"),
    (DPKT_EXAMPLES / "http.pcap", {"ports": [53], "proto": "udp"}, "udp.port==53"),
    (DPKT_EXAMPLES / "dns_icmp.pcap", {"proto": "icmp"}, "icmp or icmpv6"),
    (
        DPKT_EXAMPLES / "dns_icmp.pcap",
        {"ips": ["8.8.8.8", "4.2.2.2"]},
        "ip.addr==8.8.8.8 or ip.addr==4.2.2.2",
    ),
    (DPKT_EXAMPLES / "dns_icmp.pcap", {"ports": [53]}, f"(udp.port==53 or tcp.port==53) and {NO_ICMP}"),
    (
        DPKT_EXAMPLES / "nb6-http.pcap",
        {"ips": ["10.251.23.139"], "ports": [80]},
        "ip.addr==10.251.23.139 and tcp.port==80",
    ),
    (DPKT_EXAMPLES / "nb6-http.pcap", {"ips": ["95.136.242.0/24"]}, "ip.addr==95.136.242.0/24"),
    (DPKT_EXAMPLES / "truncated_dns.pcap", {"ports": [53]}, "udp.port==53"),
    (EXPORT_CAPTURES / "veth-ns.pcap", {"ips": ["fd77::2"]}, "ipv6.addr==fd77::2"),
    (EXPORT_CAPTURES / "veth-ns.pcap", {"ips": ["fd77::/64"]}, "ipv6.addr==fd77::/64"),
    (EXPORT_CAPTURES / "veth-ns.pcap", {"ips": ["10.77.0.2"]}, "ip.addr==10.77.0.2"),
    (
        EXPORT_CAPTURES / "veth-ns.pcap",
        {"ips": ["10.77.0.0/24", "fd77::1"]},
        "ip.addr==10.77.0.0/24 or ipv6.addr==fd77::1",
    ),
    (EXPORT_CAPTURES / "veth-ns.pcap", {"ports": [8080]}, "tcp.port==8080"),
    (EXPORT_CAPTURES / "veth-ns.pcap", {"proto": "udp"}, f"udp and {NO_ICMP}"),
    (EXPORT_CAPTURES / "veth-ns.pcap", {"proto": "icmp"}, "icmp or icmpv6"),
    (
        EXPORT_CAPTURES / "veth-ns.pcap",
        {"ports": [9999, 9998]},
        f"(udp.port==9999 or udp.port==9998) and {NO_ICMP}",
    ),
    (
        EXPORT_CAPTURES / "veth-ns.pcap",
        {"ips": ["fd77::1"], "proto": "tcp"},
        f"ipv6.addr==fd77::1 and tcp and {NO_ICMP}",
    ),
    (EXPORT_CAPTURES / "lo-mixed.pcapng", {"ips": ["::1"]}, "ipv6.addr==::1"),
    (
        EXPORT_CAPTURES / "lo-mixed.pcapng",
        {"ips": ["127.0.0.1"], "ports": [18080]},
        "ip.addr==127.0.0.1 and tcp.port==18080",
    ),
    (EXPORT_CAPTURES / "any-sll2.pcap", {"ports": [18080]}, "tcp.port==18080"),
]


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("tshark", "capinfos", "mergecap", "editcap"):
        require_tool(tool)


def _window(path: Path, first: int, last: int) -> tuple[str, str, str]:
    """--since/--until halfway between packets (so float rounding in tshark cannot matter), and the filter."""
    stamps = sorted({p[0] for p in packets(path)})
    since = (stamps[first - 1] + stamps[first]) // 2
    until = (stamps[last - 1] + stamps[last]) // 2
    expression = f"frame.time_epoch >= {since / 1e9:.9f} and frame.time_epoch < {until / 1e9:.9f}"
    return format_time_ns(since), format_time_ns(until), expression


@pytest.mark.parametrize(
    ("capture", "filters", "display_filter"), CASES, ids=lambda v: str(getattr(v, "name", v))
)
def test_export_matches_tshark(store, tmp_path, capture, filters, display_filter):
    load(store, capture)
    reference = tshark_select(capture, display_filter, tmp_path / "ref.pcapng")
    assert reference, "each case selects at least one packet"
    for fmt in ("pcap", "pcapng"):
        result = export_pcap(store, tmp_path / f"out.{fmt}", PacketFilters(**filters), fmt=fmt)
        assert result.packets == len(reference)
        assert_same_packets(packets(result.path), reference)
        assert tool_warnings(result.path) == []


@pytest.mark.parametrize(
    ("capture", "first", "last", "extra", "extra_filter"),
    [
        (DPKT_EXAMPLES / "http.pcap", 5, 25, {}, ""),
        (
            DPKT_EXAMPLES / "http.pcap",
            3,
            30,
            {"ips": ["65.208.228.223"], "ports": [80]},
            "ip.addr==65.208.228.223 and tcp.port==80",
        ),
        (EXPORT_CAPTURES / "veth-ns.pcap", 10, 60, {}, ""),
        (
            EXPORT_CAPTURES / "veth-ns.pcap",
            5,
            90,
            {"ips": ["fd77::/64"], "proto": "tcp"},
            f"ipv6.addr==fd77::/64 and tcp and {NO_ICMP}",
        ),
        (EXPORT_CAPTURES / "lo-mixed.pcapng", 4, 30, {"ports": [18080]}, "tcp.port==18080"),
    ],
)
def test_time_window_and_combined_filters_match_tshark(
    store, tmp_path, capture, first, last, extra, extra_filter
):
    load(store, capture)
    since, until, window = _window(capture, first, last)
    display_filter = f"({window}) and ({extra_filter})" if extra_filter else window
    reference = tshark_select(capture, display_filter, tmp_path / "ref.pcapng")
    assert reference
    result = export_pcap(store, tmp_path / "out.pcap", PacketFilters(since=since, until=until, **extra))
    assert_same_packets(packets(result.path), reference)


@pytest.mark.parametrize("capture", [DPKT_EXAMPLES / "http.pcap", EXPORT_CAPTURES / "veth-ns.pcap"])
def test_unfiltered_export_is_the_original_capture(store, tmp_path, capture):
    load(store, capture)
    result = export_pcap(store, tmp_path / "all.pcap", PacketFilters())
    assert_same_packets(packets(result.path), packets(capture))
    head = Path(result.path).read_bytes()[:4]
    assert head == bytes.fromhex("4d3cb2a1")  # nanosecond pcap magic, little-endian


def test_nodes_merge_in_time_order_like_mergecap(store, tmp_path):
    """Two nodes whose packets interleave: pcapng gets one interface per node, order is mergecap's."""
    original = EXPORT_CAPTURES / "veth-ns.pcap"
    shifted = tmp_path / "shifted.pcap"
    subprocess.run(
        ["editcap", "-F", "nsecpcap", "-t", "0.000731", str(original), str(shifted)],
        check=True,
        capture_output=True,
    )
    load(store, original, node="node-a")
    load(store, shifted, node="node-b")
    merged = tmp_path / "merged.pcapng"
    subprocess.run(
        ["mergecap", "-w", str(merged), str(original), str(shifted)], check=True, capture_output=True
    )
    result = export_pcap(store, tmp_path / "both.pcapng", PacketFilters(), fmt="pcapng")
    assert_same_packets(packets(result.path), packets(merged))
    assert result.nodes == ["node-a", "node-b"]
    info = subprocess.run(["capinfos", "-I", result.path], capture_output=True, text=True, check=True).stdout
    assert "node-a" in info and "node-b" in info
    assert tool_warnings(result.path) == []
    only_b = export_pcap(store, tmp_path / "b.pcap", PacketFilters(nodes=["node-b"]))
    assert_same_packets(packets(only_b.path), packets(shifted))


def test_pcap_refuses_mixed_link_types_pcapng_carries_them(store, tmp_path):
    load(store, EXPORT_CAPTURES / "any-sll2.pcap")
    load(store, EXPORT_CAPTURES / "lo-mixed.pcapng")
    with pytest.raises(NetrecallError, match=r"link types.*--format pcapng"):
        export_pcap(store, tmp_path / "mixed.pcap", PacketFilters(ports=[18080]))
    assert not (tmp_path / "mixed.pcap").exists() and not (tmp_path / "mixed.pcap.tmp").exists()
    result = export_pcap(store, tmp_path / "mixed.pcapng", PacketFilters(ports=[18080]), fmt="pcapng")
    merged = tmp_path / "merged.pcapng"
    subprocess.run(
        [
            "mergecap",
            "-w",
            str(merged),
            str(EXPORT_CAPTURES / "any-sll2.pcap"),
            str(EXPORT_CAPTURES / "lo-mixed.pcapng"),
        ],
        check=True,
        capture_output=True,
    )
    assert_same_packets(
        packets(result.path), tshark_select(merged, "tcp.port==18080", tmp_path / "ref.pcapng")
    )
    assert {p[1] for p in packets(result.path)} == {1, 276}
    flags = subprocess.run(
        ["tshark", "-r", result.path, "-T", "fields", "-e", "frame.packet_flags_direction"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    inbound = store.scalar(
        "SELECT countIf(direction = 'in') FROM packets WHERE 18080 IN (src_port, dst_port)"
    )
    assert flags.count("0x00000001") == inbound > 0  # the captured direction rides in epb_flags
    assert tool_warnings(result.path) == []


PODS = {
    "10.77.0.1": ("shop", "client-1", {"app": "client"}),
    "fd77::1": ("shop", "client-1", {"app": "client"}),
    "10.77.0.2": ("shop", "server-1", {"app": "server", "tier": "web"}),
    "fd77::2": ("shop", "server-1", {"app": "server", "tier": "web"}),
}
SERVER = "ip.addr==10.77.0.2 or ipv6.addr==fd77::2"


@pytest.mark.parametrize(
    ("filters", "display_filter"),
    [
        ({"pods": ["shop/server-1"]}, SERVER),
        ({"labels": ["app=server"]}, SERVER),
        ({"labels": ["app=server", "tier=web"]}, SERVER),
        ({"namespaces": ["shop"]}, "ip.addr==10.77.0.0/24 or ipv6.addr==fd77::/64"),
        (
            {"pods": ["shop/client-1"], "proto": "udp"},
            f"(ip.addr==10.77.0.1 or ipv6.addr==fd77::1) and udp and {NO_ICMP}",
        ),
    ],
)
def test_identity_filters_use_capture_time_identity(store, tmp_path, filters, display_filter):
    capture = EXPORT_CAPTURES / "veth-ns.pcap"
    load(store, capture, resolver=MapResolver(PODS))
    reference = tshark_select(capture, display_filter, tmp_path / "ref.pcapng")
    result = export_pcap(store, tmp_path / "out.pcap", PacketFilters(**filters))
    assert_same_packets(packets(result.path), reference)


def test_annotate_names_both_workloads(store, tmp_path):
    load(store, EXPORT_CAPTURES / "veth-ns.pcap", resolver=MapResolver(PODS))
    result = export_pcap(
        store,
        tmp_path / "a.pcapng",
        PacketFilters(ips=["10.77.0.2"], ports=[8080]),
        fmt="pcapng",
        annotate=True,
    )
    comments = subprocess.run(
        ["tshark", "-r", result.path, "-T", "fields", "-e", "frame.comment", "-e", "tcp.srcport"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(comments) == result.packets > 0
    for line in comments:
        comment, sport = line.split("\t")
        if sport == "8080":
            assert (
                comment
                == f"netrecall: shop/server-1 (10.77.0.2:8080) -> shop/client-1 (10.77.0.1:{_port(comment)})"
            )
        else:
            assert (
                comment == f"netrecall: shop/client-1 (10.77.0.1:{sport}) -> shop/server-1 (10.77.0.2:8080)"
            )
    assert tool_warnings(result.path) == []


def _port(comment: str) -> str:
    return comment.rsplit(":", 1)[1].rstrip(")")


def test_kfl_selects_the_flows_behind_matching_calls(store, tmp_path):
    """--kfl: the packets of the flows whose API calls match (calls written here as the dissector would)."""
    capture = EXPORT_CAPTURES / "veth-ns.pcap"
    load(store, capture)
    # one call per HTTP flow on port 8080, status 200 for v4 and 404 for v6
    store.command(
        "INSERT INTO api_calls (id, ts, protocol, src_ip, src_port, dst_ip, dst_port, status_code, flow_id) "
        "SELECT toString(flow_id), min(ts), 'http', any(src_ip), any(src_port), any(dst_ip), 8080, "
        "if(any(ip_version) = 4, 200, 404), flow_id FROM packets WHERE dst_port = 8080 GROUP BY flow_id"
    )
    result = export_pcap(store, tmp_path / "k.pcap", PacketFilters(kfl="http && status_code == 404"))
    reference = tshark_select(capture, "ipv6 and tcp.port==8080", tmp_path / "ref.pcapng")
    assert_same_packets(packets(result.path), reference)


def test_manifest_audit_row_and_verify(store, tmp_path):
    load(store, DPKT_EXAMPLES / "http.pcap")
    filters = PacketFilters(ips=["65.208.228.223"], ports=[80])
    result = export_pcap(store, tmp_path / "evidence.pcapng", filters, fmt="pcapng")
    manifest = json.loads(Path(result.manifest_path).read_text())
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(Path(result.path).read_bytes()).hexdigest()
    assert manifest["packets"] == result.packets == len(packets(result.path))
    assert manifest["filters"] == {"ips": ["65.208.228.223"], "ports": [80]}
    assert manifest["window"]["since"].startswith("2004-05-13T10:17:07")
    assert manifest["store"] == store.address.display
    assert "@" in manifest["created_by"] and manifest["netrecall_version"]
    assert manifest["captured_bytes"] == sum(len(p[3]) for p in packets(result.path))
    row = store.dicts("SELECT * FROM exports")
    assert len(row) == 1 and row[0]["sha256"] == result.sha256 and row[0]["packets"] == result.packets
    assert verify_export(result.path).ok
    on_behalf = export_pcap(store, tmp_path / "hub.pcap", filters, created_by="token:alice")
    assert json.loads(Path(on_behalf.manifest_path).read_text())["created_by"] == "token:alice"
    assert store.scalar(
        "SELECT created_by FROM exports WHERE sha256 = {s:String}", {"s": on_behalf.sha256}
    ) == ("token:alice")

    data = bytearray(Path(result.path).read_bytes())
    data[-10] ^= 0xFF  # one flipped bit of payload
    Path(result.path).write_bytes(bytes(data))
    check = verify_export(result.path)
    assert not check.ok and any(d.startswith("sha256 is") for d in check.differences)


def test_export_matching_nothing_writes_a_valid_empty_file(store, tmp_path):
    load(store, DPKT_EXAMPLES / "http.pcap")
    for fmt in ("pcap", "pcapng"):
        result = export_pcap(store, tmp_path / f"none.{fmt}", PacketFilters(ports=[4444]), fmt=fmt)
        assert result.packets == 0 and "no packet matched" in result.note
        assert packets(result.path) == []
        assert tool_warnings(result.path) == []
        assert verify_export(result.path).ok


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"ips": ["10.0.0.300"]}, "invalid --ip"),
        ({"ips": ["10.0.0.0/33"]}, "invalid --ip"),
        ({"ports": ["http"]}, "invalid --port"),
        ({"ports": [70000]}, "invalid --port"),
        ({"labels": ["app"]}, "invalid --label"),
        ({"pods": ["nobody"]}, "invalid --pod"),
        ({"pods": ["shop/ghost"]}, "unknown pod shop/ghost"),
        ({"namespaces": ["ghost"]}, "unknown namespace"),
        ({"proto": "sctp"}, "invalid --proto"),
        ({"since": "2004-05-13T10:17:30Z", "until": "2004-05-13T10:17:10Z"}, "empty window"),
        ({"since": "2020-01-01T00:00:00Z"}, "outside the stored data"),
        ({"nodes": ["elsewhere"]}, "no packets stored for node elsewhere"),
        ({"snapshot": "nope"}, "no snapshot named 'nope'"),
    ],
)
def test_bad_filters_fail_in_one_line_and_leave_nothing(store, tmp_path, filters, message):
    load(store, DPKT_EXAMPLES / "http.pcap")
    with pytest.raises(NetrecallError, match=message) as caught:
        export_pcap(store, tmp_path / "out.pcap", PacketFilters(**filters))
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_fails_before_querying(store, tmp_path):
    load(store, DPKT_EXAMPLES / "http.pcap")
    with pytest.raises(NetrecallError, match="does not exist"):
        export_pcap(store, tmp_path / "missing" / "out.pcap", PacketFilters())
    with pytest.raises(NetrecallError, match="is a directory"):
        export_pcap(store, tmp_path, PacketFilters())


@pytest.mark.parametrize(
    ("kfl", "display_filter"),
    [
        ('http && path.contains("pagead")', "ip.addr==216.239.59.99"),
        ('dst.ip == "65.208.228.223"', "ip.addr==65.208.228.223 and tcp.port==3372"),
        ("dns", "dns"),
    ],
)
def test_kfl_over_dissected_calls_matches_tshark(store, tmp_path, kfl, display_filter):
    """Import, dissect for real, then --kfl: the flows behind the matching calls, live and in a snapshot."""
    from netrecall.dissect.runner import dissect
    from netrecall.query.snapshots import create_snapshot

    capture = DPKT_EXAMPLES / "http.pcap"
    load(store, capture)
    dissect(store)
    reference = tshark_select(capture, display_filter, tmp_path / "ref.pcapng")
    live = export_pcap(store, tmp_path / "live.pcap", PacketFilters(kfl=kfl))
    assert_same_packets(packets(live.path), reference)
    create_snapshot(store, "kfl", packets(capture)[0][0], packets(capture)[-1][0] + 1)
    store.command("TRUNCATE TABLE api_calls")
    frozen = export_pcap(store, tmp_path / "snap.pcap", PacketFilters(kfl=kfl, snapshot="kfl"))
    assert Path(frozen.path).read_bytes() == Path(live.path).read_bytes()
