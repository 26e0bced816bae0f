"""The agent with the least privileges docs/exporter.md names sees connections and names their local
workloads from maps pinned by root (mode 0600): user nobody with only CAP_BPF, CAP_PERFMON and
CAP_DAC_READ_SEARCH; and root with only CAP_BPF and CAP_PERFMON, as the DaemonSet in k8s/ runs it
(the owner of tracefs and of the pins needs no DAC capability)."""

from __future__ import annotations

import time

import pytest

from test_exporter_capture import (  # noqa: F401 - hosts and pin_dir are fixtures
    A4, B4, Agent, connect, exporter_env, flowattr, hosts, pin_dir, read_batches, serve,
)

pytestmark = pytest.mark.ebpf
CAPS = "+bpf,+perfmon,+dac_read_search"
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=65534", "--clear-groups",
             f"--inh-caps=-all,{CAPS}", f"--ambient-caps=-all,{CAPS}", f"--bounding-set=-all,{CAPS}")
ROOT_CAPS = "+bpf,+perfmon"
AS_ROOT_WITH_TWO = ("setpriv", f"--inh-caps=-all,{ROOT_CAPS}", f"--ambient-caps=-all,{ROOT_CAPS}",
                    f"--bounding-set=-all,{ROOT_CAPS}")
BPF, PERFMON, DAC_READ_SEARCH = 1 << 39, 1 << 38, 1 << 2


@pytest.mark.parametrize("prefix, uid, effective", [
    (AS_NOBODY, 65534, BPF | PERFMON | DAC_READ_SEARCH),
    (AS_ROOT_WITH_TWO, 0, BPF | PERFMON),
], ids=["nobody-bpf-perfmon-dac_read_search", "root-bpf-perfmon"])
def test_least_privileges_capture_connections(prefix, uid, effective, hosts, pin_dir, tmp_path):
    env = exporter_env(pin_dir, tmp_path)
    for ip, workload in ((A4, "ws-a"), (B4, "ws-b")):  # root pins the maps: 0600, owned by root
        assert flowattr("ipman", "add", ip, workload, env=env).returncode == 0
    assert (pin_dir / "ip_workload").stat().st_mode & 0o777 == 0o600
    out_dir = tmp_path / "out"
    out_dir.mkdir(mode=0o777)
    out_dir.chmod(0o777)  # nobody writes here; reaching it needs only DAC_READ_SEARCH
    out = out_dir / "flows.jsonl"

    agent = Agent(env, out, prefix=prefix)
    try:
        status = open(f"/proc/{agent.process.pid}/status").read()
        assert f"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n" in status
        caps = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
        assert caps == effective
        server = serve(hosts["b"], B4, 7400, 1, 321)
        report = connect(hosts["a"], B4, 7400, 1234, A4)
        server.communicate(timeout=60)
        time.sleep(1.5)
    finally:
        assert agent.stop() == 0, "\n".join(agent.lines)

    records = read_batches(out)
    flows = sorted((r["local_ip"], r["local_port"], r["direction"], r["bytes_sent"], r["bytes_received"],
                    r["local_workload"]) for r in records if r["kind"] == "flow" and r["local_ip"] in (A4, B4))
    assert flows == [(A4, report["local_port"], "outbound", 1234, 321, "ws-a"),
                     (B4, 7400, "inbound", 321, 1234, "ws-b")]
    assert {(r["ip"], r["workload"]) for r in records if r["kind"] == "heartbeat"} >= {(A4, "ws-a"), (B4, "ws-b")}
