"""Tests for glacierflow.specs: the Spec base (JSON round trip, unknown keys), field-level errors."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from glacierflow import specs as config
from glacierflow.errors import GlacierflowError, SpecError
from glacierflow.specs import CubeSpec, FlowSpec, PreprocessSpec, Spec, SpecWarning, spec_from_store


def _cube(**kw) -> CubeSpec:
    base = dict(name="p", bbox=(77.5, 32.0, 77.8, 32.2), epsg=32643, start="2019-01-01", end="2020-12-31",
                catalog="http://127.0.0.1:1")
    return CubeSpec(**{**base, **kw})


def _all_specs() -> list[type[Spec]]:
    return [c for c in vars(config).values()
            if isinstance(c, type) and issubclass(c, Spec) and c is not Spec and dataclasses.is_dataclass(c)]


def test_every_spec_derives_from_one_base_and_is_frozen():
    specs = {c.__name__ for c in _all_specs()}
    assert {"CubeSpec", "PreprocessSpec", "FlowSpec"} <= specs
    for cls in _all_specs():
        assert cls.__dataclass_params__.frozen, cls.__name__


@pytest.mark.parametrize("spec", [
    _cube(platforms=("landsat-8", "landsat-9"), max_cloud=35.5),
    PreprocessSpec(period="1MS", motion="affine", extra={"a": [1, 2]}),
    FlowSpec(pairs="annual", winsize=21, max_fb_error=0.0),
], ids=lambda s: type(s).__name__)
def test_json_round_trip(spec):
    text = spec.to_json()
    again = type(spec).from_json(text)
    assert again == spec
    assert json.loads(text) == json.loads(again.to_json())


def test_default_specs_of_every_stage_round_trip():
    for cls in _all_specs():
        if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls)):
            spec = cls()
            assert cls.from_json(spec.to_json()) == spec, cls.__name__


def test_unknown_keys_are_ignored_with_a_warning_naming_them():
    data = {**FlowSpec(winsize=11).to_dict(), "future_knob": 3, "another": "x"}
    with pytest.warns(SpecWarning, match="FlowSpec: ignoring unknown keys another, future_knob"):
        spec = FlowSpec.from_dict(data)
    assert spec == FlowSpec(winsize=11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FlowSpec.from_dict({"winsize": 11}) == FlowSpec(winsize=11)  # missing keys: defaults, silently


def test_missing_required_key_names_it():
    data = _cube().to_dict()
    del data["catalog"]
    with pytest.raises(SpecError) as err:
        CubeSpec.from_dict(data)
    assert err.value.field == "catalog" and str(err.value) == "catalog is missing from the stored CubeSpec"


def test_errors_name_fields_not_flags():
    with pytest.raises(SpecError) as err:
        _cube(start="2020-01-01", end="2019-01-01")
    e = err.value
    assert isinstance(e, GlacierflowError)
    assert (e.field, e.fields, e.spec) == ("start", ("start", "end"), "CubeSpec")
    assert str(e) == "start 2020-01-01 must be before end 2019-01-01"
    assert e.render(lambda f: f"<{f}>") == "<start> 2020-01-01 must be before <end> 2019-01-01"


@pytest.mark.parametrize(("make", "field", "text"), [
    (lambda: _cube(start="2019-02-30"), "start", "start '2019-02-30' is not a date; use YYYY-MM-DD"),
    (lambda: _cube(end="soon"), "end", "end 'soon' is not a date; use YYYY-MM-DD"),
    (lambda: _cube(max_cloud=120.0), "max_cloud", "max_cloud 120.0 must be a percentage between 0 and 100"),
    (lambda: _cube(platforms=()), "platforms", "platforms is empty; name at least one platform, e.g. landsat-8"),
    (lambda: _cube(bbox=(78.0, 32.0, 77.0, 33.0)), "bbox", "with W < E and S < N"),
    (lambda: _cube(epsg=7), "epsg", "epsg 7 must be an integer >= 1024"),
    (lambda: _cube(resolution=0.0), "resolution", "resolution 0.0 must be > 0 metres"),
    (lambda: PreprocessSpec(max_missing=1.5), "max_missing", "max_missing 1.5 must be a fraction between 0 and 1"),
    (lambda: PreprocessSpec(period="2W"), "period", "period '2W' is unknown; choose one of: 1MS, 3MS, 6MS"),
    (lambda: PreprocessSpec(motion="warp"), "motion", "motion 'warp' is unknown; choose one of: translation,"),
    (lambda: PreprocessSpec(ndsi_threshold=2.0), "ndsi_threshold", "ndsi_threshold 2.0 must be an NDSI between"),
    (lambda: PreprocessSpec(gap_fill_max_iter=-1), "gap_fill_max_iter", "gap_fill_max_iter -1 must be an integer"),
    (lambda: FlowSpec(pairs="weekly"), "pairs", "pairs 'weekly' is unknown; choose one of:"),
    (lambda: FlowSpec(pyr_scale=1.5), "pyr_scale", "pyr_scale 1.5 must be in (0, 1), e.g. 0.5"),
    (lambda: FlowSpec(levels=0), "levels", "levels 0 must be an integer >= 1"),
    (lambda: FlowSpec(winsize=2.5), "winsize", "winsize 2.5 must be an integer >= 3"),
    (lambda: FlowSpec(poly_n=6), "poly_n", "poly_n 6 must be 5 or 7"),
    (lambda: FlowSpec(poly_sigma=0.0), "poly_sigma", "poly_sigma 0.0 must be > 0, e.g. 1.1 (poly_n 5)"),
    (lambda: FlowSpec(min_texture=-1.0), "min_texture", "min_texture -1.0 must be >= 0"),
    (lambda: FlowSpec(max_fb_error=-1.0), "max_fb_error", "max_fb_error -1.0 must be >= 0 pixels"),
])
def test_field_errors(make, field, text):
    with pytest.raises(SpecError) as err:
        make()
    assert err.value.field == field
    message = str(err.value)
    assert message.startswith(f"{field} ") and text in message and "--" not in message and "\n" not in message


def test_paper_defaults():
    f = FlowSpec()
    assert (f.pyr_scale, f.levels, f.iterations, f.poly_n, f.poly_sigma) == (0.5, 6, 10, 5, 1.1)
    assert PreprocessSpec().ndsi_threshold == 0.3 and PreprocessSpec(period="6MS").period_months == 6
    assert FlowSpec(winsize=13).texture_box == 13 and FlowSpec(texture_window=5).texture_box == 5


def test_replace_validates_again():
    spec = PreprocessSpec()
    assert spec.replace(period="1MS").period == "1MS" and spec.period == "3MS"
    with pytest.raises(SpecError, match="period"):
        spec.replace(period="5MS")


def test_spec_from_store():
    pre = PreprocessSpec(period="6MS")
    assert spec_from_store({"preprocess_spec": pre.to_json()}, "preprocess_spec", PreprocessSpec) == pre
    assert spec_from_store({"preprocess_spec": pre.to_dict()}, "preprocess_spec", PreprocessSpec) == pre
    with pytest.raises(GlacierflowError, match="cube.zarr has no preprocess_spec attribute"):
        spec_from_store({}, "preprocess_spec", PreprocessSpec, "cube.zarr")
    with pytest.raises(GlacierflowError, match="PreprocessSpec: stored spec is not JSON"):
        spec_from_store({"preprocess_spec": "{broken"}, "preprocess_spec", PreprocessSpec)


def test_numpy_numbers_are_numbers_and_bools_are_not():
    import numpy as np

    assert FlowSpec(levels=np.int64(3)).levels == 3
    assert PreprocessSpec(max_missing=np.float32(0.25)).max_missing == pytest.approx(0.25)
    with pytest.raises(SpecError, match="levels True must be an integer >= 1"):
        FlowSpec(levels=True)
    with pytest.raises(SpecError, match="max_missing False must be a fraction"):
        PreprocessSpec(max_missing=False)
