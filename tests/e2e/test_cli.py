"""End to end through Dagster's own CLI, as CONTRACT section 1 documents it."""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from checks.markets import partition_dates
from marketpipe_assets.automation import RANGE_END_TAG, RANGE_START_TAG
from resources.lake import LakeResource
from tests.conftest import REPO, cli_environment, recent_sessions

DAGSTER = Path(sys.executable).with_name("dagster")
MODULE = "marketpipe_assets.definitions"


def dagster(*args: str, env: dict) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [str(DAGSTER), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, (
        f"dagster {' '.join(args)} exited {completed.returncode}\n"
        f"stdout:\n{completed.stdout[-3000:]}\nstderr:\n{completed.stderr[-5000:]}"
    )
    return completed


@pytest.mark.xdist_group("cli")
def test_cli_materializes_a_partition_range_as_one_run(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    lake_url = tmp_path / "lake"
    env = cli_environment()
    env.update(
        DAGSTER_HOME=str(home),
        MARKETPIPE_LAKE_URL=str(lake_url),
        MARKETPIPE_LANDING_URL=str(tmp_path / "landing"),
        MARKETPIPE_SYNTHETIC_SYMBOLS="50",
    )
    keys = recent_sessions("krx", 5)
    first, last = keys[0], keys[-1]

    dagster("asset", "materialize", "-m", MODULE, "--select", "krx/universe", env=env)
    dagster(
        "asset",
        "materialize",
        "-m",
        MODULE,
        "--select",
        "krx/daily_prices,krx/indicators",
        "--partition-range",
        f"{first}...{last}",
        env=env,
    )

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2  # the universe, then the whole range
        range_runs = [r for r in runs if r.tags.get(RANGE_START_TAG)]
        assert len(range_runs) == 1
        [run] = range_runs
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert (run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]) == (first, last)
        for dataset in ("daily_prices", "indicators"):
            key = dg.AssetKey(["krx", dataset])
            assert instance.get_materialized_partitions(key) == set(keys), dataset
            records = instance.fetch_materializations(key, limit=100).records
            assert {r.run_id for r in records} == {run.run_id}
        universe = instance.fetch_materializations(dg.AssetKey(["krx", "universe"]), limit=10)
        assert len(universe.records) == 1

    lake = LakeResource(url=str(lake_url))
    for dataset in ("daily_prices", "indicators"):
        assert lake.existing_days(dataset, "krx") == set(partition_dates(keys)), dataset
        files = list((lake_url / dataset / "market=krx").glob("date=*/*.parquet"))
        assert len(files) == len(keys)
    assert lake.read_table("universe", "krx").height == 50


# marketpipe's own console script ----------------------------------------------------------------
def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(command words, parser) for the parser and every subcommand under it."""
    yield words, parser
    for action in parser._actions:  # argparse keeps subcommands here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"marketpipe {' '.join(words)}: {name} has no help"
                yield from walk(sub, (*words, name))


def test_every_marketpipe_command_and_flag_has_help(capsys):
    from marketpipe_assets import cli, collect

    done = subprocess.run(
        [str(Path(sys.executable).with_name("marketpipe")), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "seed" not in done.stdout.lower()  # in users' words
    assert "collect" in done.stdout and "trade reports" in done.stdout
    # `marketpipe collect` hands its arguments to collect.py's own parser.
    parsers = [(w, p) for w, p in walk(cli._parser()) if w != ("collect",)]
    parsers.append((("collect",), collect.parser()))
    reports = {words[-1] for words, _ in parsers if words[:1] == ("query",) and len(words) == 2}
    assert reports == set(cli.QUERIES)
    for words, parser in parsers:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*words, "--help"])
        assert exit_.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert parser.description, words
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            assert action.help, f"marketpipe {' '.join(words)} {name}: no help"
            assert name in text and " ".join(action.help.split()) in text, (words, name)
    collect_help = " ".join(collect.parser().format_help().split())
    for flag in ("--market", "--source", "--symbols", "--drain-seconds", "--progress-seconds"):
        assert flag in collect_help
