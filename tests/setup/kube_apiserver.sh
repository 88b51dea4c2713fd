#!/bin/bash
# Build a real kube-apiserver (v1.20.2) from Debian's `kubernetes` source package, once, into
# $NETRECALL_CACHE/kube-apiserver (default /var/cache/netrecall). Later runs reuse the binary.
# Why from source: no kube-apiserver binary ships in the registries reachable here, and the agent's
# watcher must be tested against the real list/watch/410-Gone behaviour (DESIGN §8).
set -euo pipefail
CACHE=${NETRECALL_CACHE:-/var/cache/netrecall}
OUT="$CACHE/kube-apiserver"
if [ -x "$OUT" ]; then
    exit 0
fi
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
mkdir -p "$CACHE"
missing=$(for p in golang-go rsync etcd-server dpkg-dev; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
# `apt-get source` needs a deb-src entry; add one mirroring the configured bookworm sources.
SRC_LIST=/etc/apt/sources.list.d/netrecall-src.sources
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $SUDO tee "$SRC_LIST" >/dev/null
    $SUDO apt-get update -qq
fi
WORK="$CACHE/kube-build"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
apt-get source --download-only kubernetes >/dev/null
dpkg-source --no-check -x kubernetes_*.dsc src >/dev/null
cd src
# Kubernetes 1.20 builds in GOPATH mode with its vendor tree (hack/ sets up its own GOPATH under _output).
export GO111MODULE=off GOFLAGS=-mod=vendor GOCACHE="$WORK/gocache" KUBE_GIT_VERSION=v1.20.2 \
    KUBE_GIT_TREE_STATE=clean KUBE_BUILD_PLATFORMS=linux/amd64
unset GOFLAGS
make WHAT=cmd/kube-apiserver >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
bin=$(find _output -type f -name kube-apiserver -perm -u+x | head -1)
[ -n "$bin" ] || { echo "kube-apiserver binary not found after build" >&2; exit 1; }
install -m 0755 "$bin" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cd /
rm -rf "$WORK"
echo "built $OUT"
