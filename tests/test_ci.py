"""CI skips nothing it claims: with CI=true a skipped test fails (tests/conftest.py), unless its reason says the test
does not apply on this machine (without CI, pytest's own behaviour: both skip)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = '''
import pytest

pytest.importorskip("json")


def test_needs_a_service():
    pytest.skip("Azurite not installed; run scripts/setup-services.sh")


@pytest.mark.skipif(True, reason="not applicable here: this machine has CUDA")
def test_cpu_only_message():
    pass


def test_runs():
    pass
'''


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.conftest", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_with_ci_a_service_skip_fails_and_a_not_applicable_skip_stays(tmp_path: Path) -> None:
    r = _pytest(tmp_path, "true")
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 passed, 1 skipped" in r.stdout, r.stdout
    assert "CI=true and this was skipped (Azurite not installed; run scripts/setup-services.sh)" in r.stdout
    assert "SKIPPED [1] test_cases.py:11: not applicable here: this machine has CUDA" in r.stdout, r.stdout

