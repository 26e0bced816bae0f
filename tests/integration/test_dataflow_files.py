"""The job in file mode as real processes: the embedded run, and a cluster of bytewax.run processes
giving the same answer for every flow as a single worker."""

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from dataflow import simulate as sim
from dataflow.file_io import read_outputs
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
FLOWATTR = [sys.executable, "-m", "dataflow.cli"]


def test_embedded_run_attributes_a_simulated_fleet_with_nothing_misattributed(tmp_path):
    run = subprocess.run([*FLOWATTR, "run", "--embedded"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    lines = {line.split()[0]: line.split()[1] for line in run.stdout.splitlines() if line.startswith("  ")}
    assert lines["misattributed"] == "0" and lines["unaccounted"] == "0"
    answers = read_outputs(tmp_path / "out/embedded/output", "attributed")
    truth = orjson.loads((tmp_path / "out/embedded/input/truth.json").read_bytes())
    assert str(len(answers)) == next(l.split()[-1] for l in run.stdout.splitlines() if "flows answered" in l)
    attributed = [a for a in answers if a["outcome"] == "attributed"]
    assert len(attributed) > 0.9 * len(answers)
    assert all(truth[a["flow_id"]] == a["remote_workload"] for a in attributed if a["flow_id"] in truth)


def write_config(path, input_dir, output_dir):
    regions = "\n".join(f'{r} = {orjson.dumps(c).decode()}' for r, c in sim.regions_config().items())
    path.write_text(f'region = "{sim.HOME}"\n[regions]\n{regions}\n'
                    f'[files]\ninput_dir = "{input_dir}"\noutput_dir = "{output_dir}"\n')
    return path


def bytewax_run(config, workers, process_id=None, addresses=None):
    cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:from_environment()", "-w", str(workers)]
    if addresses:
        cmd += ["-i", str(process_id), "-a", ";".join(addresses)]
    env = {**os.environ, "FLOWATTR_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def outcomes(folder):
    return {a["flow_id"]: (a["outcome"], a["remote_workload"], a["reason"], a["match"])
            for a in read_outputs(folder, "attributed")}


@pytest.fixture(scope="module")
def fleet_input(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet")
    import time
    start = (int(time.time()) // 60 - 20) * 60_000
    fleet = sim.simulate(sim.Scenario(seed=11, start_ms=start, duration_s=12 * 60))
    sim.write(fleet, folder)
    # Bad input rides along: it must come out as the same dead letters however the job is scaled.
    with open(folder / "flows.ndjson", "ab") as f:
        f.write(b"not json\n[1, {\"v\": 1, \"kind\": \"flow\"}]\n")
    return folder, fleet


def test_two_processes_of_two_workers_answer_every_flow_as_one_worker_does(tmp_path, fleet_input):
    folder, fleet = fleet_input
    single = write_config(tmp_path / "single.toml", folder, tmp_path / "single")
    proc = bytewax_run(single, 1)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    cluster = write_config(tmp_path / "cluster.toml", folder, tmp_path / "cluster")
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [bytewax_run(cluster, 2, i, addresses) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert len(list((tmp_path / "cluster").glob("attributed-*.ndjson"))) == 4  # four workers wrote

    one, many = outcomes(tmp_path / "single"), outcomes(tmp_path / "cluster")
    assert len(one) > 10_000
    assert one == many
    dead = sorted(d["reason"] for d in read_outputs(tmp_path / "cluster", "dlq"))
    assert dead == sorted(d["reason"] for d in read_outputs(tmp_path / "single", "dlq"))
    assert dead == ["missing_field", "not_json", "not_object"]
    forwarded = {f["flow_id"] for f in read_outputs(tmp_path / "cluster", "forward.eu-west")}
    assert forwarded == {f["flow_id"] for f in read_outputs(tmp_path / "single", "forward.eu-west")}
    assert not forwarded & set(many)  # a flow goes to exactly one place


@pytest.mark.parametrize("args, message", [
    (["run"], "give --embedded, --input-dir DIR, or --brokers"),
    (["run", "--input-dir", "/no/such/folder"], "input folder /no/such/folder does not exist"),
    (["--config", "/no/such.toml", "run", "--embedded"], "cannot read config file /no/such.toml"),
])
def test_a_run_that_cannot_start_says_why_in_one_line(args, message):
    run = subprocess.run([*FLOWATTR, *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"flowattr: {message}")
