"""Imports run one way, marketpipe_assets -> resources -> checks, and no modules of a package
import each other in a circle: the import-linter contracts of pyproject.toml, which count lazy
imports inside functions too. `make lint` runs the same check."""

import subprocess
import sys

from tests.conftest import REPO

LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports(no_cache=True, no_logo=True))\n"
)


def test_imports_run_one_way_and_in_no_circle():
    result = subprocess.run(
        [sys.executable, "-c", LINT], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
