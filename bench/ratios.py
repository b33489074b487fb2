"""Ratios against an anchor, measured the same way in every benchmark.

The benchmarks run on small shared machines (two cores here) where one trial's speed moves by
tens of percent within a minute: clock frequency, neighbours, caches. Timing the subject in one
block and the anchor in another lets that drift land on one side only (the package /
raw-cryptography issuance ratio read 0.70, 0.62 and 0.93 in three such runs). So a ratio here
is measured in pairs: subject and anchor run next to each other, the order alternating (A B,
B A, ...) so a steady drift favours neither, and the report is the median of the per-pair
ratios with their min and max, so a reader sees how far one run can be trusted.

Standard library only.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["MIN_PAIRS", "Ratio", "alternate", "interleaved", "percentile"]

T = TypeVar("T")

# Fewer pairs than this and the min and max say little about the spread.
MIN_PAIRS = 5


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (inclusive method: p99 of 20 values sits just below the largest)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def alternate(
    trials: Mapping[str, Callable[[], T]], rounds: int, warmup: int = 1
) -> dict[str, list[T]]:
    """Run each trial once per round, the order reversed every round; return what they returned.

    Rounds are the pairs of a ratio (two trials) or its tuples (more): with A B, B A, ... a
    drift over the run costs every trial the same on average. The first `warmup` rounds run
    and are dropped (imports, caches, first connections). The garbage collector runs before
    each trial, so one trial does not pay for the garbage of the one before.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds} and {warmup}")
    names = list(trials)
    results: dict[str, list[T]] = {name: [] for name in names}
    for index in range(-warmup, rounds):
        for name in names if index % 2 == 0 else reversed(names):
            gc.collect()
            value = trials[name]()
            if index >= 0:
                results[name].append(value)
    return results


@dataclass(frozen=True)
class Ratio:
    """A subject against its anchor over interleaved pairs of trials.

    `subject` and `anchor` are the trials' values in pair order: rates when higher_is_better,
    times (or CPU per operation) otherwise. Each pair's ratio is the subject's speed over the
    anchor's either way (rate / rate, or anchor time / subject time), so above 1 the subject is
    the faster, and a goal is a floor on the median.
    """

    name: str
    subject: tuple[float, ...]
    anchor: tuple[float, ...]
    higher_is_better: bool = True
    goal: float | None = None

    @classmethod
    def of(
        cls,
        name: str,
        subject: Sequence[float],
        anchor: Sequence[float],
        *,
        higher_is_better: bool = True,
        goal: float | None = None,
    ) -> Ratio:
        """The ratio of trial values already measured in pairs (see `alternate`)."""
        if len(subject) != len(anchor):
            raise ValueError(f"{name}: {len(subject)} subject trials but {len(anchor)} anchor")
        if len(subject) < MIN_PAIRS:
            raise ValueError(f"{name}: {len(subject)} pairs, a ratio needs {MIN_PAIRS}")
        if any(v <= 0 for v in (*subject, *anchor)):
            raise ValueError(f"{name}: trial values must be positive")
        return cls(name, tuple(subject), tuple(anchor), higher_is_better, goal)

    @property
    def pairs(self) -> tuple[float, ...]:
        """Each pair's ratio, in the order the pairs ran."""
        if self.higher_is_better:
            return tuple(s / a for s, a in zip(self.subject, self.anchor, strict=True))
        return tuple(a / s for s, a in zip(self.subject, self.anchor, strict=True))

    @property
    def median(self) -> float:
        return statistics.median(self.pairs)

    @property
    def min(self) -> float:
        return min(self.pairs)

    @property
    def max(self) -> float:
        return max(self.pairs)

    @property
    def subject_median(self) -> float:
        return statistics.median(self.subject)

    @property
    def anchor_median(self) -> float:
        return statistics.median(self.anchor)

    @property
    def goal_met(self) -> bool | None:
        """Whether the median reaches the goal; None without one."""
        return None if self.goal is None else self.median >= self.goal

    def format(self, width: int = 0, spec: str = ".2f", suffix: str = "") -> str:
        """`name: median 0.91 (min 0.85, max 0.97, 7 pairs); goal >= 0.8: met`."""

        def num(value: float) -> str:
            return f"{value:{spec}}{suffix}"

        text = (
            f"{self.name + ':':<{width}} median {num(self.median)} "
            f"(min {num(self.min)}, max {num(self.max)}, {len(self.pairs)} pairs)"
        )
        if self.goal is not None:
            text += f"; goal >= {self.goal:.3g}{suffix}: {'met' if self.goal_met else 'not met'}"
        return text

    def row(self, width: int = 0, spec: str = ".2f", suffix: str = "") -> None:
        """Print `format()`."""
        print(self.format(width, spec, suffix), flush=True)


def interleaved(
    subject: Callable[[], float],
    anchor: Callable[[], float],
    pairs: int = 7,
    warmup: int = 1,
    *,
    name: str = "subject / anchor",
    higher_is_better: bool = True,
    goal: float | None = None,
) -> Ratio:
    """Run subject and anchor as A B, B A, ... for `pairs` pairs after `warmup`; their Ratio.

    Each callable runs one trial and returns a rate (higher_is_better) or a time.
    """
    runs = alternate({"subject": subject, "anchor": anchor}, pairs, warmup)
    return Ratio.of(
        name, runs["subject"], runs["anchor"], higher_is_better=higher_is_better, goal=goal
    )
