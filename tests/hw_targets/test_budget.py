"""Budget strings: units to SI base units, relative budgets, and one clear error for everything else."""
from __future__ import annotations

import pytest

from haqc.errors import InputError
from haqc.hw_targets import Budget, parse_budget


@pytest.mark.parametrize(
    ("text", "quantity", "value"),
    [
        ("20ms", "latency", 0.02),
        ("1.5s", "latency", 1.5),
        ("300us", "latency", 300e-6),
        ("300µs", "latency", 300e-6),
        (" 20 ms ", "latency", 0.02),
        ("20MS", "latency", 0.02),
        ("5mJ", "energy", 5e-3),
        ("0.2J", "energy", 0.2),
        ("40uJ", "energy", 40e-6),
        ("2MB", "size", 2e6),
        ("500KB", "size", 500e3),
        ("500kb", "size", 500e3),
        ("1.5MiB", "size", 1.5 * 2**20),
        ("1GiB", "size", 2**30),
        ("123B", "size", 123.0),
        ("1e3KB", "size", 1e6),
    ],
)
def test_absolute_budgets_are_in_si_base_units(text, quantity, value):
    budget = parse_budget(text, quantity)
    assert budget == Budget(quantity, pytest.approx(value), relative=False)
    assert budget.resolve(123.0) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "fraction"), [("0.6x", 0.6), ("60%", 0.6), ("0.6X", 0.6), ("150%", 1.5), (".5x", 0.5)]
)
def test_relative_budgets_are_fractions_of_the_w8a8_cost(text, fraction):
    for quantity in ("latency", "energy", "size"):
        budget = parse_budget(text, quantity)
        assert budget.relative
        assert budget.resolve(10.0) == pytest.approx(10.0 * fraction)


def test_budgets_print_in_readable_units():
    assert str(parse_budget("20ms", "latency")) == "20 ms"
    assert str(parse_budget("1.5MiB", "size")) == "1.57286 MB"
    assert str(parse_budget("60%", "energy")) == "60% of the all-8-bit energy"


def test_a_budget_needs_a_target_that_estimates_the_quantity():
    with pytest.raises(InputError, match="estimates energy"):
        parse_budget("0.5x", "energy").resolve(None)


@pytest.mark.parametrize(
    ("text", "quantity", "expected"),
    [
        ("5MB", "latency", "'5MB' is a size, not a latency budget: use s, ms or us"),
        ("20ms", "size", "'20ms' is a latency, not a size budget"),
        ("5mJ", "latency", "'5mJ' is an energy, not a latency budget"),
        ("0ms", "latency", "must be positive"),
        ("-5ms", "latency", "must be positive"),
        ("0x", "energy", "must be positive"),
        ("0%", "size", "must be positive"),
        ("fast", "latency", "cannot read latency budget 'fast'"),
        ("", "latency", "cannot read latency budget ''"),
        ("ms", "latency", "cannot read latency budget 'ms'"),
        ("20", "latency", "has no unit"),
        ("20 parsecs", "latency", "unknown unit 'parsecs'"),
        ("2 MB", "size", None),
        ("nan ms", "latency", "cannot read"),
        ("inf ms", "latency", "cannot read"),
        ("1e999ms", "latency", "must be positive"),
    ],
)
def test_bad_budgets_are_one_clear_input_error(text, quantity, expected):
    if expected is None:  # a space between number and unit is fine
        assert parse_budget(text, quantity).value == 2e6
        return
    with pytest.raises(InputError) as info:
        parse_budget(text, quantity)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_quantity_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_budget("20ms", "speed")  # type: ignore[arg-type]
