#!/bin/sh
# Installs and prepares what the eBPF exporter needs on a Debian host; safe to run again.
# BCC from Debian, kernel headers, the build/source links BCC looks for, tracefs and bpffs, and a
# .pth so the project venv imports bcc.
set -eu
VENV="${1:-$(dirname "$0")/../.venv}"
KERNEL="$(uname -r)"
# No Debian package matches our kernels. Debian's BCC 0.26 is built for Debian's own 6.1 kernel: its
# clang rejects newer headers (6.12's break stock tools such as tcplife), so 6.1 is the closest
# that works. Our program reads only tracepoint arguments, so the layout mismatch does not reach it.
SERIES="6.1"

headers_dir() {
    ls -d /usr/src/linux-headers-"$SERIES".*-amd64 2>/dev/null | sort -V | tail -n1
}

if [ ! -f /usr/lib/python3/dist-packages/bcc/__init__.py ] || [ ! -x /usr/sbin/tcplife-bpfcc ] \
    || ! command -v bpftool >/dev/null 2>&1 || [ -z "$(headers_dir)" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    headers="linux-headers-$KERNEL"
    if ! apt-cache show "$headers" >/dev/null 2>&1; then
        headers="$(apt-cache search --names-only "^linux-headers-$SERIES\.[0-9.+-]*-amd64\$" \
            | awk '{print $1}' | sort -V | tail -n1)"
    fi
    apt-get install -y -q --no-install-recommends python3-bpfcc bpfcc-tools bpftool "$headers" >/dev/null
fi

# BCC compiles against /lib/modules/<running kernel>/{build,source}; point them where the headers'
# own links point (Debian splits them into -amd64 and -common).
if [ -e "/lib/modules/$KERNEL/kernel" ]; then
    : # a real module tree for this kernel: leave it alone
else
    hdr="$(headers_dir)"
    version="${hdr#/usr/src/linux-headers-}"
    mkdir -p "/lib/modules/$KERNEL"
    ln -sfn "$(readlink -f "/lib/modules/$version/build")" "/lib/modules/$KERNEL/build"
    ln -sfn "$(readlink -f "/lib/modules/$version/source")" "/lib/modules/$KERNEL/source"
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf bpffs /sys/fs/bpf

# Only the bcc package, not all of Debian's dist-packages, goes on the venv's path.
if [ -d "$VENV" ]; then
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    mkdir -p "$VENV/debian-bcc"
    ln -sfn /usr/lib/python3/dist-packages/bcc "$VENV/debian-bcc/bcc"
    echo "$(cd "$VENV" && pwd)/debian-bcc" > "$site/debian-bcc.pth"
fi
echo "ebpf-deps: ready (kernel $KERNEL, headers $(readlink "/lib/modules/$KERNEL/build"))"
