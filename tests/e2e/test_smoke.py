import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from checks.schemas import DAILY_PRICES, INDICATORS
from marketpipe_assets.definitions import defs
from resources.lake import LakeResource
from tests.conftest import REPO, recent_sessions
from tests.deployment import clean_env, free_port


def test_one_session_materializes_with_passing_checks(with_universe, runs):
    key = recent_sessions("krx", 1)[0]
    result = runs("krx", "daily_prices", "indicators", day=key)
    assert result.success
    outcomes = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert outcomes["price_relationships"] and outcomes["completeness"]


# The commands as users run them ----------------------------------------------------------------
DAILY_PRICE_CHECKS = (
    "price_relationships",
    "completeness",
    "suspicious_jumps",
    "great_expectations",
    "symbol_freshness",
)


@pytest.mark.xdist_group("cli")
def test_demo_prints_a_short_summary_and_no_dagster_stream(tmp_path):
    env = clean_env(tmp_path, MARKETPIPE_SYNTHETIC_SYMBOLS="30")
    env["MARKETPIPE_SYNTHETIC_MISSING_RATE"] = "0"  # 1 of 30 missing would still pass; 2 not
    subprocess.run([sys.executable, "-m", "marketpipe_assets.instance_config"], env=env, check=True)
    done = subprocess.run(
        [sys.executable, "-m", "marketpipe_assets.demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "DEBUG" not in output
    assert "Warning" not in done.stderr, done.stderr  # BetaWarning and friends, once or more
    assert done.stderr.strip() == "", done.stderr
    lines = output.splitlines()
    assert len(lines) <= 40, output  # one screen
    lake = LakeResource(url=env["MARKETPIPE_LAKE_URL"])
    for market in ("krx", "us"):
        stored = lake.read_partitions("daily_prices", market, DAILY_PRICES, columns=["symbol"])
        indicators = lake.read_partitions("indicators", market, INDICATORS, columns=["symbol"])
        assert indicators.height == stored.height > 0
        header = next(i for i, line in enumerate(lines) if line.startswith(f"== {market} "))
        assert "20 sessions" in lines[header]
        assert f"{stored.height:,} rows stored" in lines[header + 1], output
        assert f"indicators {indicators.height:,} rows" in lines[header + 1], output
        assert "completeness per session" in lines[header + 2]
        assert re.match(r"\s+\d\d-\d\d 1?\d\d\.\d\s", lines[header + 3]), output
        section = "\n".join(lines[header : header + 15])
        for check in DAILY_PRICE_CHECKS:
            assert re.search(rf"^\s+{check}\s+PASS\s", section, re.M), section
    words = " ".join(output.split())  # the data line may wrap
    assert f"Data in {lake.root}: daily_prices, indicators" in words, output
    assert "(folders market=krx, market=us)" in words, output
    # The events are in the instance all the same, for the UI: every check of the assets the
    # demo materialized was evaluated (none left "Not Evaluated"), on each market's last session.
    graph = defs.resolve_asset_graph()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
        assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        key = dg.AssetKey(["krx", "daily_prices"])
        assert len(instance.get_materialized_partitions(key)) == 20
        assert instance.all_logs(runs[0].run_id), "no events stored"
        for market in ("krx", "us"):
            demoed = [dg.AssetKey([market, d]) for d in ("daily_prices", "indicators")]
            expected = {c for k in demoed for c in graph.get_check_keys_for_assets({k})}
            assert {c.name for c in expected} == set(DAILY_PRICE_CHECKS)
            evaluated = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                list(expected)
            )
            assert set(evaluated) == expected
            for check_key, record in evaluated.items():
                evaluation = record.event.dagster_event.event_specific_data
                assert evaluation.passed, (check_key, evaluation.description)
            latest = instance.get_latest_materialization_event(dg.AssetKey([market, "indicators"]))
            assert latest.asset_materialization.metadata["rows"].value > 0


@pytest.mark.xdist_group("ui")
def test_make_ui_starts_without_warning_about_dagster_yaml(tmp_path):
    """`make ui` as a user runs it, on a temporary instance: the webserver serves and nothing
    warns about the repository's dagster.yaml (or repeats a beta warning per asset)."""
    env = clean_env(tmp_path)
    port = free_port()
    log = tmp_path / "ui.log"
    # Outside `make test`, make would first (re)install if pyproject.toml changed: not here.
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "ui",
               f"DAGSTER_HOME={env['DAGSTER_HOME']}", f"UI_PORT={port}"]  # fmt: skip
    with log.open("w") as out:
        ui = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while f"Serving dagster-webserver on http://127.0.0.1:{port}" not in log.read_text():
            assert ui.poll() is None, f"make ui exited {ui.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not serving after 180 s:\n{log.read_text()}"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=30) as answer:
            assert answer.status == 200
    finally:
        os.killpg(ui.pid, signal.SIGKILL)  # webserver, daemon and code servers: one group
        ui.wait(30)
    text = log.read_text()
    assert "dagster.yaml" not in text.replace(f"{env['DAGSTER_HOME']}/dagster.yaml", ""), text
    assert "BetaWarning" not in text and "SupersessionWarning" not in text, text
    assert (Path(env["DAGSTER_HOME"]) / "dagster.yaml").exists()  # written by `make install`
