"""bench/ratios.py: interleaved pairs, alternating order, median/min/max and the goal check."""

from __future__ import annotations

import itertools

import pytest

from bench.ratios import MIN_PAIRS, Ratio, alternate, interleaved


def _recording(log: list[str], name: str, values):
    """A fake trial: logs its name and returns the next of values."""
    it = iter(values)

    def trial() -> float:
        log.append(name)
        return next(it)

    return trial


def test_a_subject_at_a_fixed_fraction_of_the_anchor_gives_that_fraction():
    ratio = interleaved(lambda: 800.0, lambda: 1000.0, pairs=7)
    assert ratio.median == pytest.approx(0.8)
    assert ratio.min == pytest.approx(0.8)
    assert ratio.max == pytest.approx(0.8)
    assert len(ratio.pairs) == 7
    assert ratio.subject_median == 800.0 and ratio.anchor_median == 1000.0


def test_a_drifting_machine_pushes_alternate_pairs_to_either_side_of_the_true_ratio():
    # The machine slows down trial after trial; the subject always does 0.8x the anchor's work
    # in the same conditions. Run in a fixed order, every pair would lean the same way.
    clock = itertools.count()

    def speed() -> float:
        return 1000.0 / (1 + 0.1 * next(clock))

    ratio = interleaved(lambda: 0.8 * speed(), speed, pairs=7)
    above = [r > 0.8 for r in ratio.pairs]
    assert above == [above[0], not above[0]] * 3 + [above[0]]
    assert ratio.min < 0.8 < ratio.max
    assert ratio.median == pytest.approx(0.8, rel=0.1)


def test_order_alternates_each_pair_and_warmup_runs_are_dropped():
    log: list[str] = []
    subject = _recording(log, "S", [1.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    anchor = _recording(log, "A", [1.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    ratio = interleaved(subject, anchor, pairs=5, warmup=1)
    assert len(log) == 12
    pairs = [tuple(log[i : i + 2]) for i in range(0, len(log), 2)]
    assert {pairs[0], pairs[1]} == {("S", "A"), ("A", "S")}
    assert all(pairs[i] != pairs[i + 1] for i in range(len(pairs) - 1))
    # The warm-up pair (1.0 against 1.0) is not among the ratios.
    assert ratio.pairs == (0.5,) * 5
    assert ratio.subject == (2.0,) * 5


def test_alternate_reverses_the_whole_round_for_more_than_two_trials():
    log: list[str] = []
    trials = {n: _recording(log, n, itertools.repeat(1.0)) for n in "XYZ"}
    runs = alternate(trials, rounds=4, warmup=0)
    rounds = ["".join(log[i : i + 3]) for i in range(0, len(log), 3)]
    assert rounds == ["XYZ", "ZYX", "XYZ", "ZYX"]
    assert {k: len(v) for k, v in runs.items()} == {"X": 4, "Y": 4, "Z": 4}


def test_median_min_max_with_an_outlier():
    subject = [9.0, 8.0, 9.5, 3.0, 9.0]  # one trial hit by a neighbour
    anchor = [10.0] * 5
    ratio = Ratio.of("r", subject, anchor)
    assert ratio.median == pytest.approx(0.9)
    assert ratio.min == pytest.approx(0.3)
    assert ratio.max == pytest.approx(0.95)
    assert ratio.subject_median == 9.0
    assert ratio.anchor_median == 10.0


def test_times_are_turned_into_speed_so_above_one_means_the_subject_is_faster():
    faster = Ratio.of("t", [1.0] * 5, [2.0] * 5, higher_is_better=False)
    assert faster.median == pytest.approx(2.0)
    as_rates = Ratio.of("r", [1 / 1.0] * 5, [1 / 2.0] * 5)
    assert as_rates.median == pytest.approx(faster.median)


def test_goal_is_a_floor_on_the_median():
    met = Ratio.of("ratio a / b", [0.85] * 4 + [0.5], [1.0] * 5, goal=0.8)
    not_met = Ratio.of("ratio a / b", [0.75] * 4 + [0.95], [1.0] * 5, goal=0.8)
    assert met.goal_met is True
    assert not_met.goal_met is False
    assert Ratio.of("x", [1.0] * 5, [1.0] * 5).goal_met is None
    assert met.format().endswith("goal >= 0.8: met")
    assert not_met.format().endswith("goal >= 0.8: not met")


def test_format_names_median_spread_and_pair_count():
    ratio = Ratio.of("ratio a / b", [0.91, 0.85, 0.97, 0.9, 0.92], [1.0] * 5)
    text = ratio.format()
    assert text.startswith("ratio a / b: median 0.91 ")
    assert "min 0.85" in text and "max 0.97" in text and "5 pairs" in text
    assert "goal" not in text
    assert Ratio.of("n", [500.0] * 5, [1.0] * 5).format(spec=".0f", suffix="x") == (
        "n: median 500x (min 500x, max 500x, 5 pairs)"
    )


def test_too_few_pairs_mismatched_or_non_positive_trials_are_refused():
    with pytest.raises(ValueError, match="pairs"):
        Ratio.of("r", [1.0] * (MIN_PAIRS - 1), [1.0] * (MIN_PAIRS - 1))
    with pytest.raises(ValueError, match="anchor"):
        Ratio.of("r", [1.0] * MIN_PAIRS, [1.0] * (MIN_PAIRS + 1))
    with pytest.raises(ValueError, match="positive"):
        Ratio.of("r", [1.0] * (MIN_PAIRS - 1) + [0.0], [1.0] * MIN_PAIRS)
    with pytest.raises(ValueError):
        interleaved(lambda: 1.0, lambda: 1.0, pairs=MIN_PAIRS - 1)
