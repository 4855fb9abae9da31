"""Security: no signed URL or token in any output; checkpoints load weights-only; every server binds 127.0.0.1.

What is faked: only the internet. Planetary Computer signs asset hrefs with a SAS query string; here the signer
(the IO seam build-cube takes: a :class:`glacierflow.ingest.readers.SigningRioReader` subclass, or a callable signing
item dicts) appends a recognisable fake one, ``?st=...&sig=FAKE-SECRET-TOKEN-123``, which the twin's real asset
server ignores, as blob storage checks it. Everything else is real: the twin's COGs read by GDAL over HTTP,
its items served by rustac, real Zarr stores, a real training run, real forecasts.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
import zarr

from glacierflow.cli.main import main
from glacierflow.errors import GlacierflowError
from glacierflow.ingest import readers
from glacierflow.learn.checkpoint import read_checkpoint
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, PreprocessSpec

TOKEN = "FAKE-SECRET-TOKEN-123"
QUERY = f"st=2026-12-02T08%3A00%3A00Z&se=2026-12-02T09%3A00%3A00Z&sp=rl&sig={TOKEN}"
REPO = Path(__file__).resolve().parents[1]


def _sign_href(href: str, broken: str = "") -> str:
    """``href`` with the fake SAS query; hrefs containing ``broken`` point at a file the server does not have."""
    if broken and broken in href:
        href = href.replace(".TIF", "-missing.TIF")
    return f"{href}{'&' if '?' in href else '?'}{QUERY}"


class FakeSigningReader(readers.SigningRioReader):
    """Signs each href on the worker right before reading, as Planetary Computer's signer does (fake token)."""

    broken = ""  # item id whose assets 404 (exercises the error paths with a signed URL)
    calls: list[str] = []

    @classmethod
    def sign_href(cls, href: str) -> str:  # type: ignore[override]
        cls.calls.append(href)
        return _sign_href(href, cls.broken)


class EnvSigningReader(FakeSigningReader):
    """:class:`FakeSigningReader` for worker processes: the item whose assets 404 comes from the environment
    (``GF_TEST_BROKEN``), which worker processes inherit (a class attribute set here would not reach them)."""

    @classmethod
    def sign_href(cls, href: str) -> str:  # type: ignore[override]
        import os

        return _sign_href(href, os.environ.get("GF_TEST_BROKEN", ""))


def _sign_item(item: dict[str, Any]) -> dict[str, Any]:
    """The callable signer: a signed copy of an item dict (every asset href)."""
    out = copy.deepcopy(item)
    for asset in out["assets"].values():
        asset["href"] = _sign_href(asset["href"])
    return out


def _strings(obj: Any) -> list[str]:
    """Every string inside nested dicts/lists/tuples (a loaded checkpoint)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def _zarr_strings(path: Path) -> list[str]:
    """Every attribute (as JSON) and every string-typed array value of every group of a Zarr store, decoded."""
    out: list[str] = []

    def walk(group: zarr.Group) -> None:
        out.append(json.dumps(dict(group.attrs), default=str))
        for _, arr in group.arrays():
            out.append(json.dumps(dict(arr.attrs), default=str))
            if arr.dtype.kind in "OUSTV" or "str" in str(arr.dtype).lower():
                out.extend(str(v) for v in np.asarray(arr[...]).ravel())
        for _, sub in group.groups():
            walk(sub)

    walk(zarr.open_group(str(path), mode="r"))
    return out


def _leaks(root: Path, texts: dict[str, str]) -> list[str]:
    """Where the token appears: raw bytes of every file under ``root``, decoded stores and checkpoints, texts."""
    found = [f"{p} (raw bytes)" for p in root.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    for store in [p for p in root.rglob("*.zarr") if p.is_dir() and not p.name.startswith(".")]:
        found += [f"{store} (decoded)" for s in _zarr_strings(store) if TOKEN in s][:1]
    for ck in root.rglob("*.pt"):
        found += [f"{ck} (loaded)" for s in _strings(torch.load(ck, weights_only=True)) if TOKEN in s][:1]
    found += [f"{name} (text)" for name, text in texts.items() if TOKEN in text]
    return found


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger, every level: GDAL/rasterio, urllib3, dask, glacierflow
    return caplog


def test_no_token_in_any_output_of_build_flow_train_predict(served_twin, tiny_twin, tmp_path, logs, capfd):
    meta = served_twin["meta"]
    spec = CubeSpec(name="parvati-tiny", bbox=tuple(meta["bbox"]), epsg=meta["epsg"], start="2019-01-01",
                    end="2020-12-31", catalog=served_twin["stac_url"])  # 24 monthly periods: enough to train
    items = json.loads((tiny_twin / "items.json").read_text())["features"]
    in_year = [i for i in items if i["properties"]["datetime"].startswith("2019")
               and i["properties"]["platform"] == "landsat-8" and i["properties"]["eo:cloud_cover"] <= 20]
    reader = type("Reader", (FakeSigningReader,), {"broken": in_year[3]["id"], "calls": []})
    texts: dict[str, str] = {}
    # build-cube, signing at read time on the workers (as for Planetary Computer), one scene's assets 404
    summary = build_cube_store(spec, PreprocessSpec(period="1MS"), str(tmp_path / "cube.zarr"), signer=reader)
    texts["build summary"] = "\n".join(summary.lines())
    assert reader.calls and all(TOKEN not in h for h in reader.calls), "the signer saw plain hrefs and was used"
    scenes = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")["scenes"]
    reasons = dict(zip(map(str, scenes["item_id"][...]), map(str, scenes["reason"][...]), strict=True))
    assert reasons[reader.broken].startswith("read error"), reasons[reader.broken]  # the error path ran
    # build-cube, items signed before stacking (signed hrefs inside the graph), and a --strict failure
    short = spec.replace(end="2019-06-30")  # 6 months, 3-month periods: a few seconds
    summary = build_cube_store(short, PreprocessSpec(), str(tmp_path / "cube-b.zarr"), signer=_sign_item)
    texts["build summary b"] = "\n".join(summary.lines())
    with pytest.raises(GlacierflowError) as err:
        build_cube_store(short, PreprocessSpec(), str(tmp_path / "cube-c.zarr"), signer=reader, strict=True)
    texts["strict error"] = str(err.value)
    assert "-missing.TIF" in str(err.value), err.value  # it names the asset, without its signature
    # flow, train, predict, evaluate through the command line
    cubes = str(tmp_path / "cube.zarr")
    argv = [["flow", cubes, "--out", str(tmp_path / "velocity.zarr"), "--pairs", "consecutive", "--cluster", "sync"],
            ["train", cubes, "--out", str(tmp_path / "run"), "--model", "lstm", "--option", "hidden_size=8",
             "--t-in", "2", "--t-out", "2", "--patch-size", "16", "--epochs", "1",
             "--steps-per-epoch", "2", "--val-samples", "8", "--test-starts", "1", "--val-starts", "1",
             "--cluster", "sync", "--device", "cpu"],
            ["predict", str(tmp_path / "run"), "--cube", cubes, "--out", str(tmp_path / "forecast.zarr"),
             "--last-input", "2020-08-01", "--cluster", "sync", "--device", "cpu"],
            ["evaluate", str(tmp_path / "run"), "--cluster", "sync"]]
    for a in argv:
        assert main(a) == 0, (a, capfd.readouterr())
    # an error message that names the store and the cube's search: a second write refused
    assert main(argv[0]) == 2
    cap = capfd.readouterr()
    texts.update(stdout=cap.out, stderr=cap.err, logs=logs.text)
    assert "unreadable asset" in logs.text and "-missing.TIF" in logs.text  # the warning was logged, redacted
    outputs = {p.name for p in tmp_path.iterdir()}
    assert {"cube.zarr", "cube-b.zarr", "velocity.zarr", "run", "forecast.zarr"} <= outputs, outputs
    leaks = _leaks(tmp_path, texts)
    assert not leaks, (leaks, sorted({(r.name, r.levelname) for r in logs.records if TOKEN in r.getMessage()}))


def test_the_scan_finds_a_token_where_there_is_one(tmp_path):
    # the scan above is only worth something if it sees a token in each kind of place it looks
    root = tmp_path / "out"
    (root / "s.zarr").mkdir(parents=True)
    g = zarr.open_group(str(root / "s.zarr"), mode="w")
    g.create_array("href", shape=(1,), dtype=str)[:] = np.array([f"http://x/a.TIF?{QUERY}"])
    torch.save({"cube": f"http://x/c.zarr?{QUERY}"}, root / "best.pt")
    found = _leaks(root, {"stderr": f"error: cannot read http://x/a.TIF?{QUERY}"})
    assert any("(decoded)" in f for f in found) and any("best.pt" in f for f in found), found
    assert any(f == "stderr (text)" for f in found), found


# ------------------------------------------------------------------------------------------ checkpoints
def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    calls, unsafe = [], []
    for path in [*REPO.glob("glacierflow/**/*.py"), *REPO.glob("benchmarks/**/*.py"), *REPO.glob("examples/**/*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load"):
                calls.append(path)
                if kw.get("weights_only") != "True":
                    unsafe.append(f"{path}:{node.lineno} {ast.unparse(node)}")
            if re.search(r"(^|\.)(pickle|cloudpickle|dill|joblib|marshal)\.loads?$", name) or (
                    name.endswith("np.load") and kw.get("allow_pickle") == "True"):
                unsafe.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert calls, "torch.load is used (in train.py) and was found"
    assert not unsafe, unsafe


class _Payload:
    """Runs code when unpickled: creates a marker file (what a malicious checkpoint would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_pickled_objects_is_refused_and_never_runs(tmp_path, capsys):
    from glacierflow.testing import write_synthetic_cube

    cube_url = write_synthetic_cube(str(tmp_path / "cube.zarr"), n_periods=12, size=40, period="3MS")
    run = tmp_path / "run"
    assert main(["train", cube_url, "--out", str(run), "--model", "lstm", "--option", "hidden_size=8", "--t-in",
                 "2", "--t-out", "2", "--patch-size", "16", "--epochs", "1", "--steps-per-epoch", "1",
                 "--cluster", "sync", "--device", "cpu", "--test-starts", "1", "--val-starts", "1"]) == 0
    capsys.readouterr()
    good = torch.load(run / "best.pt", weights_only=True)
    marker = tmp_path / "payload-ran"
    for name in ("best.pt", "last.pt"):
        torch.save({**good, "extra": _Payload(marker)}, run / name)  # "a checkpoint from elsewhere"
    refused = r"holds pickled objects other than tensors and plain values \(e\.g\. \S+\); refused"
    with pytest.raises(GlacierflowError, match=refused):
        read_checkpoint(run / "best.pt")
    commands = [["predict", str(run), "--cube", cube_url, "--out", str(tmp_path / "f.zarr"), "--cluster", "sync"],
                ["train", cube_url, "--out", str(run), "--resume", "--epochs", "2", "--cluster", "sync"],
                ["evaluate", str(run), "--cluster", "sync"],
                ["finetune", str(run), "--cube", cube_url, "--out", str(tmp_path / "ft"), "--epochs", "1"]]
    for argv in commands:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err[-1500:])
        assert "holds pickled objects other than tensors and plain values" in err and "refused" in err, err
    assert not marker.exists(), "the pickled payload ran"


# ------------------------------------------------------------------------------------------ listening
def _listening(procs: list[psutil.Process]) -> dict[tuple[str, int], str]:
    """Every listening TCP socket of ``procs``: (address, port) -> process description."""
    out = {}
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out[(c.laddr.ip, c.laddr.port)] = f"{p.pid} {' '.join(p.cmdline())[:100]}"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _mine() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def test_twin_and_test_servers_listen_on_127_0_0_1_only(served_twin, rustac_server, tmp_path, tiny_twin):
    from glacierflow.compute.cluster import get_client

    # the session's servers (twin assets + rustac, the fixtures' rustac) and a local Dask cluster with its dashboard
    with get_client("local:1"):
        sockets = _listening(_mine())
    # `glacierflow twin serve`, as a user starts it
    url_file = tmp_path / "url"
    proc = subprocess.Popen([sys.executable, "-m", "glacierflow", "twin", "serve", str(tiny_twin),
                             "--url-file", str(url_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert url_file.exists(), "twin serve did not start"
        served = psutil.Process(proc.pid)
        cli_sockets = _listening([served, *served.children(recursive=True)])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ports = {int(u.rsplit(":", 1)[1]) for u in (served_twin["stac_url"], served_twin["asset_url"],
                                                 rustac_server.url.rstrip("/"))}
    assert ports <= {port for _, port in sockets}, (ports, sockets)
    assert len(cli_sockets) >= 2, cli_sockets  # the STAC API and the asset server
    wide = {k: v for k, v in {**sockets, **cli_sockets}.items() if k[0] != "127.0.0.1"}
    assert not wide, f"listening beyond this machine: {wide}"


def test_gateway_and_azurite_listen_on_127_0_0_1_only(tmp_path):
    pytest.importorskip("dask_gateway_server")
    from glacierflow.compute.cluster import get_client
    from glacierflow.testing import local_gateway

    from .azurite import start_azurite

    before = set(_listening(_mine()))
    with local_gateway(str(tmp_path)) as url, get_client(f"gateway://{url}", workers=1) as client:
        client.wait_for_workers(1, timeout=60)
        gateway = _listening(_mine())  # server, proxy, the cluster's scheduler, nanny and worker
    azurite = start_azurite(tmp_path / "azurite")
    try:
        next(azurite)
        blob = _listening(_mine())
    finally:
        azurite.close()
    found = {k: v for k, v in {**gateway, **blob}.items() if k not in before}
    assert any("dask worker" in v or "spawn_main" in v for v in found.values()), found  # the worker was seen
    assert any("azurite" in v for v in found.values()), found
    wide = {k: v for k, v in found.items() if k[0] != "127.0.0.1"}
    assert not wide, f"listening beyond this machine: {wide}"


def test_in_process_test_servers_bind_loopback():
    # servers written in the tests themselves (http.server handlers, fault proxies): their bind addresses
    bad = []
    for path in [*REPO.glob("tests/**/*.py"), *REPO.glob("glacierflow/**/*.py"), *REPO.glob("benchmarks/**/*.py")]:
        if path.resolve() == Path(__file__).resolve():
            continue  # this file names the patterns it looks for
        text = path.read_text()
        for m in re.finditer(r"(HTTPServer|TCPServer|create_server|\.bind|uvicorn\.run|serve)\((.{0,80})", text):
            args = m.group(2)
            if re.search(r"0\.0\.0\.0|[\"']::[\"']|\(\s*[\"'][\"']\s*,", args):
                bad.append(f"{path}: {m.group(0)}")
        bad += [f"{path}: {m.group(0)}" for m in re.finditer(r"[\"']0\.0\.0\.0[\"']|host\s*=\s*[\"'][\"']", text)]
    assert not bad, bad


# ------------------------------------------------------------------------------------------ credentials, az:// and s3://
def _sas(account: str, key: str) -> str:
    """A real account SAS (read/write/list/delete/create, one hour), signed with ``key``, as Azure issues them."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(account, key, ResourceTypes(service=True, container=True, object=True),
                                AccountSasPermissions(read=True, write=True, list=True, delete=True, create=True,
                                                      add=True), expiry=datetime.now(UTC) + timedelta(hours=1))


def test_no_credential_in_any_output_on_azurite_with_the_default_cluster(served_twin, tmp_path):
    """build-cube and flow on az:// (Azurite) under the default --cluster: worker processes, their logs on stderr.

    Every credential form travels with the options: ``connection_string`` with ``AccountKey``, a real account SAS
    in a connection string (``SharedAccessSignature``, what authenticates flow), ``account_key`` and ``sas_token``
    options; S3 ``key``/``secret``/``token`` on an s3:// output. None may appear in stdout, stderr (worker logs
    included), any blob written, or an error line.
    """
    from .azurite import ACCOUNT, CONTAINER, KEY, KEY_TEXT, start_azurite
    from .test_faults import END, START

    pytest.importorskip("adlfs")
    azurite = start_azurite(tmp_path / "azurite")
    az = next(azurite)
    try:
        sas = _sas(ACCOUNT, KEY)
        sas_conn = f"BlobEndpoint=http://127.0.0.1:{az['port']}/{ACCOUNT};SharedAccessSignature={sas}"
        sig = re.search(r"sig=([^&]+)", sas).group(1)
        s3 = {"key": "AKIAFAKEGLACIERFLOW01", "secret": "fake/S3/secret+glacierflow/0123456789abcdefghij",
              "token": "FAKE-S3-SESSION-TOKEN-glacierflow-0123"}
        secrets = [KEY, KEY_TEXT.decode(), sas, sig, *s3.values()]
        meta, cube, vel = served_twin["meta"], f"az://{CONTAINER}/cube.zarr", f"az://{CONTAINER}/velocity.zarr"
        key_opts = ["--storage-option", f"connection_string={az['connection_string']}",
                    "--storage-option", f"account_key={KEY}", "--storage-option", f"sas_token={sas}"]
        runs = [["build-cube", "--bbox", *map(str, meta["bbox"]), "--epsg", str(meta["epsg"]), "--start", START,
                 "--end", END, "--catalog", served_twin["stac_url"], "--out", cube, *key_opts],
                ["flow", cube, "--out", vel, "--pairs", "consecutive", "--storage-option",
                 f"connection_string={sas_conn}"],
                ["flow", cube, "--out", vel, "--pairs", "consecutive", *key_opts],  # exists: an error line
                ["flow", cube, "--out", "s3://glacierflow-test/v.zarr", "--storage-option",
                 f"connection_string={az['connection_string']}", *(a for k, v in s3.items()
                                                                    for a in ("--storage-option", f"{k}={v}")),
                 "--storage-option", "endpoint_url=http://127.0.0.1:9"]]
        texts, codes = {}, []
        for n, argv in enumerate(runs):  # default --cluster: nothing passed
            r = subprocess.run([sys.executable, "-m", "glacierflow", *argv], capture_output=True, text=True,
                               timeout=600)
            codes.append(r.returncode)
            texts[f"{argv[0]} #{n} stdout"], texts[f"{argv[0]} #{n} stderr"] = r.stdout, r.stderr
        assert codes[:2] == [0, 0], texts
        assert codes[2:] == [2, 2] and "already exists" in texts["flow #2 stderr"], texts
        blobs = az["fs"].find(CONTAINER)
        assert any(b.endswith("velocity.zarr/zarr.json") for b in blobs), blobs
        texts.update({b: az["fs"].cat_file(b).decode("latin-1") for b in blobs})
        found = [(name, s[:12]) for name, text in texts.items() for s in secrets if s in text]
        assert not found, found
    finally:
        next(azurite, None)


def test_no_credential_from_the_environment_in_train_and_predict_on_azurite(tmp_path, monkeypatch):
    """train and predict under the default --cluster, the cube and the forecast on Azurite, the credentials only in
    the environment (``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_KEY``): nothing of them in
    stdout, stderr (worker logs included), the run directory or any blob."""
    from glacierflow.testing import write_synthetic_cube

    from .azurite import CONTAINER, KEY, KEY_TEXT, start_azurite

    pytest.importorskip("adlfs")
    azurite = start_azurite(tmp_path / "azurite")
    az = next(azurite)
    try:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az["connection_string"])
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
        cube = write_synthetic_cube(f"az://{CONTAINER}/syn.zarr", n_periods=12, size=40, period="3MS")
        run = tmp_path / "run"
        runs = [["train", cube, "--out", str(run), "--model", "lstm", "--option", "hidden_size=8", "--t-in", "2",
                 "--t-out", "2", "--patch-size", "16", "--epochs", "1", "--steps-per-epoch", "2", "--val-samples",
                 "4", "--device", "cpu", "--test-starts", "1", "--val-starts", "1"],
                ["predict", str(run), "--cube", cube, "--out", f"az://{CONTAINER}/forecast.zarr", "--device", "cpu"]]
        texts = {}
        for argv in runs:  # default --cluster
            r = subprocess.run([sys.executable, "-m", "glacierflow", *argv], capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, (argv[0], r.stderr[-3000:])
            texts[f"{argv[0]} stdout"], texts[f"{argv[0]} stderr"] = r.stdout, r.stderr
        blobs = az["fs"].find(CONTAINER)
        assert any(b.endswith("forecast.zarr/zarr.json") for b in blobs), blobs
        texts.update({b: az["fs"].cat_file(b).decode("latin-1") for b in blobs})
        found = [name for name, text in texts.items() for s in (KEY, KEY_TEXT.decode()) if s in text]
        found += [f"{p} (raw bytes)" for p in run.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
        found += [f"{ck} (loaded)" for ck in run.rglob("*.pt")
                  for s in _strings(torch.load(ck, weights_only=True)) if KEY in s or KEY_TEXT.decode() in s]
        assert not found, found
    finally:
        next(azurite, None)


def test_no_token_from_signed_hrefs_in_worker_processes(served_twin, tiny_twin, tmp_path, logs, capfd,
                                                        monkeypatch):
    """build-cube signing at read time in worker processes (a local cluster, as the default --cluster runs it), one
    scene's assets 404: the workers' own logs (on this process's stderr) and everything written hold no token."""
    from distributed import Client, LocalCluster

    from glacierflow.compute.runner import runner

    meta = served_twin["meta"]
    spec = CubeSpec(name="parvati-tiny", bbox=tuple(meta["bbox"]), epsg=meta["epsg"], start="2019-01-01",
                    end="2019-06-30", catalog=served_twin["stac_url"])
    items = json.loads((tiny_twin / "items.json").read_text())["features"]
    first = [i for i in items if i["properties"]["datetime"].startswith("2019-0")
             and i["properties"]["platform"] == "landsat-8" and i["properties"]["eo:cloud_cover"] <= 20]
    reader = EnvSigningReader  # a module-level class: the worker processes import it by name
    monkeypatch.setenv("GF_TEST_BROKEN", first[1]["id"])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        signed = client.submit(reader.sign_href, f"http://x/{first[1]['id']}.TIF", pure=False).result()
        assert TOKEN in signed and "-missing.TIF" in signed  # the workers sign with the fake token, and break one
        summary = build_cube_store(spec, PreprocessSpec(), str(tmp_path / "cube.zarr"), signer=reader,
                                   compute=runner(client, progress_bar=False))
    scenes = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")["scenes"]
    reasons = dict(zip(map(str, scenes["item_id"][...]), map(str, scenes["reason"][...]), strict=True))
    assert reasons[first[1]["id"]].startswith("read error"), reasons  # the error path ran, on a worker
    cap = capfd.readouterr()
    leaks = _leaks(tmp_path, {"summary": "\n".join(summary.lines()), "stdout": cap.out, "stderr": cap.err,
                              "logs": logs.text})
    assert not leaks, leaks
