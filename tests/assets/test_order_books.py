"""<market>/order_books: synthetic history, each rule on its defect, coverage, the capture
schedule and spool (restart-safe, idempotent compaction) and live-only backfill errors."""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from checks.markets import capture_slots, partition_dates, session_bounds
from checks.order_book_rules import (
    ORDER_BOOK_RULES,
    ORDER_BOOK_RULES_CHECK,
    SNAPSHOT_COVERAGE,
    order_book_rules_result,
    validate_order_books,
)
from checks.schemas import ORDER_BOOK_SNAPSHOTS, ORDER_BOOKS
from marketpipe_assets.book_capture import capture, capture_job, capture_schedule
from marketpipe_assets.order_books import with_derived
from resources.book_spool import BookSpool
from resources.market_data import MarketDataResource
from resources.sources.synthetic import SyntheticSource
from tests.conftest import SYMBOLS, materialize, recent_sessions

INTERVAL = 30  # minutes: 13-14 snapshots per symbol and session keep each run small
pytestmark = pytest.mark.xdist_group("order_books")


@pytest.fixture(autouse=True)
def book_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MARKETPIPE_ORDER_BOOK_INTERVAL_MINUTES", str(INTERVAL))
    monkeypatch.setenv("MARKETPIPE_SPOOL_DIR", str(tmp_path / "spool"))


def session(market: str = "krx") -> dt.date:
    return partition_dates(recent_sessions(market, 2))[0]


def history(market: str, day: dt.date, bad_row_rate: float = 0.0) -> pl.DataFrame:
    source = SyntheticSource(symbols=SYMBOLS, missing_rate=0.0, bad_row_rate=bad_row_rate)
    symbols = source.universe(market, today=day)["symbol"].to_list()
    return source.order_book_history(market, [day], symbols, INTERVAL)


def run_books(market, day, lake, market_data, instance):
    return materialize(
        market,
        ("order_books",),
        lake=lake,
        market_data=market_data,
        instance=instance,
        partition_key=day.isoformat(),
    )


def read_stored(lake, day: dt.date, market: str = "krx") -> pl.DataFrame:
    return lake.read_partitions("order_books", market, ORDER_BOOKS, first=day, last=day)


def read_quarantined(lake, day: dt.date, market: str = "krx") -> pl.DataFrame:
    return lake.read_quarantine("order_books", market, ORDER_BOOK_SNAPSHOTS, first=day, last=day)


def check_outcomes(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


# Materializing from the synthetic source -------------------------------------------------------
def test_synthetic_session_stores_clean_snapshots_and_quarantines_bad_ones(
    with_universe, market_data, instance
):
    day = session("krx")
    result = run_books("krx", day, with_universe, market_data, instance)
    assert result.success
    assert check_outcomes(result) == {ORDER_BOOK_RULES_CHECK: True, SNAPSHOT_COVERAGE: True}

    stored = read_stored(with_universe, day)
    quarantined = with_universe.read_quarantine(
        "order_books", "krx", ORDER_BOOK_SNAPSHOTS, first=day, last=day
    )
    source = history("krx", day, bad_row_rate=market_data.synthetic_bad_row_rate)
    # Nothing lost: every generated row is stored or quarantined, and no snapshot is both.
    assert len(stored) + len(quarantined) == len(source)
    stored_keys = set(stored.select("symbol", "snapshot_ts").unique().rows())
    bad_keys = set(quarantined.select("symbol", "snapshot_ts").unique().rows())
    assert not stored_keys & bad_keys
    rule_names = {r.name for r in ORDER_BOOK_RULES}
    assert set(quarantined["violations"].explode()) <= rule_names
    assert stored.group_by("symbol", "snapshot_ts").len()["len"].unique().to_list() == [10]
    opens, closes = session_bounds("krx", day)
    assert stored["snapshot_ts"].min() >= opens and stored["snapshot_ts"].max() <= closes


def test_derived_columns_by_hand():
    book = history("us", session("us")).head(10)  # one snapshot, levels 1..10
    derived = with_derived(book)
    bid, ask = book["bid_price"][0], book["ask_price"][0]
    assert derived["mid"].to_list() == [pytest.approx((bid + ask) / 2)] * 10
    assert derived["spread"][3] == pytest.approx(ask - bid)
    assert derived["spread_pct"][9] == pytest.approx((ask - bid) / ((bid + ask) / 2) * 100)
    cum_bid = np.cumsum(book["bid_size"].to_numpy())
    cum_ask = np.cumsum(book["ask_size"].to_numpy())
    assert derived["cum_bid_size"].to_list() == cum_bid.tolist()
    assert derived["imbalance"][4] == pytest.approx(
        (cum_bid[4] - cum_ask[4]) / (cum_bid[4] + cum_ask[4])
    )


# Each rule fails on its defect ------------------------------------------------------------------
def _snapshot(frame: pl.DataFrame, n: int) -> pl.Expr:
    """The n-th snapshot with all ten levels quoted."""
    full = (
        frame.group_by("symbol", "snapshot_ts", maintain_order=True)
        .agg(
            quoted=pl.col("ask_price").is_not_null().all() & pl.col("bid_price").is_not_null().all()
        )
        .filter("quoted")
    )
    symbol, ts, _ = full.row(n)
    return (pl.col("symbol") == symbol) & (pl.col("snapshot_ts") == ts)


DEFECTS = {
    # rule: how to break one snapshot (a polars transform of the whole frame, target mask `m`)
    "not_crossed": lambda f, m: f.with_columns(
        ask_price=pl.when(m & (pl.col("level") == 1))
        .then(pl.col("bid_price"))
        .otherwise(pl.col("ask_price"))
    ),
    "levels_ordered": lambda f, m: f.with_columns(
        bid_price=pl.when(m & (pl.col("level") == 3))
        .then(pl.col("bid_price") + 1000)
        .otherwise(pl.col("bid_price"))
    ),
    "non_negative_sizes": lambda f, m: f.with_columns(
        ask_size=pl.when(m & (pl.col("level") == 2)).then(-5).otherwise(pl.col("ask_size"))
    ),
    "ten_levels": lambda f, m: f.filter(~(m & (pl.col("level") == 7))),
    "positive_prices": lambda f, m: f.with_columns(
        bid_price=pl.when(m & (pl.col("level") == 10)).then(-1.0).otherwise(pl.col("bid_price"))
    ),
    "empty_levels_consistent": lambda f, m: f.with_columns(
        ask_size=pl.when(m & (pl.col("level") == 2)).then(0).otherwise(pl.col("ask_size"))
    ),
    "within_session_hours": lambda f, m: f.with_columns(
        snapshot_ts=pl.when(m)
        .then(pl.col("snapshot_ts") + dt.timedelta(hours=12))
        .otherwise(pl.col("snapshot_ts"))
    ),
    "required_fields": lambda f, m: f.with_columns(
        bid_size=pl.when(m & (pl.col("level") == 5)).then(None).otherwise(pl.col("bid_size"))
    ),
}


@pytest.mark.parametrize("rule", sorted(DEFECTS))
def test_each_rule_quarantines_the_whole_snapshot_it_breaks(rule):
    day = session("krx")
    clean = history("krx", day)
    assert validate_order_books(clean, "krx", [day]).quarantined.is_empty()
    target = _snapshot(clean, 7)
    broken = DEFECTS[rule](clean, target)
    validated = validate_order_books(broken, "krx", [day])
    q = validated.quarantined
    assert q["violations"].explode().unique().to_list() == [rule]
    # Exactly the target snapshot, all of its rows, went to quarantine.
    assert q.select("symbol", "snapshot_ts").n_unique() == 1
    assert len(q) + len(validated.clean) == len(broken)
    assert_frame_equal(validated.clean, clean.filter(~target))
    # The check fails when such rows would be stored, and passes on the clean ones.
    assert not order_book_rules_result(broken, validated, "krx", [day]).passed
    assert order_book_rules_result(validated.clean, validated, "krx", [day]).passed


def test_a_one_sided_thin_book_is_valid():
    day = session("us")
    clean = history("us", day)
    target = _snapshot(clean, 3)
    thin = clean.with_columns(
        ask_price=pl.when(target).then(None).otherwise(pl.col("ask_price")),
        ask_size=pl.when(target).then(0).otherwise(pl.col("ask_size")),
        bid_price=pl.when(target & (pl.col("level") > 6)).then(None).otherwise(pl.col("bid_price")),
        bid_size=pl.when(target & (pl.col("level") > 6)).then(0).otherwise(pl.col("bid_size")),
    )
    assert validate_order_books(thin, "us", [day]).quarantined.is_empty()
    derived = with_derived(validate_order_books(thin, "us", [day]).clean).filter(target)
    assert derived["mid"].null_count() == 10 and derived["cum_ask_size"].max() == 0


def test_synthetic_defect_knob_injects_every_kind():
    day = session("us")
    frame = history("us", day, bad_row_rate=0.05)
    counts = validate_order_books(frame, "us", [day]).violation_counts
    for rule in ("not_crossed", "levels_ordered", "non_negative_sizes", "ten_levels",
                 "within_session_hours"):  # fmt: skip
        assert counts[rule] > 0, rule


# Capture, spool, compaction --------------------------------------------------------------------
def test_capture_schedule_requests_each_session_slot_once():
    schedule = capture_schedule("krx")
    day = session("krx")
    slot = capture_slots("krx", day, INTERVAL)[3]
    with dg.build_schedule_context(scheduled_execution_time=slot) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    assert request.run_key == f"krx-books-{slot.isoformat()}"
    assert request.run_config["ops"]["capture_krx_order_books"]["config"]["slot"] == (
        slot.isoformat()
    )
    closed = session_bounds("krx", day)[1] + dt.timedelta(hours=1)
    saturday = dt.datetime(2026, 11, 21, 1, 0, tzinfo=dt.UTC)
    for when in (closed, saturday):
        with dg.build_schedule_context(scheduled_execution_time=when) as context:
            assert schedule.evaluate_tick(context).skip_message


def test_capture_job_spools_a_slot_and_compaction_uses_it(
    with_universe, market_data, instance, tmp_path
):
    day = session("krx")
    slots = capture_slots("krx", day, INTERVAL)
    job = capture_job("krx")
    for slot in slots:
        result = job.execute_in_process(
            run_config={"ops": {"capture_krx_order_books": {"config": {"slot": slot.isoformat()}}}},
            resources={"lake": with_universe, "market_data": market_data},
            instance=instance,
        )
        assert result.success
    spool = BookSpool(tmp_path / "spool")
    assert len(spool.slots("krx", day)) == len(slots)

    first = run_books("krx", day, with_universe, market_data, instance)
    assert first.success and all(check_outcomes(first).values())
    path = with_universe.partition_file("order_books", "krx", day)
    stored_once = with_universe.fs.cat_file(path)
    # The spool holds exactly the source's history of the session, so compaction equals it.
    expected = validate_order_books(
        history("krx", day, market_data.synthetic_bad_row_rate), "krx", [day]
    )
    assert_frame_equal(
        read_stored(with_universe, day).select(expected.clean.columns),
        expected.clean,
    )
    # Idempotent: compacting the same spool again writes the same bytes.
    assert run_books("krx", day, with_universe, market_data, instance).success
    assert with_universe.fs.cat_file(path) == stored_once


def test_missing_slots_fail_coverage(with_universe, market_data, instance):
    day = session("krx")
    spool = BookSpool()
    for slot in capture_slots("krx", day, INTERVAL)[:5]:  # the capture stopped after 5 slots
        capture("krx", slot, lake=with_universe, market_data=market_data, spool=spool)
    result = run_books("krx", day, with_universe, market_data, instance)
    outcomes = check_outcomes(result)
    assert outcomes[SNAPSHOT_COVERAGE] is False and outcomes[ORDER_BOOK_RULES_CHECK] is True
    coverage = next(
        e for e in result.get_asset_check_evaluations() if e.check_name == SNAPSHOT_COVERAGE
    )
    assert day.isoformat() in coverage.description


CAPTURE_SCRIPT = textwrap.dedent(
    """
    import datetime as dt, sys
    from marketpipe_assets.book_capture import capture
    from checks.markets import capture_slots
    from resources.book_spool import BookSpool
    from resources.lake import LakeResource
    from resources.market_data import MarketDataResource

    lake = LakeResource(url=sys.argv[1])
    day = dt.date.fromisoformat(sys.argv[2])
    data = MarketDataResource(synthetic_symbols=int(sys.argv[3]), synthetic_missing_rate=0.0)
    for slot in capture_slots("krx", day, int(sys.argv[4])):
        done = capture("krx", slot, lake=lake, market_data=data, spool=BookSpool())
        print(done["status"], flush=True)
    """
)


def test_capture_killed_mid_session_restarts_without_loss_or_duplicates(
    with_universe, market_data, instance, tmp_path, monkeypatch
):
    day = session("krx")
    interval = 5  # 78 slots, so the kill lands mid-session
    env = {**os.environ, "MARKETPIPE_ORDER_BOOK_INTERVAL_MINUTES": str(interval)}
    args = [sys.executable, "-c", CAPTURE_SCRIPT, with_universe.url, day.isoformat(),
            str(SYMBOLS), str(interval)]  # fmt: skip
    spool = BookSpool(tmp_path / "spool")
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(spool.slots("krx", day)) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = len(spool.slots("krx", day))
    assert 10 <= before < 78, "the capture was not killed mid-session"

    restarted = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    statuses = restarted.stdout.split("\n")
    assert statuses.count("already captured") == before  # kept, not captured again
    assert len(spool.slots("krx", day)) == 78
    for path in spool.slots("krx", day):  # every visible slot file is whole
        assert pl.read_parquet(path).height > 0

    monkeypatch.setenv("MARKETPIPE_ORDER_BOOK_INTERVAL_MINUTES", str(interval))
    assert run_books("krx", day, with_universe, market_data, instance).success
    stored = read_stored(with_universe, day)
    quarantined = with_universe.read_quarantine(
        "order_books", "krx", ORDER_BOOK_SNAPSHOTS, first=day, last=day
    )
    source = SyntheticSource(symbols=SYMBOLS, missing_rate=0.0)
    symbols = source.universe("krx", today=day)["symbol"].to_list()
    expected = source.order_book_history("krx", [day], symbols, interval)
    assert len(stored) + len(quarantined) == len(expected)  # every snapshot exactly once
    assert stored.select("symbol", "snapshot_ts", "level").is_duplicated().sum() == 0


# Live-only sources ------------------------------------------------------------------------------
def test_backfilling_from_a_live_only_source_says_so(with_universe, instance, monkeypatch):
    monkeypatch.setenv("KIS_APP_KEY", "PSfakeKISappKEYorderbooks0")
    monkeypatch.setenv("KIS_APP_SECRET", "secret-for-order-book-test")
    live_only = MarketDataResource(krx_source="kis", synthetic_symbols=SYMBOLS)
    day = session("krx")
    result = run_books("krx", day, with_universe, live_only, instance)
    assert not result.success
    message = str(result.failure_data_for_node("krx__order_books").error.message)
    assert "live only" in message and day.isoformat() in message and "kis" in message


def test_kis_live_books_are_captured_through_dagster_once_per_slot(
    with_universe, instance, monkeypatch, tmp_path
):
    from resources.providers.breaker import shared_breaker
    from tests.fakes.kis import BOOK, FakeKis

    key, secret = "PSfakeKISappKEYbooks00000000", "fakeKISsecret-books"
    monkeypatch.setenv("KIS_APP_KEY", key)
    monkeypatch.setenv("KIS_APP_SECRET", secret)
    monkeypatch.setenv("MARKETPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MARKETPIPE_KIS_RATE_LIMIT", "500/s")
    shared_breaker("kis").record_success()
    day = session("krx")
    slot = capture_slots("krx", day, INTERVAL)[2]
    symbols = SyntheticSource(symbols=SYMBOLS).universe("krx", today=day)["symbol"].to_list()
    with FakeKis(key, secret, symbols=symbols) as fake:
        monkeypatch.setenv("KIS_BASE_URL", fake.url)
        fake.book_levels[symbols[0]] = 6  # a thin book: levels 7-10 are "0"
        live = MarketDataResource(krx_source="kis", synthetic_symbols=SYMBOLS)
        config = {"ops": {"capture_krx_order_books": {"config": {"slot": slot.isoformat()}}}}
        for _ in range(2):  # the second run of the same slot finds it spooled
            result = capture_job("krx").execute_in_process(
                run_config=config,
                resources={"lake": with_universe, "market_data": live},
                instance=instance,
            )
            assert result.success
        requests = len(fake.calls(BOOK))
    universe = with_universe.read_table("universe", "krx")
    active = universe.filter(
        (pl.col("listing_date") <= day)
        & (pl.col("delisting_date").is_null() | (pl.col("delisting_date") > day))
    )
    books = BookSpool(tmp_path / "spool").read("krx", [day])
    assert requests == len(active)  # one book per active symbol, and none for the repeat
    assert set(books["symbol"]) == set(active["symbol"]) and len(books) == 10 * len(active)
    assert books["trade_date"].unique().to_list() == [day]
    thin = books.filter(pl.col("symbol") == symbols[0], pl.col("level") > 6)
    assert thin["bid_price"].null_count() == 4 and thin["ask_size"].sum() == 0
    validated = validate_order_books(books, "krx", [day])
    # The books are well-formed; their time is when the fake answered, not the slot's session,
    # so only `within_session_hours` can object to them.
    assert set(validated.quarantined["violations"].explode()) <= {"within_session_hours"}


def test_null_listing_dates_are_listed_and_a_bad_universe_spools_no_empty_slot(
    with_universe, market_data
):
    day = session("krx")
    first, second = capture_slots("krx", day, INTERVAL)[:2]
    universe = with_universe.read_table("universe", "krx")
    # Listed since before the history: every symbol is captured.
    with_universe.write_table("universe", "krx", universe.with_columns(listing_date=None))
    spool = BookSpool()
    done = capture("krx", first, lake=with_universe, market_data=market_data, spool=spool)
    still_listed = universe.filter(
        pl.col("delisting_date").is_null() | (pl.col("delisting_date") > day)
    ).height
    assert done["status"] == "captured" and done["active"] == done["symbols"] == still_listed
    # Every row delisted before its listing: nothing active, the run fails, no slot file.
    bad = universe.with_columns(delisting_date=pl.col("listing_date") - pl.duration(days=1))
    with_universe.write_table("universe", "krx", bad)
    with pytest.raises(dg.Failure, match=r"no symbol of krx/universe \(\d+ rows\) is active"):
        capture("krx", second, lake=with_universe, market_data=market_data, spool=spool)
    assert not spool.has("krx", day, second)
