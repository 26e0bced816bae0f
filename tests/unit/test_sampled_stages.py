"""The throughput benchmark's sampling profile: how py-spy's raw stacks become each stage's share."""

from bench.throughput import sampled_stages

START = "_run_code (<frozen runpy>:88);<module> (bench/throughput.py:325)"
RUN = f"{START};file_mode (bench/throughput.py:133);run_main (bytewax/testing.py:40)"
ABSORB = f"{RUN};on_batch (dataflow/flow.py:226);absorb (dataflow/attribution.py:190);Shard_absorb (dataflow/attribution.py:191)"


def shares(raw: str) -> dict[str, float]:
    return {label: share for label, _, share in sampled_stages(raw)["shares"]}


def test_a_stage_is_the_share_of_stacks_with_its_function_each_counted_once_and_only_inside_the_run():
    raw = "\n".join([
        f"{START};import_module (importlib/__init__.py:126) 50",  # start-up: outside the run, not counted
        f"{ABSORB};Shard__advance_to (dataflow/attribution.py:240);Shard__decide_due (dataflow/attribution.py:470);"
        "Shard__record (dataflow/attribution.py:508);flow (dataflow/packed.py:220) 30",
        # A compiled method's C frame and its Python frame in one stack: one stage, counted once.
        f"{ABSORB};_decide_due (dataflow/attribution.py:462);Shard__decide_due (dataflow/attribution.py:480);"
        "Py_DECREF (object.h:600) 10",
        f"{ABSORB};Shard__packed (dataflow/attribution.py:209);pack_lookup (dataflow/packed.py:100) 20",
        f"{RUN};bytewax::run (_bytewax.cpython-311-x86_64-linux-gnu.so) 40",
    ])
    got = sampled_stages(raw)
    assert got["samples"] == 100
    assert shares(raw) == {"decide due lookups": 0.4, "rebuild answered records": 0.3,
                           "pack each lookup as it comes, before the arrival clock reaches it": 0.2}
    assert round(got["rest"], 9) == 0.4  # the runtime's own stack and nothing else
    assert got["profile"].splitlines()[1].split()[:2] == ["40", "40.0%"]


def test_a_function_of_the_same_name_in_another_module_or_a_longer_name_is_not_the_stage():
    raw = "\n".join([
        f"{ABSORB};_apply (dataflow/clock.py:10) 5",  # not attribution.py
        f"{ABSORB};Shard__apply_more (dataflow/attribution.py:10) 5",  # another function
        f"{ABSORB};lower__apply (dataflow/attribution.py:10) 5",  # not a class's method
        f"{ABSORB};Shard__apply (dataflow/attribution.py:250) 5",
    ])
    assert shares(raw) == {"apply evidence to shards, hold lookups (retries it triggers included)": 0.25}


def test_stacks_outside_the_run_or_unreadable_lines_give_nothing():
    assert sampled_stages(f"{START};main (x.py:1) 9\nnot a stack\n") == {}
