"""Which dagster.yaml $DAGSTER_HOME gets: SQLite storage by default, Postgres when configured.

`python -m marketpipe_assets.instance_config` (run by `make`) writes $DAGSTER_HOME/dagster.yaml:
the repository's dagster.yaml, plus deploy/dagster-postgres.yaml when MARKETPIPE_PG_URL is set, so
the UI, the daemon and every `dagster` CLI command use the same storage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "dagster.yaml"
POSTGRES_CONFIG = REPO / "deploy" / "dagster-postgres.yaml"
PG_URL_VARIABLE = "MARKETPIPE_PG_URL"
# dagster-postgres speaks psycopg2; SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, and
# dagster-postgres 0.29 then fails on its first query (FACTS.md, compatibility traps).
PSYCOPG2_SCHEME = "postgresql+psycopg2"


class InstanceConfigError(ValueError):
    pass


def check_storage_url(url: str) -> str:
    """The URL itself when it names the psycopg2 driver; otherwise an error that says the fix."""
    parts = urlsplit(url)
    if parts.scheme == PSYCOPG2_SCHEME:
        return url
    netloc = (
        parts.netloc.replace(f":{parts.password}@", ":***@") if parts.password else parts.netloc
    )
    suggestion = f"{PSYCOPG2_SCHEME}://{netloc or 'user@127.0.0.1:5432'}{parts.path or '/dagster'}"
    raise InstanceConfigError(
        f"{PG_URL_VARIABLE} must be a {PSYCOPG2_SCHEME}:// URL, got scheme "
        f"{parts.scheme or '(none)'!r}: SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which "
        f"dagster-postgres cannot use. Set {PG_URL_VARIABLE}={suggestion}"
    )


def instance_yaml(env: Mapping[str, str] = os.environ) -> str:
    """The text of dagster.yaml for this environment."""
    base = BASE_CONFIG.read_text()
    url = env.get(PG_URL_VARIABLE, "").strip()
    if not url:
        return base
    check_storage_url(url)
    if "storage" in (yaml.safe_load(base) or {}):
        raise InstanceConfigError(
            f"{BASE_CONFIG} already configures storage; {PG_URL_VARIABLE} cannot also apply"
        )
    return f"{base.rstrip()}\n\n{POSTGRES_CONFIG.read_text()}"


def write_instance_yaml(dagster_home: str | Path, env: Mapping[str, str] = os.environ) -> Path:
    """Write dagster.yaml into dagster_home (atomically, and only when it changes)."""
    home = Path(dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    path, text = home / "dagster.yaml", instance_yaml(env)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def main() -> None:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        sys.exit("DAGSTER_HOME is not set: it names the folder that receives dagster.yaml")
    try:
        path = write_instance_yaml(home)
    except InstanceConfigError as exc:
        sys.exit(str(exc))
    storage = "Postgres (MARKETPIPE_PG_URL)" if os.environ.get(PG_URL_VARIABLE) else "SQLite"
    print(f"{path}: {storage} instance storage")


if __name__ == "__main__":
    main()
