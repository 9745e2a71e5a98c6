"""The polars rulebook: each rule catches its defect, clean bars pass, nothing is dropped."""

import datetime as dt
import json

import polars as pl
import pytest

from checks.rulebook import DAILY_PRICE_RULES, REQUIRED_COLUMNS, day_over_day_jumps, validate
from checks.schemas import DAILY_PRICES, RAW

DAY = dt.date(2026, 3, 2)
RULES = [r.name for r in DAILY_PRICE_RULES]


def bar(symbol: str = "AAA", day: dt.date = DAY, **values) -> dict:
    row = {
        "symbol": symbol,
        "trade_date": day,
        "open": 100.0,
        "high": 110.0,
        "low": 90.0,
        "close": 105.0,
        "volume": 1_000,
        "source": "test",
    }
    row.update(values)
    return row


def frame(rows: list[dict]) -> pl.DataFrame:
    """Rows with a `raw` key carry it (what schemas.conform could not parse)."""
    if any(RAW in r for r in rows):
        return pl.DataFrame(rows, schema={**DAILY_PRICES, RAW: pl.String})
    return pl.DataFrame(rows, schema=DAILY_PRICES)


def clean_frame() -> pl.DataFrame:
    rows = [bar(f"S{i:02d}", DAY + dt.timedelta(days=d)) for i in range(5) for d in range(3)]
    rows.append(bar("FLAT", open=50.0, high=50.0, low=50.0, close=50.0, volume=0))  # edge values
    return frame(rows)


# Per rule, bars with the defect the rule exists for (other rules may fire as well: a bar
# whose high is below its low cannot have its open within range either).
DEFECTS: dict[str, list[dict]] = {
    "required_fields": [bar(**{c: None}) for c in REQUIRED_COLUMNS],
    "positive_prices": [
        *(bar(**{c: 0.0}) for c in ("open", "high", "low", "close")),
        bar(open=-1.0, high=-0.5, low=-2.0, close=-1.0),
    ],
    "high_gte_low": [bar(high=89.0)],
    "open_within_range": [bar(open=111.0), bar(open=89.0)],
    "close_within_range": [bar(close=110.5), bar(close=89.99)],
    "non_negative_volume": [bar(volume=-1)],
    "finite_prices": [
        *(bar(**{c: float("inf")}) for c in ("open", "high", "low", "close")),
        bar(low=float("-inf")),
    ],
    "non_empty_symbol": [bar(symbol=""), bar(symbol="  \t")],
    **{
        f"unparseable:{c}": [bar(**{c: None, RAW: json.dumps({c: "abc"})})]
        for c in ("trade_date", "open", "high", "low", "close", "volume")
    },
    "unique_symbol_date": [[bar(), bar(close=106.0)]],
}


def test_every_rule_has_a_defect_case():
    assert set(DEFECTS) == set(RULES)


def test_clean_bars_pass_every_rule():
    clean = clean_frame()
    result = validate(clean)
    assert result.violation_counts == dict.fromkeys(RULES, 0)
    assert result.quarantined.is_empty()
    assert result.clean.equals(clean)


@pytest.mark.parametrize(
    ("rule", "defect"),
    [(rule, case) for rule, cases in DEFECTS.items() for case in cases],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_rule_fails_on_its_defect(rule, defect):
    bad_rows = defect if isinstance(defect, list) else [defect]
    result = validate(pl.concat([clean_frame(), frame(bad_rows)], how="diagonal"))
    assert result.violation_counts[rule] == len(bad_rows)
    assert len(result.quarantined) == len(bad_rows)
    assert all(rule in v for v in result.quarantined["violations"].to_list())


def test_pure_defects_break_only_their_rule():
    cases = {
        "required_fields": bar(volume=None),
        "positive_prices": bar(open=0.0, high=0.0, low=0.0, close=0.0),
        "open_within_range": bar(open=120.0),
        "close_within_range": bar(close=80.0),
        "non_negative_volume": bar(volume=-5),
    }
    for rule, row in cases.items():
        result = validate(frame([row]))
        assert result.quarantined["violations"].to_list() == [[rule]], rule


def test_price_relations_leave_missing_values_to_required_fields():
    result = validate(frame([bar(high=None), bar(symbol="B", low=None, close=None)]))
    assert result.quarantined["violations"].to_list() == [["required_fields"]] * 2


def test_every_copy_of_a_repeated_key_is_quarantined():
    rows = [bar(), bar(close=101.0), bar(close=102.0), bar(symbol="OTHER")]
    result = validate(frame(rows))
    assert result.violation_counts["unique_symbol_date"] == 3
    assert result.clean["symbol"].to_list() == ["OTHER"]


def test_validate_keeps_every_row_and_names_the_broken_rules():
    rows = [
        *clean_frame().to_dicts(),
        bar("X1", high=80.0, volume=-3),  # high_gte_low, open/close out of range, volume
        bar("X2", close=None),
        bar("X3", open=0.0),
        bar("X4"),
        bar("X4", close=100.0),
    ]
    source = frame(rows)
    result = validate(source)

    assert len(result.clean) + len(result.quarantined) == len(source)
    assert result.clean.columns == source.columns
    assert result.quarantined.columns == [*source.columns, "violations", RAW]
    assert result.quarantined.schema["violations"] == pl.List(pl.String)
    # Together the two halves are the input, row for row.
    both = pl.concat([result.clean, result.quarantined.drop("violations", RAW)])
    assert both.sort(pl.all()).equals(source.sort(pl.all()))

    violations = dict(
        zip(
            result.quarantined["symbol"].to_list(),
            result.quarantined["violations"].to_list(),
            strict=False,
        )
    )
    assert violations["X1"] == [
        "high_gte_low",
        "open_within_range",
        "close_within_range",
        "non_negative_volume",
    ]
    assert violations["X2"] == ["required_fields"]
    assert violations["X3"] == ["positive_prices", "open_within_range"]
    assert violations["X4"] == ["unique_symbol_date"]
    # violation_counts counts rows per rule, as the violations lists do.
    for rule in RULES:
        listed = sum(rule in v for v in result.quarantined["violations"].to_list())
        assert result.violation_counts[rule] == listed


def test_validate_on_an_empty_frame():
    result = validate(frame([]))
    assert result.clean.is_empty() and result.quarantined.is_empty()
    assert result.violation_counts == dict.fromkeys(RULES, 0)


def test_day_over_day_jumps_flags_moves_beyond_30_percent():
    days = [DAY + dt.timedelta(days=d) for d in range(4)]
    rows = [
        # AAA: +10%, +35% (flagged), -29% (not flagged)
        *(
            bar("AAA", d, close=c)
            for d, c in zip(days, [100.0, 110.0, 148.5, 105.435], strict=True)
        ),
        # BBB: -40% (flagged), as the first bar of BBB must not be compared with AAA's last.
        *(bar("BBB", d, close=c) for d, c in zip(days[:2], [10.0, 6.0], strict=True)),
    ]
    jumps = day_over_day_jumps(frame(rows).sample(fraction=1.0, shuffle=True, seed=1))
    assert jumps.select("symbol", "trade_date").rows() == [("AAA", days[2]), ("BBB", days[1])]
    assert jumps["change"].to_list() == pytest.approx([0.35, -0.4])
    assert jumps["prev_close"].to_list() == [110.0, 10.0]


def test_day_over_day_jumps_ignores_moves_within_the_threshold():
    rows = [bar("AAA", DAY, close=100.0), bar("AAA", DAY + dt.timedelta(days=1), close=129.0)]
    assert day_over_day_jumps(frame(rows)).is_empty()
