"""The operations behind the hub's REST routes and the MCP tools, over one open store.

`Service` and `netrecall.hub.client.HubClient` have the same methods with the same arguments and return
the same JSON-ready dicts: the MCP server and the CLI work against either (local store or a running hub).
Every answer that carries call contents goes through redaction unless it was switched off.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.query import rca
from netrecall.query.redact import redact_call
from netrecall.store import Store
from netrecall.timeutil import format_time_ns, parse_duration_ns, parse_time_ns

DEFAULT_CALL_LIMIT = 50
MAX_CALL_LIMIT = 1000
MAX_SQL_ROWS = 10_000
MAX_PAYLOAD = 1 << 20


def time_ns(value: Any) -> int | None:
    """RFC 3339, relative ('-30m'), epoch seconds, or already nanoseconds (int) -> ns; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    return parse_time_ns(str(value))


def jsonable(value: Any) -> Any:
    from netrecall.cli.common import plain

    return plain(value)


class DissectJobs:
    """Dissection runs in a background thread, one at a time; callers poll its status by job id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.running: str | None = None

    def start(self, store: Store, args: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.running is not None:
                return {**self.jobs[self.running], "already_running": True}
            job_id = uuid.uuid4().hex[:12]
            job = {
                "job": job_id,
                "state": "running",
                "started": format_time_ns(time.time_ns()),
                "args": {k: v for k, v in args.items() if v is not None},
            }
            self.jobs[job_id] = job
            self.running = job_id
        threading.Thread(
            target=self._run, args=(store, job_id, dict(args)), name=f"dissect-{job_id}", daemon=True
        ).start()
        return dict(job)

    def _run(self, store: Store, job_id: str, args: dict[str, Any]) -> None:
        from netrecall.dissect.runner import dissect

        job = self.jobs[job_id]
        try:
            summary = dissect(
                store,
                since_ns=args.get("since_ns"),
                until_ns=args.get("until_ns"),
                node=args.get("node"),
                snapshot=args.get("snapshot"),
            )
            job["summary"] = _summary_dict(summary)
            job["state"] = "done"
        except NetrecallError as exc:
            job.update(state="failed", error=str(exc))
        except Exception as exc:  # the thread must never die silently; the client sees a one-liner
            import logging

            logging.getLogger("netrecall.hub").exception("dissect job %s failed", job_id)
            job.update(state="failed", error=f"internal error: {type(exc).__name__}")
        finally:
            job["finished"] = format_time_ns(time.time_ns())
            with self._lock:
                self.running = None

    def status(self, job_id: str | None) -> dict[str, Any]:
        if job_id is None:
            latest = list(self.jobs.values())[-10:]
            return {"running": self.running, "jobs": [dict(j) for j in reversed(latest)]}
        if job_id not in self.jobs:
            raise NetrecallError(f"no dissect job with id {job_id!r}")
        return dict(self.jobs[job_id])


def _summary_dict(summary: Any) -> dict[str, Any]:
    if summary is None:
        return {}
    if isinstance(summary, Mapping):
        return jsonable(dict(summary))
    if hasattr(summary, "as_dict"):
        return jsonable(summary.as_dict())
    if hasattr(summary, "__dataclass_fields__"):
        from dataclasses import asdict

        return jsonable(asdict(summary))
    return {"text": str(summary)}


class Service:
    """Every hub operation over one store. Blocking: the hub runs these in its threadpool."""

    def __init__(self, store: Store, redact: bool = True, exports_dir: Path | None = None) -> None:
        from netrecall.config import exports_dir as default_exports

        self.store = store
        self.redact = redact
        self.exports_dir = Path(exports_dir or default_exports())
        self.dissect_jobs = DissectJobs()

    # --- calls -----------------------------------------------------------------------------------
    def boundaries(self, snapshot: str | None = None) -> dict[str, Any]:
        """For packets, API calls and flows: first and last time and how many rows; plus the nodes."""
        from netrecall.query.bounds import data_boundaries, source_table

        answer: dict[str, Any] = {}
        spans = []
        for table in ("packets", "api_calls", "flows"):
            span = data_boundaries(self.store, table, snapshot or None)
            spans += [span] if span else []
            name, condition, params = source_table(self.store, table, snapshot or None)
            count = int(self.store.scalar(f"SELECT count() FROM {name} WHERE {condition}", params) or 0)
            answer[table] = {
                "count": count,
                "first": format_time_ns(span[0]) if span else None,
                "last": format_time_ns(span[1]) if span else None,
            }
        name, condition, params = source_table(self.store, "packets", snapshot or None)
        answer["nodes"] = [
            r[0]
            for r in self.store.rows(
                f"SELECT DISTINCT node FROM {name} WHERE {condition} ORDER BY node LIMIT 100", params
            )
        ]
        if spans:
            # start/end to pass on to cover everything stored (end is exclusive, hence the extra ns)
            answer["window"] = {
                "start": format_time_ns(min(s[0] for s in spans)),
                "end": format_time_ns(max(s[1] for s in spans) + 1),
            }
        if answer["packets"]["count"] and not answer["api_calls"]["count"]:
            answer["hint"] = "packets are stored but not dissected yet: run start_snapshot_dissection"
        return answer

    def calls(
        self,
        kfl: str = "",
        since: Any = None,
        until: Any = None,
        limit: int = DEFAULT_CALL_LIMIT,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        from netrecall.query.calls import list_calls

        limit = _bounded(limit, MAX_CALL_LIMIT, "limit")
        answer = dict(
            list_calls(
                self.store,
                kfl=kfl or "",
                since_ns=time_ns(since),
                until_ns=time_ns(until),
                limit=limit,
                snapshot=snapshot or None,
            )
        )
        answer["calls"] = [self._redact(c) for c in answer.get("calls", [])]
        if answer.get("truncated"):
            answer.setdefault(
                "hint", "narrow with kfl (e.g. 'http && status_code >= 500'), since/until, or raise limit"
            )
        return jsonable(answer)

    def call(
        self,
        call_id: str,
        include_payload: bool = False,
        max_payload_size: int = 4096,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        from netrecall.query.calls import get_call

        max_payload_size = _bounded(max_payload_size, MAX_PAYLOAD, "max_payload_size", minimum=0)
        found = get_call(
            self.store,
            call_id,
            include_payload=include_payload,
            max_payload_size=max_payload_size,
            snapshot=snapshot or None,
        )
        if not found:
            raise NetrecallError(f"no call with id {call_id!r}")
        return jsonable(self._redact(found))

    def _redact(self, call: Mapping[str, Any]) -> dict[str, Any]:
        return redact_call(call) if self.redact else dict(call)

    def sql(self, query: str, max_rows: int = 500) -> dict[str, Any]:
        from netrecall.query.sqlguard import run_readonly

        max_rows = _bounded(max_rows, MAX_SQL_ROWS, "max_rows")
        return jsonable(run_readonly(self.store, query, max_rows))

    # --- identities and flows --------------------------------------------------------------------
    def workloads(self, namespace: str | None = None, at: Any = None, limit: int = 200) -> dict[str, Any]:
        limit = _bounded(limit, MAX_CALL_LIMIT, "limit")
        where = ["1"]
        params: dict[str, Any] = {"lim": limit}
        if namespace:
            where.append("namespace = {ns:String}")
            params["ns"] = namespace
        at_ns = time_ns(at)
        if at_ns is not None:
            where.append(
                "valid_from <= fromUnixTimestamp64Nano({at:Int64}) "
                "AND valid_to > fromUnixTimestamp64Nano({at:Int64})"
            )
            params["at"] = at_ns
        else:
            where.append("valid_to >= toDateTime64('2262-01-01 00:00:00', 9)")  # still valid now
        rows = self.store.dicts(
            f"""SELECT kind, namespace, name, ip, node, owner, services, labels, host_network,
                       toUnixTimestamp64Nano(valid_from) AS valid_from_ns,
                       count() OVER () AS total
                FROM workloads FINAL WHERE {" AND ".join(where)}
                ORDER BY namespace, kind, name, ip LIMIT {{lim:UInt32}}""",
            params,
        )
        total = rows[0]["total"] if rows else 0
        items = []
        for r in rows:
            item = {k: v for k, v in r.items() if k not in ("total", "valid_from_ns")}
            item["ip"] = rca._ip(r["ip"])
            # an alias must not shadow the column the WHERE compares, hence valid_from_ns
            item["valid_from"] = rca._ts(int(r["valid_from_ns"]))
            items.append(item)
        return jsonable({"workloads": items, "total": total, "truncated": total > len(items)})

    def ips(self, since: Any = None, until: Any = None, limit: int = 100, snapshot: str | None = None):
        scope = rca.Scope(since_ns=time_ns(since), until_ns=time_ns(until), snapshot=snapshot or None)
        return jsonable(rca.list_ips(self.store, scope, limit))

    def flows(
        self,
        since: Any = None,
        until: Any = None,
        ip: str | None = None,
        port: int | None = None,
        aggregate: bool | str | None = False,
        limit: int = 100,
        snapshot: str | None = None,
        l4proto: str | None = None,
        ns: str | None = None,
        pod: str | None = None,
        svc: str | None = None,
        failing: bool = False,
    ) -> dict[str, Any]:
        """L4 flows with their TCP health; aggregate by workload (true), pod, namespace, node or service."""
        from netrecall.query.l4 import l4_flows

        return jsonable(
            l4_flows(
                self.store,
                time_ns(since),
                time_ns(until),
                ip=ip or None,
                port=port,
                aggregate=flow_aggregate(aggregate),
                l4proto=l4proto or None,
                ns=ns or None,
                pod=pod or None,
                svc=svc or None,
                failing=bool(failing),
                limit=limit,
                snapshot=snapshot or None,
            )
        )

    # --- latency and change ----------------------------------------------------------------------
    def latency(
        self,
        since: Any = None,
        until: Any = None,
        kfl: str = "",
        src: str | None = None,
        dst: str | None = None,
        protocol: str | None = None,
        by_route: bool = True,
        step: str | None = None,
        limit: int = 20,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        """p50/p90/p99, rate and failures per workload edge (netrecall.query.latency)."""
        from netrecall.query.latency import edge_latency

        return jsonable(
            edge_latency(
                self.store,
                time_ns(since),
                time_ns(until),
                snapshot=snapshot or None,
                kfl=kfl or "",
                src=src or None,
                dst=dst or None,
                protocol=protocol or None,
                by_route=by_route,
                step=step or None,
                limit=limit,
            )
        )

    def slow_edges(
        self,
        since: Any = None,
        until: Any = None,
        baseline_since: Any = None,
        baseline_until: Any = None,
        kfl: str = "",
        limit: int = 10,
        tail: int = 3,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        """The edges whose latency rose most against a baseline, with the calls of their tail."""
        from netrecall.query.latency import latency_changes

        answer = latency_changes(
            self.store,
            time_ns(since),
            time_ns(until),
            time_ns(baseline_since),
            time_ns(baseline_until),
            snapshot=snapshot or None,
            kfl=kfl or "",
            limit=limit,
            tail=_bounded(tail, 20, "tail", minimum=0),
        )
        if self.redact:
            from netrecall.query.redact import redact_url

            for edge in answer["edges"]:
                for call in edge.get("tail", []):
                    call["path"] = redact_url(call["path"])
        return jsonable(answer)

    def changes(
        self,
        since: Any = None,
        until: Any = None,
        baseline_since: Any = None,
        baseline_until: Any = None,
        kfl: str = "",
        limit: int = 15,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        """What changed between the window and its baseline, ranked (netrecall.query.changes)."""
        from netrecall.query.changes import compare_windows

        return jsonable(
            compare_windows(
                self.store,
                time_ns(since),
                time_ns(until),
                time_ns(baseline_since),
                time_ns(baseline_until),
                snapshot=snapshot or None,
                kfl=kfl or "",
                limit=limit,
            )
        )

    # --- root cause ------------------------------------------------------------------------------
    def stats(self, kfl: str = "", since: Any = None, until: Any = None, snapshot: str | None = None):
        scope = rca.Scope(
            since_ns=time_ns(since), until_ns=time_ns(until), snapshot=snapshot or None, kfl=kfl
        )
        return jsonable(rca.api_stats(self.store, scope))

    def errors(
        self,
        kfl: str = "",
        since: Any = None,
        until: Any = None,
        limit: int = 20,
        snapshot: str | None = None,
        include_4xx: bool = True,
    ) -> dict[str, Any]:
        scope = rca.Scope(
            since_ns=time_ns(since), until_ns=time_ns(until), snapshot=snapshot or None, kfl=kfl
        )
        return jsonable(self._redact_samples(rca.summarize_errors(self.store, scope, limit, include_4xx)))

    def _redact_samples(self, answer: dict[str, Any]) -> dict[str, Any]:
        if self.redact:
            from netrecall.query.redact import redact_url

            for group in answer.get("groups", []):
                group["sample"] = redact_url(group.get("sample", ""))
        return answer

    def dns_failures(
        self,
        kfl: str = "",
        since: Any = None,
        until: Any = None,
        limit: int = 20,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        scope = rca.Scope(
            since_ns=time_ns(since), until_ns=time_ns(until), snapshot=snapshot or None, kfl=kfl
        )
        return jsonable(rca.dns_failures(self.store, scope, limit))

    def trace(self, call_id: str, window: str = "5s", limit: int = 50, snapshot: str | None = None):
        if parse_duration_ns(window) > parse_duration_ns("10m"):
            raise NetrecallError("window is at most 10m: trace a call, not an hour")
        answer = rca.trace_call(self.store, call_id, window, limit, snapshot or None)
        if self.redact:
            from netrecall.query.redact import redact_url

            for event in answer["events"]:
                if "path" in event:
                    event["path"] = redact_url(event["path"])
        return jsonable(answer)

    # --- snapshots -------------------------------------------------------------------------------
    def snapshots(self) -> dict[str, Any]:
        from netrecall.query import snapshots

        found = [jsonable(_snapshot_row(s)) for s in snapshots.list_snapshots(self.store)]
        return {"snapshots": found, "total": len(found)}

    def snapshot(self, name: str) -> dict[str, Any]:
        from netrecall.query import snapshots

        snapshots.check_name(name)
        for row in snapshots.list_snapshots(self.store):
            if row["name"] == name:
                return jsonable(_snapshot_row(row))
        raise NetrecallError(f"no snapshot named {name!r}")

    def create_snapshot(
        self,
        name: str,
        last: str | None = None,
        since: Any = None,
        until: Any = None,
        nodes: list[str] | None = None,
        note: str = "",
        created_by: str = "hub",
        partial: bool = False,
    ):
        from netrecall.query import snapshots

        since_ns, until_ns = snapshots.resolve_window(last, _text(since), _text(until))
        info = snapshots.create_snapshot(
            self.store,
            name,
            since_ns,
            until_ns,
            nodes=list(nodes or []),
            allow_partial=partial,
            note=note or f"created through {created_by}",
        )
        answer = _as_dict(info)
        answer["since"], answer["until"] = format_time_ns(info.since_ns), format_time_ns(info.until_ns)
        answer.pop("since_ns", None)
        answer.pop("until_ns", None)
        return jsonable(answer)

    def delete_snapshot(self, name: str) -> dict[str, Any]:
        from netrecall.query import snapshots

        snapshots.delete_snapshot(self.store, name)
        return {"deleted": name}

    # --- dissection ------------------------------------------------------------------------------
    def start_dissect(
        self, since: Any = None, until: Any = None, node: str | None = None, snapshot: str | None = None
    ) -> dict[str, Any]:
        return self.dissect_jobs.start(
            self.store,
            {
                "since_ns": time_ns(since),
                "until_ns": time_ns(until),
                "node": node or None,
                "snapshot": snapshot or None,
            },
        )

    def dissect_status(self, job: str | None = None) -> dict[str, Any]:
        return self.dissect_jobs.status(job or None)

    # --- PCAP export -----------------------------------------------------------------------------
    def export_pcap(
        self,
        kfl: str = "",
        nodes: list[str] | None = None,
        ips: list[str] | None = None,
        ports: list[int] | None = None,
        pods: list[str] | None = None,
        labels: list[str] | None = None,
        since: Any = None,
        until: Any = None,
        snapshot: str | None = None,
        fmt: str = "pcap",
        created_by: str = "hub",
        partial: bool = False,
    ) -> dict[str, Any]:
        """Write a PCAP under the exports directory; the name is ours, never the caller's."""
        from netrecall.hub.exporting import export_to_dir

        return jsonable(
            export_to_dir(
                self.store,
                self.exports_dir,
                kfl=kfl,
                nodes=nodes,
                ips=ips,
                ports=ports,
                pods=pods,
                labels=labels,
                since_ns=time_ns(since),
                until_ns=time_ns(until),
                snapshot=snapshot or None,
                fmt=fmt,
                created_by=created_by,
                partial=partial,
            )
        )

    def export_file(self, name: str) -> Path:
        """The path of an export by its bare file name, confined to the exports directory."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise NetrecallError(f"no export named {name!r}")
        path = (self.exports_dir / name).resolve()
        if path.parent != self.exports_dir.resolve() or not path.is_file():
            raise NetrecallError(f"no export named {name!r}")
        return path


def flow_aggregate(value: bool | str | None) -> str | None:
    """Kubeshark's aggregate (pod, namespace, node, service), netrecall's workload, or a boolean: true is
    per workload pair (the earlier form of the parameter), false none."""
    if value is None or value is False or value == "":
        return None
    if value is True:
        return "workload"
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return "workload"
    if text in ("false", "0", "no", "none"):
        return None
    return text


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _snapshot_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("since", "until", "created_at"):
        if key in out:
            out[key] = rca._ts(out[key])
    return out


def _bounded(value: Any, maximum: int, name: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NetrecallError(f"{name} must be an integer") from None
    if number < minimum:
        raise NetrecallError(f"{name} must be at least {minimum}")
    return min(number, maximum)


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if hasattr(item, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(item)
    raise TypeError(f"cannot turn {type(item).__name__} into a dict")
