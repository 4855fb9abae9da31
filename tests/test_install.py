"""The wheel users install: built from a clean export of the committed tree, installed into a fresh venv, run.

``scripts/build-wheel.sh`` builds from ``git archive HEAD`` (what deploy/Dockerfile installs), so a stale
``build/`` tree or an untracked module cannot leak into it; the test then runs the installed console script from
an empty directory (the source tree is not on ``sys.path``): ``--version``, a tiny twin, and build-cube from it.

What is reused, and why: the fresh venv sees this environment's installed dependencies through a ``.pth`` file
instead of downloading them again (about 1 GB and 2 minutes from PyPI per run; the machines here may lack the
network), and the wheel is installed with ``--no-deps``. What the fresh venv does NOT see is this checkout's
editable glacierflow: the test asserts the package is imported from the fresh venv. Whether the declared
dependencies are complete is checked separately, statically (``test_every_imported_package_is_declared``).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fresh_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = Path(subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], capture_output=True, text=True, check=True).stdout.strip())
    deps = [p for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")) if p]
    (site / "dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_wheel_from_a_clean_export_installs_and_runs(tmp_path: Path) -> None:
    built = subprocess.run(["bash", str(REPO / "scripts" / "build-wheel.sh"), str(tmp_path / "dist")], cwd=REPO,
                           capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert built.returncode == 0, built.stderr
    wheel = Path(built.stdout.strip().splitlines()[-1])
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True,
                           check=True).stdout
    tracked = subprocess.run(["git", "ls-files", "glacierflow"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert all(f in names for f in tracked if f.endswith(".py")), "a committed module is missing from the wheel"
    assert "tests/" not in names and "benchmarks/" not in names
    venv = _fresh_venv(tmp_path / "venv")
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The dependencies' own programs (the rustac CLI the twin serves with) come with them, from this environment.
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import glacierflow; print(glacierflow.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed wheel, not this checkout
    gf = str(venv / "bin" / "glacierflow")
    version = subprocess.run([gf, "--version"], cwd=work, env=env, capture_output=True, text=True, check=True)
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version.stdout.strip() == f"glacierflow {expected}"
    subprocess.run([gf, "twin", "make", "twin", "--size", "tiny", "--start", "2019-04-01", "--end", "2019-07-31"],
                   cwd=work, env=env, check=True, capture_output=True, timeout=300)
    server = subprocess.Popen([gf, "twin", "serve", "twin", "--url-file", "url.txt"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # waiting for an event (the URL file), not asserting a duration
        while not (work / "url.txt").exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (work / "url.txt").exists(), server.stderr.read() if server.poll() is not None else "no url file"
        bbox = re.search(r'"bbox": \[([^\]]+)\]', (work / "twin" / "twin.json").read_text()).group(1)
        run = subprocess.run([gf, "build-cube", "--bbox", *[b.strip() for b in bbox.split(",")], "--catalog",
                              (work / "url.txt").read_text().strip(), "--start", "2019-04-01", "--end", "2019-07-31",
                              "--cluster", "threads", "--out", "cube.zarr"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert (work / "cube.zarr" / "zarr.json").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


# Imports that are not distributions of their own: the standard library and glacierflow itself.
_IMPORT_TO_DIST = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml", "dask_gateway": "dask-gateway",
                   "pystac_client": "pystac-client", "planetary_computer": "planetary-computer",
                   "sklearn": "scikit-learn"}


def _top_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!~ ]", d)[0].lower().replace("_", "-")
                for d in project["dependencies"] + [d for k, ds in project["optional-dependencies"].items()
                                                     if k != "test" for d in ds]}
    used = set().union(*(_top_imports(p) for p in (REPO / "glacierflow").rglob("*.py")))
    third_party = {n for n in used if n not in sys.stdlib_module_names and n not in {"glacierflow", "__future__"}}
    missing = sorted(n for n in third_party
                     if _IMPORT_TO_DIST.get(n, n).lower().replace("_", "-") not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
