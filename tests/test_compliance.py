"""Scheduled compliance exports: the chart's CronJob command lines, run end to end.

The export's args are rendered from the chart (helm-python-sdk) and run as they are, against a local
store holding the demo capture (NETRECALL_STORE, as the pod's env gives it); only the volume's mount
point (/exports) is a temporary directory here. The file must verify against its manifest, and the
manifest and the `exports` audit row must name the schedule, the reason and each other (audit id).
Then the prune container's args run: nothing recent is deleted, an export older than `keep` is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_chart import render

SCHEDULE = {
    "name": "dns-evidence",
    "schedule": "0 3 * * *",
    "window": "3650d",  # the demo capture is from a fixed past date: a window that reaches it from now
    "kfl": "dns",
    "reason": "incident INC-42: DNS failures",
}


def _run(args: list[str], store_url: str, exports: Path) -> subprocess.CompletedProcess:
    local = [a.replace("/exports", str(exports)) for a in args]
    return subprocess.run(
        [sys.executable, "-m", "netrecall", *local],
        capture_output=True,
        text=True,
        timeout=300,
        env={"NETRECALL_STORE": store_url, "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture(scope="module")
def cronjob_pod() -> dict:
    objects = render({"compliance": {"schedules": [SCHEDULE], "keep": "30d"}})
    (cron,) = [o for o in objects if o["kind"] == "CronJob"]
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"chdb://{tmp_path_factory.mktemp('compliance') / 'store'}"
    done = subprocess.run(
        [sys.executable, "-m", "netrecall", "demo", "--store", url, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return url


def _sql(store_url: str, query: str) -> list[list]:
    done = subprocess.run(
        [sys.executable, "-m", "netrecall", "sql", "--store", store_url, "--format", "json", query],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["rows"]


def test_cronjob_export_runs_verifies_and_is_audited(cronjob_pod, demo_url, tmp_path: Path) -> None:
    (export,) = cronjob_pod["initContainers"]
    done = _run(export["args"], demo_url, tmp_path)
    assert done.returncode == 0, done.stderr
    (summary,) = (
        json.loads(done.stdout) if done.stdout.lstrip().startswith("[") else [json.loads(done.stdout)]
    )
    out = Path(summary["file"])
    assert out.parent == tmp_path and out.name.startswith("dns-evidence-") and out.suffix == ".pcap"
    # the KFL `dns` selects the DNS flows: every UDP/53 packet of the demo, nothing else
    (expected,) = _sql(demo_url, "SELECT count() FROM packets WHERE l4 = 17 AND 53 IN (src_port, dst_port)")[
        0
    ]
    assert summary["packets"] == expected > 0

    verified = subprocess.run(
        [sys.executable, "-m", "netrecall", "export", "verify", str(out)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr

    manifest = json.loads(Path(summary["manifest"]).read_text())
    assert manifest["schedule"] == "dns-evidence" and manifest["reason"] == SCHEDULE["reason"]
    assert manifest["filters"]["kfl"] == "dns" and manifest["sha256"] == summary["sha256"]
    rows = _sql(
        demo_url,
        "SELECT toString(id), schedule, reason, sha256, packets, file FROM exports ORDER BY created_at",
    )
    assert rows == [
        [manifest["audit_id"], "dns-evidence", SCHEDULE["reason"], summary["sha256"], expected, str(out)]
    ]


def test_prune_keeps_recent_exports_and_deletes_old_ones(cronjob_pod, demo_url, tmp_path: Path) -> None:
    (export,) = cronjob_pod["initContainers"]
    (prune,) = cronjob_pod["containers"]
    assert prune["args"] == ["export", "prune", "/exports", "--schedule=dns-evidence", "--older-than=30d"]
    done = _run(export["args"], demo_url, tmp_path)
    assert done.returncode == 0, done.stderr
    (recent,) = sorted(tmp_path.glob("*.pcap"))
    other = tmp_path / "by-hand.pcap"
    other.write_bytes(recent.read_bytes())
    by_hand = json.loads(Path(str(recent) + ".manifest.json").read_text())
    by_hand.update(schedule="", created_at="2020-01-01T00:00:00Z")  # old, but not this schedule's
    Path(str(other) + ".manifest.json").write_text(json.dumps(by_hand))

    kept = _run(prune["args"], demo_url, tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert recent.exists() and other.exists()

    manifest_path = Path(str(recent) + ".manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["created_at"] = "2020-01-01T00:00:00Z"  # as if written years ago
    manifest_path.write_text(json.dumps(manifest))
    pruned = _run(prune["args"], demo_url, tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert not recent.exists() and not manifest_path.exists()
    assert other.exists()  # another schedule's (or a hand-made) export is not this CronJob's to delete
    # the audit rows stay: the evidence that the file existed and what it held outlives the file
    audit = _sql(demo_url, "SELECT file, schedule FROM exports WHERE schedule = 'dns-evidence'")
    assert [str(recent), "dns-evidence"] in audit
