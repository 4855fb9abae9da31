"""Tests for glacierflow.errors: SpecError names fields and renders them as each front end names them."""

from __future__ import annotations

from glacierflow.errors import GlacierflowError, SpecError


def test_spec_error_names_its_fields():
    e = SpecError("poly_sigma", "0.0 must be > 0, e.g. 1.1 ({poly_n} 5) or 1.5 ({poly_n} 7)", "FlowSpec")
    assert isinstance(e, GlacierflowError)
    assert (e.field, e.spec, e.fields) == ("poly_sigma", "FlowSpec", ("poly_sigma", "poly_n"))
    assert str(e) == "poly_sigma 0.0 must be > 0, e.g. 1.1 (poly_n 5) or 1.5 (poly_n 7)"
    flags = {"poly_sigma": "--sigma", "poly_n": "--poly-n"}
    assert e.render(flags.__getitem__) == "--sigma 0.0 must be > 0, e.g. 1.1 (--poly-n 5) or 1.5 (--poly-n 7)"


def test_values_with_braces_are_not_fields():
    # only {identifier} is a field reference; a dict or set printed in the message stays as it is
    e = SpecError("extra", "{'a': 1} and {1, 2} are not allowed; see {period}")
    assert e.fields == ("extra", "period")
    assert e.render(lambda f: f.upper()) == "EXTRA {'a': 1} and {1, 2} are not allowed; see PERIOD"
