"""Property: whatever the ownership history, report delays and losses, no flow is ever attributed to a
workload that did not own the remote address at the flow's start."""

from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.attribution import Claim, Connection, Lookup, Progress, Shard, ShardWork
from dataflow.config import AttributionConfig

INTERVAL = 60_000
ADDRESSES = ["10.0.0.1", "10.0.0.2", "fd00::3"]

tenure = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # owner; the same workload may come back
    st.integers(0, 20_000),  # gap before it takes the address: 0 means immediate reuse
    st.integers(1_000, 400_000),  # how long it holds it
)
delay = st.one_of(st.integers(0, 90_000), st.integers(90_000, 600_000), st.none())  # None: batch lost


@st.composite
def histories(draw):
    history = {}
    for ip in ADDRESSES:
        t = 0
        tenures = []
        for owner, gap, length in draw(st.lists(tenure, min_size=1, max_size=6)):
            t += gap
            tenures.append((owner, t, t + length))
            t += length
        history[ip] = tenures
    return history


def owner_at(tenures, t):
    for owner, start, end in tenures:
        if start <= t <= end:
            return owner
    return None


GIVEN = dict(
    history=histories(),
    flows=st.lists(
        st.tuples(st.sampled_from(ADDRESSES), st.integers(0, 2_400_000), st.integers(0, 5_000), delay, st.booleans()),
        min_size=1,
        max_size=40,
    ),
    heartbeat_delays=st.lists(delay, min_size=60, max_size=60),
)


def evidence(history, flows, heartbeat_delays, ahead=None):
    """(arrival time, order, item) of every heartbeat, lookup and server report that was not lost, and
    each flow's true owner. `ahead`: how far each owner's host clock runs ahead of the client's."""
    ahead = ahead or {}
    arrivals = []
    n = 0
    for ip, tenures in history.items():
        for owner, start, end in tenures:
            # An exporter heartbeats its address once per interval it held it.
            t = start
            while t < end:
                chunk_end = min(end, (t // INTERVAL + 1) * INTERVAL)
                d = heartbeat_delays[n % len(heartbeat_delays)]
                n += 1
                if d is not None:
                    skew = ahead.get(owner, 0)
                    arrivals.append((chunk_end + d, n, Claim(ip, owner, t + skew, chunk_end + skew, None, f"host-{owner}")))
                t = chunk_end
    truth = {}
    for i, (ip, start, length, d, server_reports) in enumerate(flows):
        flow = {"flow_id": str(i), "exporter": "client", "local_ip": "192.0.2.1", "local_port": 40000 + i,
                "remote_ip": ip, "remote_port": 443, "start_ms": start, "end_ms": start + length}
        truth[str(i)] = owner_at(history[ip], start)
        if d is None:
            continue
        n += 1
        arrivals.append((start + length + d, n, Lookup(flow)))
        owner = truth[str(i)]
        if server_reports and owner is not None and owner_at(history[ip], start + length) == owner:
            # The server's own report of the connection, as its exporter captured it.
            key = (ip, 443, "192.0.2.1", 40000 + i)
            n += 1
            arrivals.append((start + length + d, n, Connection(key, start + ahead.get(owner, 0), owner, f"host-{owner}")))
    return sorted(arrivals, key=lambda a: (a[0], a[1])), truth


def read(arrivals) -> tuple[Shard, list]:
    """A shard fed every arrival in order, its clock just behind each; its answers so far."""
    shard = Shard(AttributionConfig(delay_s=60, max_wait_s=300, skew_guard_ms=1000), frozenset({("raw", 0)}))
    answers = []
    for arrival, n, item in arrivals:
        answers.extend(shard.absorb(ShardWork(arrival, (2, 0, n), [item])))
        answers.extend(shard.absorb(Progress({("raw", 0): arrival - 1})))
    return shard, answers


@settings(max_examples=150, deadline=None)
@given(**GIVEN)
def test_no_flow_is_attributed_to_a_workload_that_did_not_own_the_address(history, flows, heartbeat_delays):
    arrivals, truth = evidence(history, flows, heartbeat_delays)
    shard, answers = read(arrivals)
    answers.extend(shard.finish())

    delivered = {str(i) for i, f in enumerate(flows) if f[3] is not None}
    assert sorted(a["flow_id"] for a in answers) == sorted(delivered)  # each exactly once
    for a in answers:
        if a["outcome"] == "attributed":
            assert a["remote_workload"] == truth[a["flow_id"]], a


@settings(max_examples=150, deadline=None)
@given(**GIVEN, ahead=st.fixed_dictionaries({o: st.integers(-3_000, 3_000) for o in "abc"}))
def test_the_end_of_a_recording_answers_as_a_live_job_whose_input_went_quiet(history, flows, heartbeat_delays, ahead):
    """A file run ends its input and finishes; a live job reads nothing more while its clock runs on
    past every deadline. Over the same arrivals, hosts' clocks apart, every answer is the same."""
    arrivals, _ = evidence(history, flows, heartbeat_delays, ahead)
    ended, answers = read(arrivals)
    answers.extend(ended.finish())
    quiet, live = read(arrivals)
    last = max((a[0] for a in arrivals), default=0)
    live.extend(quiet.absorb(Progress({("raw", 0): last + 3_600_000})))
    assert ended.pending() == quiet.pending() == 0
    assert sorted(answers, key=lambda a: a["flow_id"]) == sorted(live, key=lambda a: a["flow_id"])
