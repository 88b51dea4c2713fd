#!/bin/bash
# Kernel headers for bcc, once, under $NETRECALL_CACHE/kernel-headers (default /var/cache/netrecall).
# The running kernel ships BTF but no headers, and bcc compiles its C against a kernel tree: Debian's
# linux-headers-6.1 (the closest series the archive has) works for TC classifiers (DESIGN §8).
# Also exposes Debian's python3-bpfcc (never the unrelated PyPI `bcc`) to the venv through a .pth file
# pointing at a directory that holds only a `bcc` symlink, so no other Debian package leaks in.
# Prints the BCC_KERNEL_SOURCE path on success.
set -euo pipefail
CACHE=${NETRECALL_CACHE:-/var/cache/netrecall}
VENV=${1:-.venv}
DEST="$CACHE/kernel-headers"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if ! dpkg -s python3-bpfcc >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-bpfcc >/dev/null
fi
# The venv sees only bcc from Debian's dist-packages.
SHIM="$CACHE/bcc-shim"
mkdir -p "$SHIM"
ln -sfn /usr/lib/python3/dist-packages/bcc "$SHIM/bcc"
if [ -d "$VENV" ]; then
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$SHIM" > "$site/netrecall-bcc.pth"
fi
if [ -f "$DEST/.complete" ]; then
    echo "$DEST/usr/src/linux-headers-common"
    exit 0
fi
apt-get update -qq >/dev/null 2>&1 || true
# Pick the newest 6.1 ABI the archive offers (the running kernel is newer than any Debian headers).
abi=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' \
    | sed -E 's/linux-headers-(6\.1\.0-[0-9]+)-amd64/\1/' | sort -V | tail -1)
[ -n "$abi" ] || { echo "no linux-headers-6.1.0-*-amd64 package in the apt lists" >&2; exit 1; }
WORK="$CACHE/kernel-headers.tmp"
rm -rf "$WORK"
mkdir -p "$WORK/debs" "$WORK/root"
(cd "$WORK/debs" && apt-get download -qq "linux-headers-$abi-amd64" "linux-headers-$abi-common" linux-kbuild-6.1 >/dev/null 2>&1)
for deb in "$WORK"/debs/*.deb; do
    dpkg-deb -x "$deb" "$WORK/root"
done
common="$WORK/root/usr/src/linux-headers-$abi-common"
amd64="$WORK/root/usr/src/linux-headers-$abi-amd64"
# Merge the arch-specific generated headers and config into the common tree.
cp -a "$amd64/include/." "$common/include/"
cp -a "$amd64/arch/." "$common/arch/"
cp -a "$amd64/.config" "$common/.config"
[ -f "$amd64/Module.symvers" ] && cp -a "$amd64/Module.symvers" "$common/"
mv "$common" "$WORK/root/usr/src/linux-headers-common"
rm -rf "$DEST"
mv "$WORK/root" "$DEST"
rm -rf "$WORK"
touch "$DEST/.complete"
echo "$DEST/usr/src/linux-headers-common"
