"""The kernel side: checks what eBPF capture needs, loads bpf/flowtrace.c through BCC, drains its
ring buffer into ClosedConnections and reads the open connections, the workload maps and the loss
counters."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from dataflow.config import ExporterConfig
from exporter.holdings import Pair
from exporter.ipman import WorkloadMaps
from exporter.kernel_layout import LayoutError, netns_offsets
from exporter.report import ClosedConnection, OpenConnection, address

BPF_SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "flowtrace.c"
TRACEFS = Path("/sys/kernel/tracing")
TRACEPOINTS = (
    "sock/inet_sock_set_state",
    "sock/sock_send_length",
    "sock/sock_recv_length",
    "tcp/tcp_destroy_sock",
)
# struct flow_event in bpf/flowtrace.c
FLOW_EVENT = struct.Struct("=QQQQQIHH16s16sIHHB7x16s64s")
COUNTER_NAMES = ("lost_events", "connections_full")
# Capability bits (linux/capability.h)
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


class CaptureError(Exception):
    """eBPF capture cannot start; the message says what is missing and how to fix it."""


def check_prerequisites() -> None:
    """Each missing piece as one clear sentence, before BCC prints pages of compiler output."""
    caps = _effective_capabilities()
    bpf_and_perfmon = caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1
    if not (caps >> CAP_SYS_ADMIN & 1 or bpf_and_perfmon):
        raise CaptureError(
            "needs root, or CAP_BPF and CAP_PERFMON (plus read access to tracefs): "
            "run as root or grant them (see docs/exporter.md)"
        )
    # effective_ids: plain access(2) checks the real uid and ignores capabilities like DAC_READ_SEARCH.
    if os.path.isdir(TRACEFS) and not os.access(TRACEFS, os.R_OK | os.X_OK, effective_ids=True):
        raise CaptureError(
            f"cannot read tracefs at {TRACEFS}: run as root or add CAP_DAC_READ_SEARCH"
        )
    if not (TRACEFS / "events").is_dir():
        raise CaptureError(
            f"tracefs is not mounted at {TRACEFS}: "
            f"`mount -t tracefs tracefs {TRACEFS}` (make ebpf-deps does)"
        )
    missing = [tp.replace("/", ":") for tp in TRACEPOINTS if not (TRACEFS / "events" / tp).is_dir()]
    if missing:
        raise CaptureError(
            f"this kernel lacks the tracepoint(s) {', '.join(missing)} (needs Linux >= 6.3)"
        )
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        raise CaptureError(
            f"no kernel headers at /lib/modules/{os.uname().release}/build: run `make ebpf-deps`"
        )
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise CaptureError(
            "BCC is not importable from this Python: run `make ebpf-deps` (Debian python3-bpfcc)"
        ) from None


class Capture:
    """The loaded programs; close() detaches them. The pinned workload maps stay."""

    def __init__(self, config: ExporterConfig):
        check_prerequisites()
        from bcc import BPF

        # Create the pinned maps if absent, so ipman and the program agree on their shape; read-only
        # is all the agent needs (and all that CAP_DAC_READ_SEARCH grants on a root-owned pin).
        self._maps = WorkloadMaps(
            config.pin_dir, create=True, max_entries=config.max_workloads, read_only=True
        )
        cflags = [
            f"-DMAX_CONNECTIONS={config.max_connections}",
            f"-DMAX_WORKLOADS={config.max_workloads}",
            f"-DRINGBUF_PAGES={config.ring_pages}",
            "-Wno-ignored-attributes",  # noise from the distribution headers
        ]
        if config.capture_loopback:
            cflags.append("-DCAPTURE_LOOPBACK")
        try:
            layout = netns_offsets()
            cflags += [f"-DSOCK_NET_OFFSET={layout.sock_net}", f"-DNET_INUM_OFFSET={layout.net_inum}"]
            # The agent runs in the host network namespace (hostNetwork on Kubernetes).
            self.host_netns: int | None = os.stat("/proc/self/ns/net").st_ino
        except (OSError, LayoutError, struct.error):
            self.host_netns = None  # no BTF: the host identity falls back to the address check alone
        try:
            self._bpf = BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
        except Exception as e:  # BCC raises bare Exception for compile and load failures
            self._maps.close()
            raise CaptureError(f"cannot load {BPF_SOURCE}: {e} (see the compiler output above)") from None
        for name, fd in self._maps.fds().items():
            self._bpf[name][ctypes.c_int(0)] = ctypes.c_int(fd)
        self._closed: list[ClosedConnection] = []
        self._bpf["flows"].open_ring_buffer(self._on_flow)

    def _on_flow(self, _ctx, data, size) -> None:
        # Keep the callback short: the ring buffer is drained at the kernel's pace.
        self._closed.append(_closed_connection(ctypes.string_at(data, size)))

    def drain(self, timeout_ms: int) -> list[ClosedConnection]:
        """Waits up to timeout_ms for closed connections and returns all that arrived."""
        self._bpf.ring_buffer_poll(timeout_ms)
        closed, self._closed = self._closed, []
        return closed

    def open_connections(self) -> list[OpenConnection]:
        found = []
        for _sk, conn in self._bpf["connections"].items_lookup_batch():
            if conn.start_ns and not conn.end_ns:
                workload = bytes(conn.workload.name).split(b"\0", 1)[0].decode(errors="replace")
                ports = (conn.ports_lo, conn.ports_hi) if conn.ports_lo else None
                found.append(OpenConnection(address(bytes(conn.laddr)), conn.start_ns, workload, ports, conn.netns))
        return found

    def registrations(self) -> set[Pair]:
        """(ip, workload, ports) for every registration of both workload maps."""
        return {(r.ip, r.workload, r.ports) for r in self._maps.registrations()}

    def counters(self) -> dict[str, int]:
        table = self._bpf["counters"]
        return {name: sum(table[table.Key(i)]) for i, name in enumerate(COUNTER_NAMES)}

    def close(self) -> None:
        self._bpf.cleanup()
        self._maps.close()


def _closed_connection(raw: bytes) -> ClosedConnection:
    (start, end, sent, received, cookie, pid, lport, rport, laddr, raddr, netns, ports_lo, ports_hi,
     direction, comm, workload) = FLOW_EVENT.unpack_from(raw)
    return ClosedConnection(
        start_ns=start,
        end_ns=end,
        bytes_sent=sent,
        bytes_received=received,
        cookie=cookie,
        pid=pid,
        local_ip=address(laddr),
        local_port=lport,
        remote_ip=address(raddr),
        remote_port=rport,
        direction=direction,
        comm=comm.split(b"\0", 1)[0].decode(errors="replace"),
        workload=workload.split(b"\0", 1)[0].decode(errors="replace"),
        ports=(ports_lo, ports_hi) if ports_lo else None,
        netns=netns,
    )


def _effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0
