"""The page's progress bar: multiply-adds counted as the pipeline runs (:class:`WorkCounter`, a torch dispatch mode)
and one bar over a whole request with the time left (:class:`RequestProgress`)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from uplift_diffusion.app.messages import seconds

_CONV_OPS = {"conv2d", "convolution", "_convolution", "mkldnn_convolution", "_convolution_pointwise",
             "cudnn_convolution", "conv1d", "conv3d"}
_TRANSPOSED_OPS = {"conv_transpose2d", "conv_transpose1d", "conv_transpose3d", "convolution_transpose"}
_MATMUL_OPS = {"mm", "bmm", "matmul"}
_MATMUL_ADD_OPS = {"addmm", "baddbmm"}
_FUSED_BINARY_CONV = "_convolution_pointwise_"  # in place into the residual (the residual first)
SAVING = "saving"  # the part after the model: writing the result's files (its "work" is the fraction written)


def _multiply_adds(name: str, overload: str, args: tuple, out) -> tuple[int, torch.Tensor | None]:
    """Multiply-adds of one ATen op (convolutions and matrix products; 0 for the rest) and the weight it read.
    oneDNN's fused conv + residual add (``_convolution_pointwise.binary``, and ``_convolution_pointwise_.binary``
    writing into the residual) takes the residual before the weight."""
    if not isinstance(out, torch.Tensor):
        return 0, None
    if name in _CONV_OPS or name in _TRANSPOSED_OPS or name == _FUSED_BINARY_CONV:
        if overload == "binary":
            data, weight = args[1 if name == _FUSED_BINARY_CONV else 0], args[2]
        else:
            data, weight = args[0], args[1]
        if not (isinstance(weight, torch.Tensor) and weight.dim() >= 3):
            return 0, None
        per_position = weight.shape[1] * weight[0, 0].numel()  # input channels per group x kernel (or, transposed,
        produced = data.numel() if name in _TRANSPOSED_OPS else out.numel()  # output channels per group x kernel)
        return produced * per_position, weight
    if name in _MATMUL_OPS or name in _MATMUL_ADD_OPS:
        left = args[1] if name in _MATMUL_ADD_OPS else args[0]
        return (out.numel() * left.shape[-1] if isinstance(left, torch.Tensor) else 0), None
    return 0, None


class WorkCounter(TorchDispatchMode):
    """Counts, while active in this thread, the multiply-adds of every convolution and matrix product that runs (the
    arithmetic of the request: the VAE decoder's convolutions are ~80 % of it at 2×) and names the model part a
    convolution belongs to, by the weight it reads.

    The pipeline's own progress bar sees an untiled decode as one step; counting operations from outside sees every
    layer of it, needs nothing from the pipeline, and changes no result: each op runs the same kernel on the same
    tensors (the page's output is tested bit-exact against the pipeline's).

    Args:
        on_work: called as ``on_work(multiply_adds_so_far, part)`` after each counted op (``part`` may be ``None``).
        parts: ``{weight data pointer: part name}`` for the weights of the model parts.
        tails: ``{part: tail part}``: a convolution on a weight of no part right after ``part``'s ops starts
            ``tail part`` (the colour correction after the VAE decoder, on kernels made per call: its time grows
            with the picture, not with the decoder's work). Matrix products (attention) stay in their part.
        part: the part the ops before the first one on a named weight belong to (a run that starts after a part,
            e.g. the colour correction alone, as if after the decoder).
    """

    def __init__(self, on_work: Callable[[int, str | None], None] | None = None, parts: dict[int, str] | None = None,
                 clock: Callable[[], float] = time.perf_counter, tails: dict[str, str] | None = None,
                 part: str | None = None):
        super().__init__()
        self.on_work = on_work
        self.parts = parts or {}
        self.tails = tails or {}
        self.total = 0
        self.clock = clock
        # Per part: the multiply-adds, and the seconds up to each counted op (the uncounted ops before it included),
        # an op without a named weight belonging to the part of the last one that had one.
        self.macs_by_part: dict[str | None, int] = defaultdict(int)
        self.seconds_by_part: dict[str | None, float] = defaultdict(float)
        self.longest = 0.0  # seconds: the longest stretch between two counted ops (one large convolution)
        # Per part, each counted op's (multiply-adds, input and output elements, seconds): where a part's time goes
        # along its work (a decoder's last full-resolution layers take more seconds per multiply-add than its first).
        self.ops_by_part: dict[str | None, list[tuple[int, int, float]]] = defaultdict(list)
        # Per part, how many of its ops up to the last one on a weight of its own: those after (products without
        # weights, e.g. attention after an upsampler's last conv) are its tail, which tiles do not repeat.
        self.named_ops: dict[str | None, int] = defaultdict(int)
        self._part: str | None = part
        self._last = clock()

    @property
    def last_op_at(self) -> float:
        """The clock's time when the last counted op finished."""
        return self._last

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        macs, weight = _multiply_adds(func.overloadpacket.__name__, func._overloadname, args, out)
        if macs:
            self.total += macs
            part = None
            if weight is not None and weight.layout == torch.strided:  # opaque (mkldnn) tensors have no data_ptr
                part = self.parts.get(weight.data_ptr())
                if part is None and self._part in self.tails:
                    part = self.tails[self._part]
            self._part = part or self._part
            now = self.clock()
            self.macs_by_part[self._part] += macs
            self.seconds_by_part[self._part] += now - self._last
            elements = out.numel() + (args[0].numel() if isinstance(args[0], torch.Tensor) else 0)
            self.ops_by_part[self._part].append((macs, elements, now - self._last))
            if part is not None:
                self.named_ops[part] = len(self.ops_by_part[part])
            self.longest = max(self.longest, now - self._last)
            self._last = now
            if self.on_work is not None:
                self.on_work(self.total, part)
        return out


@dataclass(frozen=True)
class WorkPlan:
    """The expected work of one photo: multiply-adds and seconds per part (``SAVING``: 1 unit, the whole of
    finishing the picture and writing the files), from a measured run. The bar moves through a photo by expected
    seconds, not by multiply-adds: a decoder's multiply-add costs more time than the upsampler's, and writing the
    files takes time with none. ``longest``: the expected seconds of the longest stretch without a count (one large
    convolution, one file written), how far the bar may run ahead of the counts at the measured pace."""

    macs: Mapping[str | None, float]
    seconds: Mapping[str | None, float]
    longest: float = 0.0
    # Per part, (fractions of its multiply-adds, fractions of its seconds) along a measured run (profiles_of); a
    # part without one spends its seconds evenly over its multiply-adds.
    profiles: Mapping[str | None, tuple[Sequence[float], Sequence[float]]] = field(default_factory=dict)
    # From the small calibration photos, not from a photo of this kind: each part's error is its own, so the pace of
    # the parts done says nothing about the parts not yet seen (which go at the plan's pace until they are seen).
    calibrated: bool = False
    # Per part, how many of its profile's ops ran on its own weights (WorkCounter.named_ops): the ops after them are
    # its tail, which a tiled run does once (tiled).
    body_ops: Mapping[str | None, int] = field(default_factory=dict)

    @classmethod
    def profiles_of(cls, counter: WorkCounter) -> dict[str | None, tuple[tuple[float, ...], tuple[float, ...]]]:
        """Each part's time along its work in ``counter``'s run: (fractions of its multiply-adds, fractions of its
        seconds) at each counted op, from (0, 0) to (1, 1)."""
        profiles = {}
        for part, ops in counter.ops_by_part.items():
            macs, seconds = np.cumsum([m for m, _, _ in ops]), np.cumsum([s for _, _, s in ops])
            if len(ops) and macs[-1] > 0 and seconds[-1] > 0:
                profiles[part] = ((0.0, *(macs / macs[-1]).tolist()), (0.0, *(seconds / seconds[-1]).tolist()))
        return profiles

    @classmethod
    def uniform(cls, cost: float) -> WorkPlan:
        """One part, ``cost`` units of work taking ``cost`` units of time."""
        return cls({None: cost}, {None: cost})

    def scaled(self, factor: float) -> WorkPlan:
        """The plan for ``factor`` times the work (a plan per pixel, for a photo of ``factor`` pixels). ``SAVING``'s
        work stays what it is: its unit is the photo's files (their fraction written), whatever their size."""
        return WorkPlan({p: v if p == SAVING else v * factor for p, v in self.macs.items()},
                        {p: v * factor for p, v in self.seconds.items()}, self.longest * factor, self.profiles,
                        self.calibrated, self.body_ops)

    def tiled(self, work: Mapping[str | None, float]) -> WorkPlan:
        """This plan (measured on whole photos) for the same photo in tiles that make each part do ``work[part]``
        times its work: a part's own ops grow by it, its tail (:attr:`body_ops`: ops on weights of no part after its
        last one on its own, e.g. an upsampler's last attention products) does not. Its profile becomes a straight
        line through the tiles (each runs all the part's layers, so fast and slow layers interleave), then the tail
        as measured; a part the tiles leave as it is (``work`` 1: the finishing after the decoder) keeps its
        profile."""
        macs, seconds, profiles = dict(self.macs), dict(self.seconds), {}
        for part in self.macs:
            grow = work.get(part, 1.0)
            tail_macs, tail_seconds = self._tail(part)
            body_macs, body_seconds = (1 - tail_macs) * grow, (1 - tail_seconds) * grow
            macs[part] *= body_macs + tail_macs
            seconds[part] = seconds.get(part, 0.0) * (body_seconds + tail_seconds)
            if tail_macs > 0 or tail_seconds > 0:
                profiles[part] = ((0.0, body_macs / (body_macs + tail_macs), 1.0),
                                  (0.0, body_seconds / max(body_seconds + tail_seconds, 1e-30), 1.0))
            elif grow == 1.0 and part in self.profiles:  # the tiles do not touch it (the finishing after them)
                profiles[part] = self.profiles[part]
        return WorkPlan(macs, seconds, self.longest, profiles, self.calibrated, {})

    def _tail(self, part: str | None) -> tuple[float, float]:
        """(multiply-adds, seconds) of ``part``'s tail as fractions of the part's, from its profile."""
        if part not in self.profiles or part not in self.body_ops:
            return 0.0, 0.0
        macs, seconds = self.profiles[part]
        end = min(self.body_ops[part], len(macs) - 1)  # profiles start with (0, 0): op i ends at entry i
        return 1.0 - float(macs[end]), 1.0 - float(seconds[end])

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def seconds_done(self, part: str | None, done: float) -> float:
        """Expected seconds of ``part`` behind ``done`` of its units of work (along its profile, if it has one)."""
        macs = self.macs.get(part, 0.0)
        if macs <= 0:
            return 0.0
        fraction = min(done, macs) / macs
        if part in self.profiles:
            fraction = float(np.interp(fraction, *self.profiles[part]))
        return fraction * self.seconds.get(part, 0.0)

    def position(self, done: Mapping[str | None, float]) -> float:
        """Expected seconds of work behind ``done`` (units of work per part)."""
        return sum(self.seconds_done(part, done.get(part, 0.0)) for part in self.macs)


@dataclass(frozen=True)
class OpCosts:
    """Each counted op's seconds as ``per_element * elements + per_op`` (its input and output elements: at these
    sizes a layer's time follows the memory it streams more than its multiply-adds), per part, fitted on the ops of
    two runs on photos of two sizes (the page's calibration): the profile (:meth:`WorkPlan.profiles_of`) of a photo
    of another size, its ops' elements scaled by its pixels. On a small photo every op costs about the same (set-up);
    on a large one the full-resolution layers take most of the time, and a profile measured on the small photo would
    put the bar near the end while they run.

    A part named in ``by_kind`` (the VAE decoder) gets one line per kind of op instead, its kind the multiply-adds
    per element streamed (in powers of two): its last full-resolution layers, with few channels, take two to three
    times the seconds per element of its wide convolutions, and one line for all of them puts the bar near the end
    while they run. (The encoder's ops of one kind differ in speed among themselves; its one line errs less.)

    Args:
        macs: per part, the fractions of its multiply-adds at each op of the larger run.
        elements: per part, each op's input and output elements per input pixel in the larger run.
        rates: per part, ``(seconds per element, seconds per op)``.
        op_rates: per part fitted by kind, each op's ``(seconds per element, seconds per op)``.
        body_ops: per part, how many of its ops ran on its own weights (:attr:`WorkPlan.body_ops`).
    """

    macs: Mapping[str | None, Sequence[float]]
    elements: Mapping[str | None, Sequence[float]]
    rates: Mapping[str | None, tuple[float, float]]
    op_rates: Mapping[str | None, Sequence[tuple[float, float]]] = field(default_factory=dict)
    body_ops: Mapping[str | None, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, small: WorkCounter, small_pixels: int, large: WorkCounter, large_pixels: int,
            by_kind: Sequence[str] = ()) -> OpCosts:
        """Fitted on the ops of ``small`` and ``large`` (counters of two runs of ``*_pixels`` input pixels); the
        parts in ``by_kind`` by kind of op where both runs have the same ops."""
        macs, elements, rates, op_rates = {}, {}, {}, {}
        for part, ops in large.ops_by_part.items():
            total = large.macs_by_part[part]
            if not ops or total <= 0:
                continue
            small_ops = small.ops_by_part.get(part, [])
            sample = np.asarray([(e, s) for _, e, s in (*small_ops, *ops)], dtype=float)
            macs[part] = tuple(np.cumsum([m for m, _, _ in ops]) / total)
            elements[part] = tuple(e / large_pixels for _, e, _ in ops)
            rates[part] = _non_negative_line(sample[:, 0], sample[:, 1])
            if part in by_kind and len(small_ops) == len(ops):
                op_rates[part] = _rates_by_kind(small_ops, ops, rates[part])
        return cls(macs, elements, rates, op_rates, {part: large.named_ops[part] for part in macs})

    def _seconds(self, part: str | None, pixels: int) -> np.ndarray:
        per_element, per_op = np.asarray(self.op_rates.get(part, [self.rates[part]]), dtype=float).T
        return per_element * np.asarray(self.elements[part]) * pixels + per_op

    def longest(self, pixels: int) -> float:
        """The expected seconds of the longest op for a photo of ``pixels`` input pixels."""
        return max((float(self._seconds(part, pixels).max()) for part in self.macs), default=0.0)

    def profiles(self, pixels: int) -> dict[str | None, tuple[tuple[float, ...], tuple[float, ...]]]:
        """Each part's profile for a photo of ``pixels`` input pixels."""
        profiles = {}
        for part, macs in self.macs.items():
            seconds = np.cumsum(self._seconds(part, pixels))
            if seconds[-1] > 0:
                profiles[part] = ((0.0, *macs), (0.0, *(seconds / seconds[-1]).tolist()))
        return profiles


def _op_kind(macs: float, elements: float) -> int:
    """An op's kind: its multiply-adds per element streamed, rounded in powers of two (0 for element-wise ops)."""
    return int(np.round(np.log2(max(macs, 1.0) / max(elements, 1.0))))


def _rates_by_kind(small: Sequence[tuple[int, int, float]], large: Sequence[tuple[int, int, float]],
                   fallback: tuple[float, float]) -> list[tuple[float, float]]:
    """Each op's ``(seconds per element, seconds per op)`` from the line of its kind through both runs' ops of that
    kind (the same ops at two sizes); ``fallback`` for a kind seen at one size only."""
    kinds = [_op_kind(m, e) for m, e, _ in large]
    lines = {}
    for kind in set(kinds):
        sample = np.asarray([(op[1], op[2]) for run in (small, large)
                             for op, k in zip(run, kinds, strict=True) if k == kind], dtype=float)
        seen_at_two_sizes = len(np.unique(sample[:, 0])) > 1
        lines[kind] = _non_negative_line(sample[:, 0], sample[:, 1]) if seen_at_two_sizes else fallback
    return [lines[kind] for kind in kinds]


def _non_negative_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y`` against ``x``, both kept >= 0."""
    slope, intercept = np.linalg.lstsq(np.c_[x, np.ones_like(x)], y, rcond=None)[0]
    if slope < 0:
        return 0.0, max(0.0, float(y.mean()))
    if intercept < 0:
        return max(0.0, float((x @ y) / max(x @ x, 1e-30))), 0.0
    return float(slope), float(intercept)


PART_EVIDENCE_S = 1.0  # expected seconds of a part done in this request before its own measured pace counts fully
# A long part needs this share of its planned seconds in the photo instead, where that is longer: a decoder's first
# tiles pay one-time costs (buffers of a new tile size) and run at up to 1.5x its pace for its first second; read as
# its pace, they would add seconds to the rest of its 20-30 s.
PART_EVIDENCE_SHARE = 0.1


class RequestProgress:
    """One progress bar over a whole request (every photo of a batch), with the time left.

    Each photo's share of the bar is its expected time (:class:`WorkPlan`, measured on the last run of the same
    scale and tiles, else on a small calibration photo); within a photo the bar follows the multiply-adds counted so
    far per part (:class:`WorkCounter`), each part's worth its expected seconds, then the files written. Between two
    counts (one large convolution, one file being written: seconds on a busy machine) the bar goes on at the
    measured pace up to the plan's ``longest`` ahead, then ever more slowly towards the end of the photo's share
    (:meth:`ticking` moves it): it never stands still while the work runs, and never fills a share before its photo
    is done.

    The time left is measured while the request runs: each part's remaining expected seconds times that part's own
    pace in this request (real seconds per expected second: a decoder slower than its plan is seen as it runs); for a
    part not yet seen for long (:data:`PART_EVIDENCE_S`, or :data:`PART_EVIDENCE_SHARE` of its plan) blended with the
    geometric mean of the plan's pace and the request's overall pace (the plan's own pace if the plan comes from the
    calibration photos, :attr:`WorkPlan.calibrated`), less the time already spent on the op now running (at most its
    expected length: an op that overruns does not run the estimate down). Never
    under 1 s before the end.

    Args:
        report: ``report(fraction, desc)``, e.g. a ``gr.Progress``.
        names: the photos' names.
        costs: each photo's :class:`WorkPlan`, or a number (work and time in one unit; 0 for photos that will be
            refused).
        min_interval: seconds between two reports (the page gets a few updates a second, not one per op).
        clock: monotonic clock in seconds.
        cancelled: called at every counted op; when it returns True the request stops (:class:`JobCancelled`).
    """

    def __init__(self, report: Callable[..., None], names: Sequence[str], costs: Sequence[float | WorkPlan],
                 min_interval: float = 0.25, clock: Callable[[], float] = time.monotonic,
                 cancelled: Callable[[], bool] | None = None):
        self.report, self.names = report, list(names)
        self.plans = [c if isinstance(c, WorkPlan) else WorkPlan.uniform(max(0.0, float(c))) for c in costs]
        self.plans_in_seconds = all(isinstance(c, WorkPlan) for c in costs)  # numbers: work, not seconds
        self.costs = [plan.total_seconds for plan in self.plans]
        self.total = sum(self.costs) or 1.0
        self.min_interval, self.clock, self.cancelled = min_interval, clock, cancelled
        self.start_time = clock()
        self.last_report = -float("inf")
        self.index, self.part, self.fraction = 0, None, 0.0
        self.done: dict[str | None, float] = defaultdict(float)
        self.counted = 0.0
        self.finished = False
        # Where the counts put the bar (expected seconds into the request) and when: the pace and the start of the
        # bar's run ahead between counts.
        self.counted_position, self.counted_at = 0.0, self.start_time
        self.last_tick = self.start_time
        # The measured pace per part: real seconds spent and expected seconds done, in this request (finished
        # photos; the current one is added from ``done``), and the seconds left as of the last count.
        self.real_by_part: dict[str | None, float] = defaultdict(float)
        self.expected_by_part: dict[str | None, float] = defaultdict(float)
        self.last_work_at = self.start_time
        self.photo_done = False  # the current photo finished (its plan is no longer work left)
        self.left_at_count: float | None = None
        self._lock = threading.RLock()

    def start_photo(self, index: int) -> None:
        with self._lock:
            self.index, self.part, self.photo_done = index, None, False
            self.done, self.counted = defaultdict(float), 0.0
            self.last_work_at = self.clock()
        self._count(sum(self.costs[:index]), force=True)

    def finish_photo(self, index: int) -> None:
        """Photo ``index`` is done (or refused): the bar shows its whole share, whatever the estimate said."""
        with self._lock:
            for part, done in self._expected_done().items():
                self.expected_by_part[part] += done
            self.done, self.photo_done = defaultdict(float), True  # nothing of it is left, nor counted twice
            self.part = SAVING if index + 1 == len(self.names) else None
            self.finished = index + 1 == len(self.names)
        self._count(sum(self.costs[:index + 1]), force=True)

    def work(self, done: float, part: str | None = None) -> None:
        """``done`` multiply-adds of the current photo so far (``part`` SAVING: the fraction of its files written).
        The photo's share is capped: estimates can be short."""
        if self.cancelled is not None and self.cancelled():
            raise JobCancelled("the request was cancelled")
        plan = self.plans[self.index]
        with self._lock:
            if part == SAVING:
                self.part, key = SAVING, SAVING
                self.done[SAVING] = done
            else:
                self.part = part or self.part
                key = self.part if self.part in plan.macs else None
                self.done[key] += done - self.counted
                self.counted = done
            now = self.clock()
            self.real_by_part[key] += now - self.last_work_at  # the op just counted (and the uncounted ones before)
            self.last_work_at = now
        cost = self.costs[self.index]
        self._count(sum(self.costs[:self.index]) + min(plan.position(self.done), 0.99 * cost))

    def _expected_done(self) -> dict[str | None, float]:
        """Expected seconds done per part in the current photo."""
        plan = self.plans[self.index]
        return {part: plan.seconds_done(part, self.done.get(part, 0.0)) for part, macs in plan.macs.items() if macs > 0}

    def _seconds_left(self) -> float | None:
        """Seconds left as of the counts: each part's remaining expected seconds at its measured pace."""
        position = self.counted_position
        if position <= 0 or self.counted_at - self.start_time <= 0:
            return None
        overall = (self.counted_at - self.start_time) / position
        current = self._expected_done()
        expected = defaultdict(float, self.expected_by_part)
        for part, done in current.items():
            expected[part] += done
        remaining: dict[str | None, float] = defaultdict(float)
        for part, planned in ({} if self.photo_done else self.plans[self.index].seconds).items():
            remaining[part] += max(0.0, planned - current.get(part, 0.0))
        for plan in self.plans[self.index + 1:]:
            for part, planned in plan.seconds.items():
                remaining[part] += planned
        # The pace of a part not yet seen. A calibration plan's error is per part, so its own seconds. A plan measured
        # on a real run: halfway (in ratio) between that run and this request's pace so far, because the parts seen
        # so far speed up or slow down apart from the rest (the first run at a size pays for the upsampler's
        # allocations, a second run does not: its decoder would be read as fast as its upsampler).
        prior = 1.0 if self.plans[self.index].calibrated else overall ** 0.5
        left = 0.0
        current_plan = self.plans[self.index].seconds
        for part, planned in remaining.items():
            evidence = max(PART_EVIDENCE_S, PART_EVIDENCE_SHARE * current_plan.get(part, 0.0))
            weight = min(1.0, expected[part] / evidence)
            own = self.real_by_part[part] / expected[part] if expected[part] > 0 else prior
            left += planned * (weight * own + (1 - weight) * prior)
        return left

    def _count(self, position: float, force: bool = False) -> None:
        """The counts put the bar at ``position`` expected seconds."""
        with self._lock:
            self.counted_position = max(self.counted_position, position)
            self.counted_at = self.last_tick = self.clock()
            self.left_at_count = self._seconds_left()
        self._report(position / self.total, force=force)

    def tick(self) -> None:
        """Between two counts: the bar goes on at the measured pace ``v`` (expected seconds per real second so far)
        up to the current plan's ``longest`` beyond the counts; past that (a long op, or the bar ahead of the counts
        after one) it still moves, ever more slowly: ``v * (gap / G)**2``, ``gap`` what is left of the photo's
        share before the bar and ``G`` after the counts (at the counts: the pace; the gap closes as ``1 / t``, so
        the bar never stands still and never fills the share before its photo is done)."""
        with self._lock:
            if self.finished:
                return
            now, position = self.clock(), self.counted_position
            step, self.last_tick = now - self.last_tick, now
            pace = max((self.counted_at - self.start_time) / position if position > 0 else 1.0, 1e-9)
            plan, cost = self.plans[self.index], self.costs[self.index]
            end = sum(self.costs[:self.index]) + 0.99 * cost
            shown = self.fraction * self.total
            ahead = position + min((now - self.counted_at) / pace, plan.longest)
            gap, counted_gap = end - shown, end - position
            creep = shown + step / pace * (gap / counted_gap) ** 2 if gap > 0 and counted_gap > 0 else shown
            target = min(max(ahead, creep), end)
        if target > shown:
            self._report(target / self.total)

    @contextlib.contextmanager
    def ticking(self) -> Iterator[RequestProgress]:
        """Within: a thread calls :meth:`tick` every ``min_interval`` seconds (in this thread's context: a
        ``gr.Progress`` finds its request there)."""
        stop = threading.Event()
        context = contextvars.copy_context()

        def run() -> None:
            while not stop.wait(max(self.min_interval, 0.05)):
                context.run(self.tick)

        thread = threading.Thread(target=run, name="progress-ticker", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def seconds_left(self) -> float | None:
        """The time left now: as of the last count, less the time spent since on the op now running, at most its
        expected length at the pace so far; before the first second and 2 % of the work, the plans' seconds left
        (None with plans of work, not seconds: too early for an honest estimate)."""
        with self._lock:
            now, left = self.clock(), self.left_at_count
            if left is None or now - self.start_time < 1.0 or self.counted_position / self.total < 0.02:
                if not self.plans_in_seconds:
                    return None
                return max(0.0, self.total - max(self.counted_position, now - self.start_time))  # the plan's
            pace = (self.counted_at - self.start_time) / max(self.counted_position, 1e-9)
            return left - min(now - self.counted_at, self.plans[self.index].longest * pace)

    def _report(self, fraction: float, force: bool = False) -> None:
        with self._lock:
            self.fraction = fraction = max(self.fraction, min(fraction, 1.0))  # never moves back
            now = self.clock()
            if not force and now - self.last_report < self.min_interval:
                return
            self.last_report = now
            self.report(fraction, desc=self.describe(fraction))  # in the lock: the reports arrive in order

    def describe(self, fraction: float) -> str:
        count = len(self.names)
        photo = f"{self.names[self.index]} ({self.index + 1} of {count})" if count > 1 else self.names[self.index]
        left = self.seconds_left()
        when = f"about {_time_left(left)} left" if left is not None else "estimating the time left"
        return " · ".join(p for p in (photo, self.part, when) if p)


def _time_left(value: float) -> str:
    """Whole seconds, tenths under 5 s (rounding to whole seconds alone errs by up to 17 % at 3 s, a third of what
    the estimate may err in all), never under 1 s."""
    value = max(1.0, value)
    return seconds(value) if value >= 5 else f"{value:.1f}".rstrip("0").rstrip(".") + " s"


class JobCancelled(Exception):
    """The visitor cancelled the request (or left the page): the work stops at the next counted op."""
