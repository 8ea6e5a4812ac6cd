"""The helpers the benchmark scripts share: benchmarks/timing.py and benchmarks/common.py.

Fake timers stand in for the clocks, so what is checked is the bookkeeping (which clock, which
order, what is kept), never a measured time.
"""

import itertools
import math

import pytest
import torch

from benchmarks import timing
from benchmarks.common import trailing_overrides


def test_trailing_overrides_of_the_benchmark_tools():
    assert trailing_overrides(["MODEL.X", "1"]) == ["MODEL.X", "1"]
    assert trailing_overrides(["--", "MODEL.X", "1"]) == ["MODEL.X", "1"]  # after --configs
    assert trailing_overrides([]) == []
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        trailing_overrides(["MODEL.X"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):  # an option after the overrides
        trailing_overrides(["MODEL.X", "1", "--iters", "3"])


def test_clock_choice():
    with timing.pinned_threads(1):
        assert timing.clock_name("cpu") == "cpu"
        assert timing.clock_for(torch.device("cpu")) is timing.time.process_time
    with timing.pinned_threads(2):
        assert timing.clock_name("cpu") == "wall"  # CPU time would add up the threads
        assert timing.clock_name("cpu", "cpu") == "cpu"  # asked for
    for clock in ("auto", "cpu", "wall"):
        assert timing.clock_name("cuda", clock) == "wall"  # device work: wall clock only
        assert timing.clock_for(torch.device("cuda:0"), clock) is timing.time.perf_counter
    assert timing.clock_name("cpu", "wall") == "wall"
    with pytest.raises(ValueError, match="clock must be one of"):
        timing.clock_name("cpu", "gpu")


def test_pinned_threads_gives_the_callers_count_back():
    before = torch.get_num_threads()
    with timing.pinned_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with timing.pinned_threads(None) as n:
            assert n == before  # None: the count is kept...
            torch.set_num_threads(1)  # ...and one set inside is undone, also on an error
            raise RuntimeError
    assert torch.get_num_threads() == before
    assert timing.set_threads(0) == before


def _ticks():
    """A fake timer that advances by 1 at each reading."""
    counter = itertools.count()
    return lambda: float(next(counter))


def test_measure_syncs_around_the_call_and_reads_every_timer():
    events = []
    a, b = _ticks(), _ticks()
    elapsed, out = timing.measure(lambda: events.append("call") or 7, lambda: events.append("sync"), (a, b))
    assert out == 7 and events == ["sync", "call", "sync"]
    assert elapsed == (1.0, 1.0)  # each timer read once before and once after
    assert timing.time_call(lambda x: x * 2, (21,), torch.device("cpu"), _ticks()) == (1.0, 42)


def test_timed_records_each_call():
    clock = _ticks()
    timed = timing.Timed(lambda x: x + 1, lambda: None, clock)
    assert timed(1) == 2 and timed(2) == 3
    assert timed.take() == 2.0 and timed.take() == 0


def test_interleaved_rounds_rotate_discard_the_warmup_and_skip():
    order = []

    def run(name):
        order.append(name)
        return float(len(order))

    times = timing.interleaved_rounds(run, ["a", "b", "c"], rounds=2, warmup=1)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [6.0, 8.0], "b": [4.0, 9.0], "c": [5.0, 7.0]}  # warm-up round dropped

    order.clear()
    times = timing.interleaved_rounds(run, ["a", "b"], rounds=3, skip=lambda name, r: name == "b" and r >= 1)
    assert order == ["a", "b", "a", "a"]
    assert times == {"a": [1.0, 3.0, 4.0], "b": [2.0]}
    assert timing.rotated([1, 2, 3], 4) == [2, 3, 1] and timing.rotated([], 2) == []


def test_median_and_quartiles():
    assert timing.median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(timing.median([]))
    assert timing.quartiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (2.0, 4.0)
    assert timing.quartiles([1.0, 2.0]) == (1.25, 1.75)
    assert timing.quartiles([0.5]) == (0.5, 0.5)
    assert all(math.isnan(q) for q in timing.quartiles([]))


def test_soft_nms_benchmark_runs_and_compares_with_the_loop(capsys):
    from conftest import load_tool

    rows = load_tool("benchmark_soft_nms").main(["--sizes", "120", "--classes", "3", "--rounds", "1"])
    assert len(rows) == 2  # gaussian, linear
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:2] == ["120", "3"] and cells[2] in ("gaussian", "linear")
        assert float(cells[3]) > 0 and float(cells[4]) > 0
        assert cells[6] == "yes"  # the same keep list as the per-class loop
    assert "speed-up" in capsys.readouterr().out
