# The image the Helm chart runs (agent, hub, migration Job, export CronJobs): netrecall in a venv on
# Debian 12 (Python 3.11), with Debian's bcc for the eBPF backend exposed to the venv the way
# tests/setup/bcc_headers.sh does it (only the `bcc` package, never PyPI's unrelated `bcc`).
# The node's kernel headers are mounted by the chart (agent.mountKernelHeaders); without them the agent's
# `--backend auto` falls back to AF_PACKET. Not built on the project's machines (they have no Docker engine).
FROM debian:12-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-bpfcc ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN python3 -m venv /opt/netrecall \
    && /opt/netrecall/bin/pip install --no-cache-dir /src \
    && mkdir -p /opt/bcc-shim \
    && ln -s /usr/lib/python3/dist-packages/bcc /opt/bcc-shim/bcc \
    && echo /opt/bcc-shim > "$(/opt/netrecall/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/netrecall-bcc.pth" \
    && rm -rf /src

ENV PATH=/opt/netrecall/bin:$PATH \
    NETRECALL_HOME=/var/lib/netrecall
ENTRYPOINT ["netrecall"]
