"""A fresh database on the machine's real PostgreSQL for each test, dropped afterwards.

The server is started when it is installed but stopped; tests skip, saying why, when it cannot be.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from psycopg2 import sql

# The admin connection creates and drops the test databases (trust auth on 127.0.0.1).
ADMIN_URL = os.environ.get(
    "MARKETPIPE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
START_COMMAND = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"]


def _admin_connection():
    conn = psycopg2.connect(ADMIN_URL, connect_timeout=3)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


def _reachable_admin():
    try:
        return _admin_connection()
    except psycopg2.OperationalError as first:
        try:
            subprocess.run(START_COMMAND, check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(
                f"SKIPPED LOUDLY: PostgreSQL at {ADMIN_URL} is unreachable ({first}) and "
                f"`{' '.join(START_COMMAND)}` failed ({exc}); these tests need a real server"
            )
        for _ in range(30):
            try:
                return _admin_connection()
            except psycopg2.OperationalError:
                time.sleep(0.5)
        pytest.skip(f"SKIPPED LOUDLY: PostgreSQL at {ADMIN_URL} did not come up after starting it")


@contextmanager
def fresh_database(prefix: str = "marketpipe_test") -> Iterator[str]:
    """Create an empty database and yield its libpq URL; drop it (and its sessions) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _reachable_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()
