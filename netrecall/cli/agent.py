"""`netrecall agent run`: the node agent (live capture with Kubernetes identity into a store or hub)."""

from __future__ import annotations

import json
import logging
import socket
import sys
from typing import Annotated

import typer

from netrecall.errors import NetrecallError


def register(app: typer.Typer) -> None:
    agent_app = typer.Typer(help="The node agent: live capture -> store or hub.", no_args_is_help=True)

    @agent_app.command("run")
    def run(
        iface: Annotated[
            str, typer.Option("--iface", help="Interface(s): any, a name, or a comma list with globs (veth*)")
        ] = "any",
        backend: Annotated[
            str, typer.Option("--backend", help="ebpf, afpacket, or auto (eBPF when it loads)")
        ] = "auto",
        snaplen: Annotated[int, typer.Option("--snaplen", help="Bytes kept of each frame")] = 262144,
        store: Annotated[
            str | None,
            typer.Option("--store", help="Store URL to insert into (chdb:///path or http(s)://...)"),
        ] = None,
        hub: Annotated[
            str | None, typer.Option("--hub", help="Hub URL: send batches to its /api/ingest")
        ] = None,
        token: Annotated[
            str | None, typer.Option("--token", help="The hub's ingest token", envvar="NETRECALL_TOKEN")
        ] = None,
        kubeconfig: Annotated[
            str | None, typer.Option("--kubeconfig", help="Watch this cluster for identities")
        ] = None,
        in_cluster: Annotated[
            bool, typer.Option("--in-cluster", help="Use the pod's service account")
        ] = False,
        inventory: Annotated[
            str | None, typer.Option("--inventory", help="Static `kubectl get pods,svc -A -o json` dump")
        ] = None,
        node: Annotated[str | None, typer.Option("--node", help="Node name stored with every packet")] = None,
        duration: Annotated[
            float | None, typer.Option("--duration", help="Stop after this many seconds")
        ] = None,
        spool_dir: Annotated[
            str, typer.Option("--spool-dir", help="On-disk queue for when the sink is down")
        ] = "/var/lib/netrecall/spool",
        spool_max: Annotated[
            str, typer.Option("--spool-max", help="Spool budget (oldest batches dropped beyond it)")
        ] = "1GiB",
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port")
        ] = None,
        batch_rows: Annotated[
            int, typer.Option("--batch-rows", help="Flush a batch at this many packets")
        ] = 20_000,
        batch_seconds: Annotated[
            float, typer.Option("--batch-seconds", help="Flush a batch after this long")
        ] = 1.0,
        exclude: Annotated[
            list[str] | None, typer.Option("--exclude", help="More ip:port whose TCP traffic is not captured")
        ] = None,
        summary_json: Annotated[
            bool, typer.Option("--summary-json", help="Print the final counters as JSON on stdout")
        ] = False,
        log_every: Annotated[
            float, typer.Option("--log-every", help="Seconds between counter log lines")
        ] = 5.0,
        stats_every: Annotated[
            float, typer.Option("--stats-every", help="Seconds between agent_stats rows (agent health)")
        ] = 10.0,
    ) -> None:
        """Capture until SIGTERM (or --duration), deliver every packet, then exit cleanly."""
        from netrecall.agent.run import AgentConfig, run_agent
        from netrecall.timeutil import parse_size_bytes

        if bool(store) == bool(hub):
            raise NetrecallError("give exactly one sink: --store URL or --hub URL --token T")
        if sum(bool(x) for x in (kubeconfig, in_cluster, inventory)) > 1:
            raise NetrecallError(
                "give at most one identity source: --kubeconfig, --in-cluster or --inventory"
            )
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="netrecall-agent: %(message)s")
        config = AgentConfig(
            iface=iface,
            backend=backend,
            snaplen=snaplen,
            store_url=store,
            hub_url=hub,
            token=token,
            kubeconfig=kubeconfig,
            in_cluster=in_cluster,
            inventory=inventory,
            node=node or socket.gethostname(),
            duration_s=duration,
            spool_dir=spool_dir,
            spool_max_bytes=parse_size_bytes(spool_max),
            metrics_port=metrics_port,
            batch_rows=batch_rows,
            batch_seconds=batch_seconds,
            extra_exclude=list(exclude or []),
            log_every_s=log_every,
            stats_every_s=stats_every,
        )
        summary = run_agent(config)
        if summary_json:
            summary["chdb_loaded"] = "chdb" in sys.modules
            print(json.dumps(summary, default=str))

    app.add_typer(agent_app, name="agent")
