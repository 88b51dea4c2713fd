"""A real kube-apiserver (v1.20.2, built from Debian's source package by tests/setup/kube_apiserver.sh)
with Debian's etcd, on private ports, for the agent's identity tests.

Token auth, AlwaysAllow authorization, a throwaway service-account key, self-signed serving certs, and
no watch cache (watches read etcd, so compacting etcd produces a real 410 Gone for an old version).
No controller-manager, scheduler or kubelet: tests create Pods with a nodeName and set their status
through the status subresource, as a kubelet would.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("NETRECALL_CACHE", "/var/cache/netrecall"))
APISERVER = CACHE / "kube-apiserver"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class KubeAPI:
    host: str
    port: int
    token: str
    kubeconfig: Path
    workdir: Path
    etcd: subprocess.Popen
    apiserver: subprocess.Popen
    etcd_url: str

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def client(self):
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)

    def delete(self, path: str) -> None:
        """DELETE an API path directly (the generated client cannot parse a 1.20 server's Status reply to
        a service deletion)."""
        import httpx

        answer = httpx.delete(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"}, verify=False, timeout=10
        )
        answer.raise_for_status()

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (as etcd does on a schedule): every older resourceVersion
        is gone, so a watch resumed from one gets a real 410. Returns the revision."""
        import httpx

        head = httpx.post(f"{self.etcd_url}/v3/kv/range", json={"key": "AA=="}, timeout=5).json()
        revision = int(head["header"]["revision"])
        answer = httpx.post(
            f"{self.etcd_url}/v3/kv/compaction", json={"revision": revision, "physical": True}, timeout=10
        )
        answer.raise_for_status()
        return revision

    def stop(self) -> None:
        for proc in (self.apiserver, self.etcd):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_kube_api(workdir: Path, host: str = "127.0.0.1") -> KubeAPI:
    if not APISERVER.exists():
        pytest.fail(f"{APISERVER} is missing: `make test` builds it (tests/setup/kube_apiserver.sh)")
    etcd_bin = shutil.which("etcd")
    if not etcd_bin:
        pytest.fail("etcd is not installed: `make test` installs Debian's etcd-server")
    workdir.mkdir(parents=True, exist_ok=True)
    client_port, peer_port = _free_port("127.0.0.1"), _free_port("127.0.0.1")
    etcd_url = f"http://127.0.0.1:{client_port}"
    etcd = subprocess.Popen(
        [
            etcd_bin,
            "--data-dir",
            str(workdir / "etcd"),
            "--listen-client-urls",
            etcd_url,
            "--advertise-client-urls",
            etcd_url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "etcd.log").open("wb"),
    )
    key = workdir / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    token = secrets.token_hex(16)
    (workdir / "tokens.csv").write_text(f'{token},admin,1,"system:masters"\n')
    port = _free_port(host)
    apiserver = subprocess.Popen(
        [
            str(APISERVER),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            f"--secure-port={port}",
            "--insecure-port=0",
            f"--cert-dir={workdir / 'certs'}",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            "--authorization-mode=AlwaysAllow",
            f"--service-account-key-file={key}",
            f"--service-account-signing-key-file={key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=netrecall",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--watch-cache=false",
            "--v=0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "apiserver.log").open("wb"),
    )
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: t\n  cluster:\n    server: https://{host}:{port}\n"
        "    insecure-skip-tls-verify: true\n"
        f"users:\n- name: t\n  user:\n    token: {token}\n"
        "contexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n"
    )
    api = KubeAPI(host, port, token, kubeconfig, workdir, etcd, apiserver, etcd_url)
    deadline = time.monotonic() + 90
    import httpx

    while time.monotonic() < deadline:
        if apiserver.poll() is not None:
            api.stop()
            log = (workdir / "apiserver.log").read_text()[-2000:]
            pytest.fail(f"kube-apiserver exited: {log}")
        try:
            ready = httpx.get(
                f"{api.url}/readyz", headers={"Authorization": f"Bearer {token}"}, verify=False, timeout=2
            )
            namespaces = httpx.get(
                f"{api.url}/api/v1/namespaces/default",
                headers={"Authorization": f"Bearer {token}"},
                verify=False,
                timeout=2,
            )
            if ready.status_code == 200 and namespaces.status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    api.stop()
    pytest.fail("kube-apiserver did not become ready in 90 s")


def pod_manifest(name: str, labels: dict[str, str], node: str = "node-1") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example.invalid/app:1"}]},
    }


def set_pod_running(core, name: str, ip: str, host_ip: str) -> None:
    """What a kubelet would do: report the pod running with its IP (status subresource)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.patch_namespaced_pod_status(
        name,
        "default",
        {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": host_ip,
                "startTime": now,
            }
        },
    )
