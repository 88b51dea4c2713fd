"""The Helm chart (charts/netrecall), rendered by Helm's own Go SDK (helm-python-sdk), for the default
values (bundled ClickHouse) and for an external ClickHouse cluster with compliance schedules:

- every manifest validates strictly (unknown fields are errors) with kubernetes-validate for the oldest
  and the newest Kubernetes it ships schemas for, and is applied with a server-side dry-run (Server-Side
  Apply, `dryRun=All`) to the real kube-apiserver v1.20 the agent tests build;
- values.schema.json refuses a table of bad values (Helm checks it before rendering);
- the RBAC role grants get/list/watch on pods, services, endpointslices, nodes, namespaces and nothing
  else; the agent runs unprivileged with the capabilities of its backend; the ConfigMap carries the
  dashboards; the compliance CronJob runs the command tests/test_compliance.py runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import helm_python
import httpx
import kubernetes_validate
import pytest
import yaml

from tests.kubeapi import start_kube_api

CHART = Path(__file__).resolve().parent.parent / "charts" / "netrecall"
NAMESPACE = "netrecall-chart"
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())  # oldest and newest schemas shipped
EXTERNAL_CLUSTER = {
    "clickhouse": {
        "mode": "external",
        "url": "https://clickhouse.monitoring:8443",
        "cluster": "prod",
        "auth": {"existingSecret": "clickhouse-credentials"},
    },
    "agent": {"backend": "ebpf", "sink": "hub"},
    "hub": {"ingress": {"enabled": True, "host": "netrecall.example.com", "className": "nginx"}},
    "token": {"existingSecret": "netrecall-token", "existingSecretKey": "t"},
    "grafana": {"datasource": {"enabled": True}},
    "compliance": {
        "schedules": [
            {
                "name": "payments-daily",
                "schedule": "0 2 * * *",
                "window": "24h",
                "kfl": 'dst.namespace == "payments" && http',
                "namespaces": ["payments"],
                "ports": [443, 8080],
                "labels": ["app=checkout"],
                "format": "pcapng",
                "reason": "PCI DSS 10.2: daily evidence",
            }
        ]
    },
}
S3 = {
    "compliance": {
        "destination": {
            "type": "s3",
            "s3": {"bucket": "evidence", "endpoint": "http://minio.storage:9000", "existingSecret": "s3"},
        },
        "schedules": [{"name": "hourly", "schedule": "@hourly", "window": "1h"}],
    }
}
VALUE_SETS = {"default": {}, "external-cluster": EXTERNAL_CLUSTER, "s3": S3}


def render(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values, name="netrecall", namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(values: dict) -> str:
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values, name="netrecall", namespace=NAMESPACE, is_install=True)
    return rendered["netrecall/templates/NOTES.txt"]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(VALUE_SETS[request.param])


def test_chart_lints_clean() -> None:
    report = helm_python.lint(CHART, strict=True)
    assert not report["errors"]
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(rendered, version: str) -> None:
    _, objects = rendered
    assert len(objects) >= 8
    for obj in objects:
        # raises ValidationError naming the field (unknown fields included: strict)
        kubernetes_validate.validate(obj, version, strict=True)


def test_default_install_has_every_component(rendered) -> None:
    name, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert {
        "DaemonSet",
        "Deployment",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
        "ConfigMap",
    } <= kinds
    if name == "default":
        assert {"StatefulSet", "PriorityClass", "Secret"} <= kinds
        (job,) = by_kind(objects, "Job")
        assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
        assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["schema", "migrate"]
    if name == "external-cluster":
        assert "StatefulSet" not in kinds and "Ingress" in kinds
        assert not [s for s in by_kind(objects, "Secret")]  # both secrets are the user's own


def test_rbac_is_read_only_on_the_five_kinds(rendered) -> None:
    _, objects = rendered
    (role,) = by_kind(objects, "ClusterRole")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("", "pods"),
        ("", "services"),
        ("", "nodes"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
    }
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}
    assert not by_kind(objects, "Role")  # no namespaced grants hiding elsewhere


def test_agent_daemonset_captures_with_the_least_privilege(rendered) -> None:
    name, objects = rendered
    (agent,) = by_kind(objects, "DaemonSet")
    pod = agent["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert pod["hostNetwork"] is True and security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    added = set(security["capabilities"]["add"])
    if name == "external-cluster":  # backend ebpf
        assert added == {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"}
    else:  # auto: eBPF, else AF_PACKET
        assert added == {"NET_RAW", "BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"}
        assert "--backend=auto" in container["args"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/sys/fs/bpf", "/sys/kernel"} <= mounts
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] and container["resources"]["limits"]["memory"]


def test_store_url_names_the_cluster_and_takes_credentials_from_the_secret(rendered) -> None:
    name, objects = rendered
    (hub,) = by_kind(objects, "Deployment")
    env = {e["name"]: e for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
    url = env["NETRECALL_STORE"]["value"]
    assert "$(CLICKHOUSE_USER):$(CLICKHOUSE_PASSWORD)@" in url
    assert env["CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    if name == "external-cluster":
        assert (
            url
            == "https://$(CLICKHOUSE_USER):$(CLICKHOUSE_PASSWORD)@clickhouse.monitoring:8443/netrecall?cluster=prod"
        )
        assert env["CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "clickhouse-credentials"
    probes = hub["spec"]["template"]["spec"]["containers"][0]
    assert (
        probes["readinessProbe"]["httpGet"]["path"]
        == probes["livenessProbe"]["httpGet"]["path"]
        == "/healthz"
    )
    args = probes["args"]
    assert "--retention-ttl=72h" in args and "--retention-max-bytes=50GiB" in args


def test_generated_token_secret_and_notes() -> None:
    objects = render({})
    secret = next(s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "netrecall-token")
    import base64

    assert len(base64.b64decode(secret["data"]["token"])) == 40
    text = notes({})
    assert "claude mcp add --transport http netrecall http://127.0.0.1:8080/mcp" in text
    assert f"kubectl -n {NAMESPACE} port-forward svc/netrecall-hub 8080:8080" in text


def test_dashboards_configmap_carries_every_dashboard() -> None:
    objects = render({})
    (config_map,) = [
        c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == "netrecall-dashboards"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = {p.name: json.loads(p.read_text()) for p in (CHART / "dashboards").glob("*.json")}
    assert {k: json.loads(v) for k, v in config_map["data"].items()} == shipped


def test_compliance_cronjob_runs_the_export_with_its_schedule() -> None:
    objects = render(EXTERNAL_CLUSTER)
    (cron,) = by_kind(objects, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (export,) = pod["initContainers"]
    assert export["args"] == [
        "export",
        "pcap",
        "--output=/exports/payments-daily-{time}.pcapng",
        "--format=pcapng",
        "--since=-24h",
        "--until=now",
        "--schedule=payments-daily",
        "--reason=PCI DSS 10.2: daily evidence",
        '--kfl=dst.namespace == "payments" && http',
        "--label=app=checkout",
        "--namespace=payments",
        "--port=443",
        "--port=8080",
        "--output-format=json",
    ]
    (prune,) = pod["containers"]
    assert prune["args"] == ["export", "prune", "/exports", "--schedule=payments-daily", "--older-than=90d"]
    s3 = by_kind(render(S3), "CronJob")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert s3["containers"][0]["args"][-2:] == ["/exports", "s3://evidence/netrecall/hourly/"]


BAD_VALUES = [
    ({"agent": {"backend": "pcap"}}, "backend"),
    ({"agent": {"sink": "kafka"}}, "sink"),
    ({"agent": {"snaplen": 10}}, "snaplen"),
    ({"agent": {"spoolMax": "lots"}}, "spoolMax"),
    ({"agent": {"resources": {"limits": {"memory": "a lot"}}}}, "memory"),
    ({"agent": {"unknownKey": 1}}, "unknownKey"),
    ({"retention": {"ttl": "3 days"}}, "ttl"),
    ({"retention": {"maxBytes": "big"}}, "maxBytes"),
    ({"clickhouse": {"mode": "embedded"}}, "mode"),
    ({"clickhouse": {"database": "net-recall"}}, "database"),
    ({"clickhouse": {"mode": "external"}}, "url"),
    ({"clickhouse": {"mode": "external", "url": "http://ch:8123"}}, "existingSecret"),
    ({"clickhouse": {"cluster": "prod"}}, "cluster"),  # a cluster needs an external ClickHouse
    ({"clickhouse": {"auth": {"password": "p@ss:word"}}}, "password"),
    ({"hub": {"replicas": 3}}, "replicas"),
    ({"hub": {"service": {"type": "Magic"}}}, "type"),
    ({"token": {"value": "short"}}, "token"),
    ({"compliance": {"destination": {"type": "ftp"}}}, "type"),
    ({"compliance": {"keep": "forever"}}, "keep"),
    ({"compliance": {"schedules": [{"name": "x", "schedule": "daily", "window": "1h"}]}}, "schedule"),
    ({"compliance": {"schedules": [{"name": "Bad_Name", "schedule": "@daily", "window": "1h"}]}}, "name"),
    ({"compliance": {"schedules": [{"name": "x", "schedule": "@daily"}]}}, "window"),
    (
        {"compliance": {"schedules": [{"name": "x", "schedule": "@daily", "window": "1h", "pods": ["web"]}]}},
        "pods",
    ),
    (
        {
            "compliance": {
                "schedules": [{"name": "x", "schedule": "@daily", "window": "1h", "ports": [70000]}]
            }
        },
        "ports",
    ),
    ({"grafana": {"dashboards": {"enabled": "yes"}}}, "enabled"),
]


@pytest.mark.parametrize("values,field", BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_values_schema_refuses_bad_values(values: dict, field: str) -> None:
    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmError) as refused:
        chart.render(values, name="netrecall", namespace=NAMESPACE, is_install=True)
    assert field in str(refused.value), str(refused.value)


def test_values_schema_covers_every_value() -> None:
    """Every key of values.yaml is declared in the schema (objects refuse unknown keys)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        if isinstance(value, dict) and node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, node["properties"][key], f"{path}.{key}")

    walk(defaults, schema, "")


# --- server-side dry-run against the real kube-apiserver -------------------------------------------------

RESOURCES = {  # kind -> (API path prefix, plural, namespaced)
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Service": ("/api/v1", "services", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "PriorityClass": ("/apis/scheduling.k8s.io/v1", "priorityclasses", False),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "CronJob": ("/apis/batch/v1beta1", "cronjobs", True),  # batch/v1 CronJob arrived in 1.21
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses", True),
}


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("the kube-apiserver tests run as root (make test)")
    api = start_kube_api(tmp_path_factory.mktemp("kube-chart"))
    with httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {api.token}"}, verify=False, timeout=30
    ) as client:
        created = client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}})
        assert created.status_code in (201, 409), created.text
        yield client
    api.stop()


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_manifests_apply_with_server_side_dry_run(kube: httpx.Client, values_name: str) -> None:
    objects = render(VALUE_SETS[values_name])
    applied = []
    for obj in objects:
        prefix, plural, namespaced = RESOURCES[obj["kind"]]
        if obj["kind"] == "CronJob":  # the 1.20 server only has batch/v1beta1 (the chart picks it there)
            obj = {**obj, "apiVersion": "batch/v1beta1"}
        where = f"/namespaces/{NAMESPACE}" if namespaced else ""
        answer = kube.patch(
            f"{prefix}{where}/{plural}/{obj['metadata']['name']}",
            params={"dryRun": "All", "fieldManager": "netrecall-chart-test"},
            content=yaml.safe_dump(obj),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        assert answer.status_code in (200, 201), f"{obj['kind']}/{obj['metadata']['name']}: {answer.text}"
        applied.append(answer.json()["kind"])
    assert sorted(applied) == sorted(o["kind"] for o in objects)
    # dry-run: nothing was stored
    assert kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets").json()["items"] == []


def test_dry_run_refuses_what_the_server_would_refuse(kube: httpx.Client) -> None:
    """The dry-run is a real check: a DaemonSet with an invalid field value is refused by the server."""
    (agent,) = by_kind(render({}), "DaemonSet")
    agent["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000
    answer = kube.patch(
        f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{agent['metadata']['name']}",
        params={"dryRun": "All", "fieldManager": "netrecall-chart-test"},
        content=yaml.safe_dump(agent),
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert answer.status_code == 422 and "containerPort" in answer.text
