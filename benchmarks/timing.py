"""Timing shared by the benchmarks: clock choice, CUDA sync, thread pinning, interleaved rounds.

Clock. On CPU with one torch thread the benchmarks time this process's CPU time
(``time.process_time``): it counts the work itself and not the time the process waited for a core,
so other jobs on a shared machine barely disturb it. With more threads (CPU time would add up the
threads' time) or on CUDA (the work runs on the device) they time the wall clock
(``time.perf_counter``), synchronizing the device before starting and stopping the clock.

Rounds. Variants that are compared are timed interleaved: every round times each variant once, in
an order rotated from round to round, so a noisy moment of the machine hits all of them alike;
the summary is the median over rounds, with the interquartile range as a measure of the noise.
"""

import contextlib
import statistics
import time
from typing import Callable, Dict, Hashable, Iterable, List, Sequence, Tuple

import torch

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK_CHOICES = ("auto", "cpu", "wall")


def clock_name(device, clock: str = "auto") -> str:
    """``"cpu"`` (process CPU time) or ``"wall"`` for ``clock`` in :data:`CLOCK_CHOICES`.

    ``auto``: CPU time on the CPU device with one torch thread, else wall. A CUDA device is
    always timed by the wall clock.
    """
    if clock not in CLOCK_CHOICES:
        raise ValueError(f"clock must be one of {CLOCK_CHOICES}, got {clock!r}")
    if torch.device(device).type != "cpu":
        return "wall"
    if clock == "auto":
        return "cpu" if torch.get_num_threads() == 1 else "wall"
    return clock


def clock_for(device, clock: str = "auto") -> Callable[[], float]:
    """The timer function (``time.process_time`` or ``time.perf_counter``) of :func:`clock_name`."""
    return CLOCKS[clock_name(device, clock)]


def make_sync(device) -> Callable[[], None]:
    """A function that waits for the work queued on ``device`` (CUDA), or does nothing (CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(fn: Callable, sync: Callable[[], None], timers: Sequence[Callable[[], float]]):
    """Call ``fn()`` between two device syncs; returns ``(elapsed on each timer, fn's output)``."""
    sync()
    starts = [t() for t in timers]
    out = fn()
    sync()
    return tuple(t() - s for t, s in zip(timers, starts)), out


def time_call(fn: Callable, args: Sequence, device, timer: Callable[[], float]):
    """``(seconds, fn(*args))`` on ``timer``, with the device synchronized around the call."""
    (elapsed,), out = measure(lambda: fn(*args), make_sync(device), (timer,))
    return elapsed, out


class Timed:
    """A callable that forwards to ``fn`` and records the time of each call on ``clock``.

    Set as an instance attribute in place of a bound method (``obj.name = Timed(obj.name, ...)``),
    it times the calls the object makes to that method during a larger step.
    """

    def __init__(self, fn: Callable, sync: Callable[[], None], clock: Callable[[], float]):
        self.fn, self.sync, self.clock, self.times = fn, sync, clock, []

    def __call__(self, *a, **k):
        (elapsed,), out = measure(lambda: self.fn(*a, **k), self.sync, (self.clock,))
        self.times.append(elapsed)
        return out

    def take(self) -> float:
        """Total time of the calls since the last ``take`` (0 if none)."""
        total, self.times = sum(self.times), []
        return total


def set_threads(threads) -> int:
    """``torch.set_num_threads(threads)`` if ``threads > 0`` (``0`` or ``None``: torch's current
    count is kept); returns the count in force."""
    if threads and threads > 0:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


@contextlib.contextmanager
def pinned_threads(threads=None):
    """Run the block with :func:`set_threads` ``(threads)``; the caller gets its own thread count
    back afterwards, also when the block changes it (a benchmark called from a test)."""
    before = torch.get_num_threads()
    try:
        yield set_threads(threads)
    finally:
        torch.set_num_threads(before)


def rotated(items: Sequence, r: int) -> list:
    """``items`` rotated left by ``r`` (modulo its length): the order of round ``r``."""
    items = list(items)
    if not items:
        return items
    k = r % len(items)
    return items[k:] + items[:k]


def interleaved_rounds(
    run: Callable[[Hashable], float],
    names: Iterable[Hashable],
    rounds: int,
    warmup: int = 0,
    skip: Callable[[Hashable, int], bool] = lambda name, r: False,
) -> Dict[Hashable, List[float]]:
    """Time every name once per round, in an order rotated from round to round.

    ``run(name)`` runs one variant and returns its time. The first ``warmup`` rounds are run and
    discarded; round ``k`` (warm-up included) starts at the ``k``-th name. ``skip(name, r)`` can
    leave a variant out of timed round ``r`` (0-based). Returns ``{name: [time of each round]}``.
    """
    names = list(names)
    times = {name: [] for name in names}
    for k in range(warmup + rounds):
        for name in rotated(names, k):
            timed_round = k - warmup
            if timed_round >= 0 and skip(name, timed_round):
                continue
            elapsed = run(name)
            if timed_round >= 0:
                times[name].append(elapsed)
    return times


def median(xs: Sequence[float]) -> float:
    """The median, ``nan`` for no values."""
    return statistics.median(xs) if len(xs) else float("nan")


def quartiles(xs: Sequence[float]) -> Tuple[float, float]:
    """25th and 75th percentile (inclusive method: within the values' range); a single value is
    both, no values give ``nan``."""
    xs = list(xs)
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]
