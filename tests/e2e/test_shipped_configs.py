"""Every configuration file the repository ships loads: YAML parses, instance files validate
against Dagster's instance schema, the workspace loads its code location through the real CLI,
executor files validate as run config, the Helm values have the chart's keys and the Dockerfile
copies files that exist."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

# Dagster's own loader of an instance directory's dagster.yaml (schema and cross-field rules such
# as `concurrency` vs run-coordinator limits), without connecting to the storage it names.
from dagster._core.instance.config import dagster_instance_config

from marketpipe_assets.automation import price_job
from marketpipe_assets.definitions import defs
from marketpipe_assets.instance_config import instance_yaml
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
SKIPPED_DIRS = {".venv", ".git", "data", ".dagster", ".pytest_cache", ".ruff_cache", "bench"}
WORKSPACE_MODULE = "marketpipe_assets.definitions"
PSYCOPG2_URL = "postgresql+psycopg2://dagster@127.0.0.1:5432/dagster"

# Top-level keys of the official chart's values (helm/dagster/schema: DagsterHelmValues); the
# chart rejects others, and merges what is given over its defaults.
HELM_TOP_LEVEL_KEYS = {
    "global",
    "dagsterWebserver",
    "dagster-user-deployments",
    "postgresql",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
    "rabbitmq",
    "redis",
    "flower",
    "ingress",
    "imagePullSecrets",
    "computeLogManager",
    "scheduler",
    "runLauncher",
    "pythonLogs",
    "dagsterDaemon",
    "busybox",
    "migrate",
    "telemetry",
    "serviceAccount",
    "retention",
    "additionalInstanceConfig",
}


def shipped_yaml() -> list[Path]:
    return sorted(
        p
        for p in REPO.rglob("*.y*ml")
        if p.suffix in {".yaml", ".yml"} and not SKIPPED_DIRS & set(p.relative_to(REPO).parts)
    )


def load(path: Path):
    return yaml.safe_load(path.read_text())


def validate_instance(tmp_path: Path, config: dict) -> dict:
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    validated, _ = dagster_instance_config(str(tmp_path))
    return validated


def test_every_shipped_yaml_parses():
    files = shipped_yaml()
    names = {str(p.relative_to(REPO)) for p in files}
    assert {"dagster.yaml", "workspace.yaml", "deploy/helm/values.yaml"} <= names
    assert {"deploy/executors/multiprocess.yaml", "deploy/dagster-postgres.yaml"} <= names
    for path in files:
        assert isinstance(load(path), dict), f"{path.relative_to(REPO)} is not a YAML mapping"


# Instance ------------------------------------------------------------------------------------
def test_dagster_yaml_builds_a_real_instance():
    with dg.instance_for_test(overrides=load(REPO / "dagster.yaml")) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == 2


def test_dagster_yaml_with_the_postgres_storage_validates(tmp_path, monkeypatch):
    monkeypatch.setenv("MARKETPIPE_PG_URL", PSYCOPG2_URL)
    # Exactly what `make` writes into $DAGSTER_HOME when MARKETPIPE_PG_URL is set.
    config = yaml.safe_load(instance_yaml({"MARKETPIPE_PG_URL": PSYCOPG2_URL}))
    assert config == {**load(REPO / "dagster.yaml"), **load(DEPLOY / "dagster-postgres.yaml")}
    validated = validate_instance(tmp_path, config)
    assert validated["storage"]["postgres"]["postgres_url"] == {"env": "MARKETPIPE_PG_URL"}


def test_the_instance_the_helm_values_render_validates(tmp_path):
    """What the chart writes into the instance ConfigMap from these values, validated: the queued
    run coordinator, Postgres storage with the psycopg2 scheme and additionalInstanceConfig
    (Dagster refuses run limits in both the coordinator and `concurrency`)."""
    values = load(DEPLOY / "helm" / "values.yaml")
    pg = values["postgresql"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    snake = {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in queued.items()}
    rendered = {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": pg["postgresqlUsername"],
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                    "hostname": pg["postgresqlHost"],
                    "db_name": pg["postgresqlDatabase"],
                    "port": pg["service"]["port"],
                    "params": pg["postgresqlParams"],
                    "scheme": pg["postgresqlScheme"],
                }
            }
        },
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": values["dagsterDaemon"]["runCoordinator"]["type"],
            "config": snake,
        },
        **values["additionalInstanceConfig"],
    }
    validated = validate_instance(tmp_path, rendered)
    assert validated["concurrency"]["pools"]["default_limit"] == 1
    assert pg["postgresqlScheme"] == "postgresql+psycopg2"


# Workspace -----------------------------------------------------------------------------------
def test_workspace_yaml_loads_the_code_location_through_the_cli(tmp_path):
    workspace = load(REPO / "workspace.yaml")
    assert workspace["load_from"][0]["python_module"]["module_name"] == WORKSPACE_MODULE
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [
            Path(sys.executable).parent / "dagster",
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation successful for code location marketpipe" in done.stdout + done.stderr


# Executors -----------------------------------------------------------------------------------
def test_multiprocess_run_config_validates_against_the_price_job():
    job = defs.resolve_job_def(price_job("krx").name)
    config = load(DEPLOY / "executors" / "multiprocess.yaml")
    validated = dg.validate_run_config(job, config)["execution"]
    assert validated["multi_or_in_process_executor"]["multiprocess"]["max_concurrent"] == 2
    broken = {"execution": {"config": {"multiprocess": {"max_concurent": 2}}}}
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, broken)


def one_op_job(executor) -> dg.JobDefinition:
    @dg.op
    def step():
        return 1

    @dg.job(executor_def=executor)
    def job():
        step()

    return job


def test_k8s_job_executor_run_config_validates():
    dagster_k8s = pytest.importorskip(
        "dagster_k8s", reason="dagster-k8s is not installed: pip install dagster-k8s==0.29.27"
    )
    config = load(DEPLOY / "executors" / "k8s_job.yaml")
    validated = dg.validate_run_config(one_op_job(dagster_k8s.k8s_job_executor), config)
    assert validated["execution"]["k8s"]["env_secrets"] == ["marketpipe-secrets"]


def test_celery_executor_run_config_validates():
    dagster_celery = pytest.importorskip(
        "dagster_celery", reason="dagster-celery is not a project dependency (documented only)"
    )
    config = load(DEPLOY / "executors" / "celery.yaml")
    dg.validate_run_config(one_op_job(dagster_celery.celery_executor), config)


# Helm and Docker ------------------------------------------------------------------------------
def test_helm_values_have_the_keys_the_chart_needs():
    values = load(DEPLOY / "helm" / "values.yaml")
    assert set(values) <= HELM_TOP_LEVEL_KEYS, set(values) - HELM_TOP_LEVEL_KEYS

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert {"name", "image", "port"} <= set(deployment)
    assert {"repository", "tag", "pullPolicy"} <= set(deployment["image"])
    assert deployment["codeServerArgs"] == ["-m", WORKSPACE_MODULE]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["MARKETPIPE_LAKE_URL"].startswith("s3://")
    # Credentials come only from Secrets, never as literal values in this file.
    assert not [n for n in env if re.search(r"KEY|SECRET|PASSWORD|TOKEN|WAREHOUSE|SMTP", n)]
    assert deployment["envSecrets"] == [{"name": "marketpipe-secrets"}]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]
    assert values["postgresql"]["enabled"] is False

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"] == [
        {"name": "marketpipe-secrets"}
    ]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"


def test_dockerfile_builds_from_files_that_exist():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _destination = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"deploy/Dockerfile copies missing {source}"
    assert "pip install --no-cache-dir -c constraints.txt ." in text
    # TA-Lib comes as a PyPI wheel pinned by the constraints (no C build in the image).
    assert re.search(r"^TA-Lib==", (REPO / "constraints.txt").read_text(), re.M | re.I)
    assert f'"-m", "{WORKSPACE_MODULE}"' in text
    assert not re.search(r"^ENTRYPOINT", text, re.M)  # run pods replace CMD with their own


def test_deploy_readme_explains_every_shipped_file():
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(DEPLOY)) in readme, f"{path} is not in deploy/README.md"
