"""The CLI tests' runner: `run(*args, code=0)` invokes `brick --registry <tmp> ARGS` and checks the exit code."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture
def run(registry_dir):
    runner = CliRunner()

    def invoke(*args, code=0):
        res = runner.invoke(cli, ["--registry", str(registry_dir), *args])
        assert res.exit_code == code, res.output
        assert "Traceback" not in res.output
        return res.stdout if code == 0 else res.output

    return invoke
