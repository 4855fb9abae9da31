"""The command line, in-process: help at 80 columns, one-line errors with the flags typed, end to end runs."""

from __future__ import annotations

import dataclasses
import json
import re
from importlib.metadata import version

import pytest
import xarray as xr

from glacierflow.cli.app import flag_for
from glacierflow.cli.main import command, main
from glacierflow.compute.cluster import DEFAULT_CLUSTER
from glacierflow.ingest import catalog
from glacierflow.specs import CubeSpec, FlowSpec, PreprocessSpec
from glacierflow.testing import synthetic_cube, write_synthetic_cube

AUS = (150.0, -36.0, 154.0, -28.0)  # the bbox of the real PC items served by the rustac_server fixture


def _commands(group=None, path=()):
    """Every (path, command) of the CLI, sub-commands included."""
    group = group or command()
    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, (*path, name))


def _command(*path):
    return dict(_commands())[path]


def _options(cmd) -> dict[str, object]:
    """Flag -> click parameter (both halves of ``--x/--no-x`` flags)."""
    return {o: p for p in cmd.params if p.param_type_name == "option"
            for o in (*p.opts, *getattr(p, "secondary_opts", ()))}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


ALL = [p for p, _ in _commands()]


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "glacierflow")
def test_help_is_readable_at_80_columns(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, err = _run(capsys, *path, "--help")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("Usage: glacierflow")
    assert max(len(line) for line in lines) <= 80
    cmd = _command(*path)
    for flag in _options(cmd):
        assert re.search(rf"(^|\s|/){re.escape(flag)}\b", out), f"{flag} missing from the help"
    # descriptions get at least 44 of the 80 columns: each description (or its continuation) starts by column 36
    # (the old rich table started them at column 58 and wrapped every description at ~18 characters)
    section = out.split("Options:", 1)[1].split("Commands:", 1)[0]
    for line in section.splitlines():
        if not line.strip():
            continue
        term = re.match(r"^  (-\S.*?)(?:  +(\S.*))?$", line)
        if term and term.group(2):
            start = line.index(term.group(2), len(term.group(1)) + 2)
        elif term:
            continue  # a long option term alone; its description follows on the next line
        else:
            start = len(line) - len(line.lstrip())
        assert start <= 36, f"description squeezed into column {start}: {line!r}"


BAD = [
    (["build-cube", "--glacier", "parvati", "--start", "2020-01-01", "--end", "2019-01-01"],
     "error: --start 2020-01-01 must be before --end 2019-01-01"),
    (["build-cube", "--glacier", "parvati", "--max-cloud", "120"],
     "error: --max-cloud 120.0 must be a percentage between 0 and 100"),
    (["build-cube", "--glacier", "parvati", "--start", "2019-02-30"],
     "error: --start '2019-02-30' is not a date; use YYYY-MM-DD"),
    (["build-cube", "--glacier", "parvati", "--bbox", "1", "2", "3", "4"],
     "error: --glacier and --bbox were both given; pass one of them"),
    (["build-cube"], "error: --glacier NAME or --bbox W S E N is needed"),
    (["build-cube", "--bbox", "78", "32", "77", "33"],
     "error: --bbox 78 32 77 33 of site 'custom' must be W S E N degrees with W < E and S < N"),
    (["build-cube", "--glacier", "parvatti"],
     "error: unknown glacier 'parvatti' (did you mean 'parvati'?); known: aletsch, parvati; or pass --bbox W S E N"),
    (["build-cube", "--period", "2MS"], "error: Invalid value for '--period': '2MS' is not one of '1MS', '3MS', '6MS'"),
    (["build-cube", "--glacier", "parvati", "--max-missing", "2"],
     "error: --max-missing 2.0 must be a fraction between 0 and 1"),
    (["build-cube", "--qqq"], "error: No such option: --qqq; see glacierflow build-cube --help"),
    (["nonsense"], "error: No such command 'nonsense'; see glacierflow --help"),
    (["flow", "c.zarr", "--out", "v.zarr", "--pyr-scale", "2"], "error: --pyr-scale 2.0 must be in (0, 1), e.g. 0.5"),
    (["flow", "c.zarr", "--out", "v.zarr", "--winsize", "1"], "error: --winsize 1 must be an integer >= 3"),
    (["flow", "c.zarr", "--out", "v.zarr", "--pairs", "weekly"], "error: --pairs 'weekly' is unknown; choose one of:"),
    (["flow", "c.zarr", "--out", "v.zarr", "--cluster", "kubernetes"], "error: unknown --cluster 'kubernetes'"),
    (["flow", "missing.zarr", "--out", "v.zarr", "--cluster", "sync"],
     "error: cube store 'missing.zarr' not found; build one with 'glacierflow build-cube'"),
    (["flow", "c.zarr", "--out", "v.zarr", "--cluster", "sync", "--storage-option", "novalue"],
     "error: bad --storage-option 'novalue'; use KEY=VALUE"),
    (["twin", "make", "t", "--size", "huge"], "error: unknown twin size 'huge'; choose one of: tiny, small, full"),
    (["flow", "c.zarr"], "error: Missing option '--out'"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_user_mistakes_exit_2_with_one_line(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative store names resolve in the test's directory
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert err.startswith(expected), err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_no_arguments_shows_the_help(capsys):
    rc, out, err = _run(capsys)
    assert rc == 2 and "Commands:" in out + err and "build-cube" in out + err


def test_version_is_the_package_metadata(capsys):
    rc, out, _ = _run(capsys, "--version")
    assert rc == 0 and out == f"glacierflow {version('glacierflow')}\n"


def test_every_stage_defaults_to_the_one_cluster_default():
    for path in [("build-cube",), ("flow",), ("predict",), ("train",), ("evaluate",)]:
        opts = _options(_command(*path))
        assert opts["--cluster"].default == DEFAULT_CLUSTER, path
        assert "--workers" in opts and "--cluster-option" in opts, path


# spec fields that no flag sets (the library's knobs, or set from another flag: name <- --glacier/--bbox)
NOT_FLAGS = {"resolution", "gap_fill_max_iter", "align_highpass", "extra", "poly_n", "poly_sigma", "texture_window"}


@pytest.mark.parametrize(("path", "specs"), [(("build-cube",), (CubeSpec, PreprocessSpec)), (("flow",), (FlowSpec,))])
def test_spec_fields_translate_to_real_flags_with_the_specs_defaults(path, specs):
    options = _options(_command(*path))
    for spec in specs:
        for f in dataclasses.fields(spec):
            if f.name in NOT_FLAGS:
                continue
            flags = flag_for(f.name, spec.__name__).split("/")
            assert all(flag in options for flag in flags), f"{spec.__name__}.{f.name} -> {flags}"
            default = options[flags[0]].default
            if f.default is not dataclasses.MISSING and default is not None:
                assert default == f.default, f"--{f.name}: CLI default {default!r} != spec default {f.default!r}"


def test_flow_end_to_end_in_process(tmp_path, capsys):
    cube = write_synthetic_cube(str(tmp_path / "cube.zarr"), n_periods=3, size=48, period="3MS", drift=(1.0, 0.0),
                                seasonal=0.0, groups=True)
    out = str(tmp_path / "velocity.zarr")
    rc, stdout, err = _run(capsys, "flow", cube, "--out", out, "--pairs", "consecutive", "--winsize", "11",
                           "--max-fb-error", "0", "--cluster", "sync")
    assert rc == 0, err
    assert f"written: {out}" in stdout
    vel = xr.open_zarr(out, consolidated=False)
    assert xr.open_zarr(out, group="pairs").sizes["mid_date"] == 2, "3 periods (one scene each): 2 consecutive pairs"
    assert FlowSpec.from_json(vel.attrs["flow_spec"]) == FlowSpec(pairs="consecutive", winsize=11, max_fb_error=0.0)
    assert "warning: no --outline" in stdout  # stable ground from the NDSI climatology, said so
    assert PreprocessSpec.from_json(vel.attrs["preprocess_spec"]).period == "3MS"
    rc, _, err = _run(capsys, "flow", cube, "--out", out, "--cluster", "sync")
    assert rc == 2 and "--overwrite" in err and err.count("\n") == 1


def test_search_json_matches_the_library(rustac_server, capsys):
    argv = ["search", "--bbox", *map(str, AUS), "--start", "2023-01-01", "--end", "2023-12-31",
            "--catalog", rustac_server.url, "--json"]
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    got = json.loads(out)
    direct = catalog.search(rustac_server.url, bbox=AUS, start="2023-01-01", end="2023-12-31")
    assert got["ids"] == direct.ids and len(got["ids"]) >= 1


def test_build_cube_then_flow_end_to_end(served_twin, tmp_path, capsys):
    bbox = [f"{v:.6f}" for v in served_twin["meta"]["bbox"]]
    cube = str(tmp_path / "cube.zarr")
    rc, out, err = _run(capsys, "build-cube", "--bbox", *bbox, "--start", "2019-01-01", "--end", "2019-12-31",
                        "--catalog", served_twin["stac_url"], "--period", "6MS", "--out", cube, "--cluster", "threads")
    assert rc == 0, err
    assert re.search(r"^scenes: \d+ found, \d+ stacked, \d+ used$", out, re.M) and f"written: {cube}" in out
    ds = xr.open_zarr(cube, decode_coords="all")
    assert ds.sizes["time"] == 2 and list(ds["time"].to_index().month) == [1, 7]
    spec = CubeSpec.from_json(ds.attrs["cube_spec"])
    assert spec.start == "2019-01-01" and spec.catalog == served_twin["stac_url"]
    assert PreprocessSpec.from_json(ds.attrs["preprocess_spec"]).period == "6MS"
    # glacierflow.testing's synthetic cube has the built cube's variables, dims and dtypes (the store contract)
    synthetic = synthetic_cube(n_periods=2, period="6MS")
    # (time_bnds: CF bounds the store writer adds, storage.cf.conform; not part of the synthetic dataset)
    schema = {name: (v.dims, v.dtype) for name, v in ds.variables.items() if name != "time_bnds"}
    assert schema == {name: (v.dims, v.dtype) for name, v in synthetic.variables.items()}
    vel = str(tmp_path / "velocity.zarr")
    rc, out, err = _run(capsys, "flow", cube, "--out", vel, "--pairs", "consecutive", "--cluster", "threads")
    assert rc == 0, err
    assert re.search(r"^\d+ consecutive pairs of guides \((ncc|farneback)\)", out, re.M)  # acquisitions
    rc, _, err = _run(capsys, "build-cube", "--bbox", *bbox, "--catalog", served_twin["stac_url"], "--out", cube)
    assert rc == 2 and err.startswith(f"error: store {cube} already exists") and "--overwrite" in err
