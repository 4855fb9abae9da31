"""The model zoo: every registered model honours the tensor contract; baselines are exact against numpy."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from glacierflow.errors import GlacierflowError
from glacierflow.learn.models import BASELINES, MODELS, build_model, count_parameters

LEARNED = [name for name, entry in MODELS.items() if entry.learned]
FITTED = ("climatology", "trend", "anomaly")  # baselines of training statistics: they read extras["bases"]
PLAIN = [name for name in MODELS if name not in FITTED]
# models that roll out step by step and take teacher forcing (the contract)
ROLLOUT = [name for name in ("lstm", "convlstm", "unet", "transformer") if name in MODELS]

B = 1  # tiny batches keep the file fast on 2 cores (2 where per-sample randomness matters)


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    # one thread: these tensors are tiny, and on a busy 2-core machine a second OpenMP thread makes each
    # op wait for a descheduled core (measured here: 30x slower per small convolution)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample(seed: int = 0, b: int = B, t: int = 4, size: int = 50) -> torch.Tensor:
    """Snow-mask-like frames: 0 below 0.3, else in [0.3, 1]."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(b, t, 1, size, size, generator=g)
    return torch.where(v < 0.3, torch.zeros_like(v), v)


def test_registry_keys_and_baselines() -> None:
    assert set(MODELS) == {"persistence", "seasonal", "climatology", "trend", "anomaly", "lstm", "convlstm", "unet",
                           "transformer", "vit", "simvp", "blend"}
    assert BASELINES == ("persistence", "seasonal", "climatology", "trend", "anomaly")
    assert [n for n, e in MODELS.items() if not e.learned] == list(BASELINES)


@pytest.mark.parametrize("name", PLAIN)
def test_forward_shape_and_range(name: str) -> None:
    model = build_model(name)
    with torch.no_grad():
        out = model(sample())
    assert out.shape == (B, 4, 1, 50, 50)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", PLAIN)
def test_output_in_unit_range_for_extreme_inputs(name: str) -> None:
    model = build_model(name)
    x = 1e3 * torch.randn(B, 4, 1, 50, 50)  # far outside [0, 1]
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            out = model(x, target=x, teacher_forcing=0.5)
        assert torch.isfinite(out).all()
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", PLAIN)
def test_t_in_t_out_differ(name: str) -> None:
    model = build_model(name, t_in=2, t_out=5, season_length=2)
    out = model(sample(t=2), target=sample(t=5), teacher_forcing=0.5)
    assert out.shape == (B, 5, 1, 50, 50)


@pytest.mark.parametrize("name", LEARNED)
def test_backward_gives_finite_nonzero_gradients(name: str) -> None:
    model = build_model(name)
    model.train()
    x, y = sample(1, b=2), sample(2, b=2)
    loss = torch.nn.functional.mse_loss(model(x, target=y, teacher_forcing=0.5), y)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        # every parameter tensor takes part in the forecast (no dead branch)
        assert float(p.grad.abs().max()) > 0.0, pname


@pytest.mark.parametrize("name", ("persistence", "seasonal"))
def test_baselines_have_no_parameters_and_pass_gradients_to_inputs(name: str) -> None:
    model = build_model(name)
    assert count_parameters(model) == 0
    x = sample().requires_grad_()
    model(x).sum().backward()
    # each of the 4 target frames copies one input frame: persistence copies the last frame 4 times,
    # seasonal (s = 4, t_in = 4) each input frame once; x is in [0, 1], so the clamp passes gradients
    expect = np.zeros((4,))
    if name == "persistence":
        expect[-1] = 4
    else:
        expect[:] = 1
    np.testing.assert_array_equal(x.grad[0, :, 0, 0, 0].numpy(), expect)


@pytest.mark.parametrize("name", LEARNED)
def test_learned_models_have_parameters(name: str) -> None:
    assert count_parameters(build_model(name)) > 0


def lstm_count(n: int, hidden: int, layers: int, head: bool) -> int:
    """Independent count: nn.LSTM layer = 4h(in + h) weights + 2 * 4h biases; encoder + decoder; head."""
    one = sum(4 * hidden * ((n if layer == 0 else hidden) + hidden) + 8 * hidden for layer in range(layers))
    return 2 * one + ((hidden * n + n) if head else 0)


def test_lstm_parameter_count_default_and_paper_scale() -> None:
    assert count_parameters(build_model("lstm")) == lstm_count(2500, 256, 1, head=True)
    # the paper's LSTMEncDec: 3 layers of 2,500 units, no head: 300,120,000 (reference §4.2, recomputed there)
    with torch.device("meta"):  # no memory for 300 M weights
        paper = build_model("lstm", hidden_size=2500, num_layers=3, dropout=0.1, head="none")
    assert count_parameters(paper) == 300_120_000 == lstm_count(2500, 2500, 3, head=False)


def convlstm_count(folded: int, hidden: list[int], k: int) -> int:
    """Independent count: a cell's conv maps in + h channels to 4h with a k x k kernel and bias; two stacks
    (encoder, forecaster) of the same widths; a 1x1 head back to the folded channels."""
    widths = [folded, *hidden]
    stack = sum((widths[i] + widths[i + 1]) * 4 * widths[i + 1] * k * k + 4 * widths[i + 1] for i in range(len(hidden)))
    return 2 * stack + hidden[-1] * folded + folded


def test_convlstm_parameter_count() -> None:
    assert count_parameters(build_model("convlstm")) == convlstm_count(25, [24, 24], 3)
    assert count_parameters(build_model("convlstm", hidden=[8], patch_size=2, kernel_size=5)) == convlstm_count(
        4, [8], 5
    )


def test_unet_parameter_count_at_paper_scale() -> None:
    # the research code's UNet(1, 1), widths 64..1024, on one input frame: 31,036,481 (reference §4.2)
    with torch.device("meta"):
        paper = build_model("unet", t_in=1, base_channels=64, depth=4)
    assert count_parameters(paper) == 31_036_481


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("convlstm", {"size": 48}, "not a multiple of 5"),
        ("convlstm", {"kernel_size": 4}, "odd"),
        ("vit", {"size": 52}, "not a multiple of 5"),
        ("vit", {"t_in": 3}, "tubelet_frames"),
        ("simvp", {"n_spatial": 4}, "not a multiple of 4"),
        ("unet", {"depth": 6}, "2\\*\\*depth"),
        ("transformer", {"d_model": 30}, "multiple of heads"),
    ],
)
def test_size_constraints_are_user_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(GlacierflowError, match=match):
        build_model(name, **kwargs)


@pytest.mark.parametrize("name", ["convlstm", "unet", "vit", "simvp"])
def test_other_patch_sizes_work(name: str) -> None:
    model = build_model(name, size=20)  # a multiple of every default downsampling (5, 2)
    with torch.no_grad():
        assert model(sample(size=20)).shape == (B, 4, 1, 20, 20)


@pytest.mark.parametrize("name", PLAIN)
def test_model_args_rebuild_same_architecture(name: str) -> None:
    model = build_model(name, t_in=2, t_out=3)
    args = json.loads(json.dumps(model.model_args))  # what a checkpoint stores
    assert args["t_in"] == 2 and args["t_out"] == 3
    again = build_model(name, **args)
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert again.model_args == model.model_args


@pytest.mark.parametrize("name", LEARNED)
def test_deterministic_given_seed(name: str) -> None:
    outs = []
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # an op without a deterministic implementation would raise
    try:
        for _ in range(2):
            torch.manual_seed(3)
            model = build_model(name)
            model.train()  # dropout and scheduled sampling (per sample, so 2 samples) draw random numbers
            out = model(sample(b=2), target=sample(4, b=2), teacher_forcing=0.5)
            out.mean().backward()
            outs.append(torch.cat([out.detach().flatten(), *(p.grad.flatten() for p in model.parameters())]))
    finally:
        torch.use_deterministic_algorithms(was)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_persistence_exact() -> None:
    x = sample(5)
    out = build_model("persistence", t_out=3)(x).numpy()
    ref = np.repeat(x.numpy()[:, -1:], 3, axis=1)
    np.testing.assert_array_equal(out, ref)


def seasonal_reference(context: np.ndarray, t_out: int, s: int) -> np.ndarray:
    """Numpy reference by search: for target k (at context position T-1+k), the latest context period j <= T-1
    that lies a whole number of years before it."""
    t_ctx = context.shape[1]
    frames = []
    for k in range(1, t_out + 1):
        pos = t_ctx - 1 + k
        j = max(j for j in range(t_ctx) if (pos - j) % s == 0)
        frames.append(context[:, j])
    return np.stack(frames, axis=1)


def test_seasonal_quarterly_is_the_inputs_in_order() -> None:
    x = sample(6)
    out = build_model("seasonal", season_length=4)(x).numpy()
    np.testing.assert_array_equal(out, x.numpy())
    np.testing.assert_array_equal(out, seasonal_reference(x.numpy(), 4, 4))


def test_seasonal_monthly_reaches_twelve_periods_back() -> None:
    ctx = sample(7, t=12)  # 12 cube periods ending with the last input frame
    x = ctx[:, -4:]
    out = build_model("seasonal", season_length=12)(x, context=ctx).numpy()
    # target k (k = 1..4) sits 12 periods after context[k - 1]
    np.testing.assert_array_equal(out, ctx.numpy()[:, 0:4])
    np.testing.assert_array_equal(out, seasonal_reference(ctx.numpy(), 4, 12))


@pytest.mark.parametrize(("s", "t_ctx", "t_out"), [(2, 4, 4), (4, 6, 6), (12, 14, 4), (3, 4, 7)])
def test_seasonal_matches_reference_when_targets_span_more_than_a_year(s: int, t_ctx: int, t_out: int) -> None:
    ctx = sample(8, t=t_ctx)
    model = build_model("seasonal", t_in=min(4, t_ctx), t_out=t_out, season_length=s)
    out = model(ctx[:, -model.t_in :], context=ctx).numpy()
    np.testing.assert_array_equal(out, seasonal_reference(ctx.numpy(), t_out, s))


def test_seasonal_without_enough_context_is_refused() -> None:
    model = build_model("seasonal", season_length=12)
    with pytest.raises(GlacierflowError, match="season_length=12"):
        model(sample())


@pytest.mark.parametrize("name", ROLLOUT)
def test_rollout_is_causal_under_teacher_forcing(name: str) -> None:
    """Prediction j depends on target frames < j only (teacher forcing 1.0), and does depend on them."""
    model = build_model(name)
    model.eval()  # no dropout: differences come from the inputs only
    x, y = sample(9), sample(10)
    with torch.no_grad():
        base = model(x, target=y, teacher_forcing=1.0)
        # target 3 is never fed (nothing follows it), so only j = 0..2 can reveal a leak; without the causal
        # mask, positions <= j move by 0.05 (measured by removing the mask)
        for j in range(3):
            changed = y.clone()
            changed[:, j] = sample(11 + j)[:, 0]
            out = model(x, target=changed, teacher_forcing=1.0)
            # positions <= j never see target j: identical up to float reordering (measured 0 on CPU)
            torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], rtol=0, atol=1e-6)
            # a later position is fed target j, so its prediction must move
            assert float((out[:, j + 1 :] - base[:, j + 1 :]).abs().max()) > 1e-4


@pytest.mark.parametrize("name", ROLLOUT)
def test_teacher_forcing_with_own_predictions_reproduces_free_rollout(name: str) -> None:
    """Feeding the free rollout's own predictions as 'truth' under teacher forcing 1.0 gives that rollout back
    (the transformer's one-pass teacher-forced path and its step-by-step path agree)."""
    model = build_model(name)
    model.eval()
    x = sample(14)
    with torch.no_grad():
        free = model(x)
        forced = model(x, target=free, teacher_forcing=1.0)
    # float32, different op order in the one-pass path: measured max difference ~1e-7
    torch.testing.assert_close(forced, free, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ROLLOUT)
def test_teacher_forcing_zero_ignores_target(name: str) -> None:
    model = build_model(name)
    model.eval()
    x = sample(12)
    with torch.no_grad():
        free = model(x)
        given = model(x, target=sample(13), teacher_forcing=0.0)
    torch.testing.assert_close(free, given, rtol=0, atol=0)


def test_unknown_name_and_option_are_user_errors() -> None:
    with pytest.raises(GlacierflowError, match=r"unknown model 'lstn' \(did you mean 'lstm'\?\); known: persistence"):
        build_model("lstn")
    with pytest.raises(GlacierflowError, match="unknown option 'hiden_size' for model 'lstm'"):
        build_model("lstm", hiden_size=8)
    with pytest.raises(GlacierflowError, match="persistence"):
        build_model("persistence", dropout=0.1)


def test_bad_values_are_user_errors() -> None:
    with pytest.raises(GlacierflowError, match="hidden_size == channels"):
        build_model("lstm", head="none")
    with pytest.raises(GlacierflowError, match="t_in"):
        build_model("lstm", t_in=0)
    with pytest.raises(GlacierflowError, match="teacher_forcing"):
        build_model("lstm")(sample(), target=sample(), teacher_forcing=1.5)


@pytest.mark.parametrize("name", PLAIN)
def test_wrong_input_shape_is_refused(name: str) -> None:
    model = build_model(name)
    with pytest.raises(GlacierflowError, match="expects input"):
        model(sample(size=40))


def _extras(b: int = B, t_out: int = 4, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"bases": torch.rand(b, 5, t_out, 1, 50, 50, generator=g), "phase": torch.rand(b, 8, generator=g) * 6}


@pytest.mark.parametrize("base", ["seasonal", "climatology", "trend", "anomaly", "persistence"])
@pytest.mark.parametrize("name", ["convlstm", "simvp"])
def test_residual_head_starts_exactly_at_its_base(name: str, base: str) -> None:
    from glacierflow.learn.climate import BASELINE_NAMES

    model = build_model(name, head="residual", base=base, calendar=True, climatology=True).eval()
    ex = _extras()
    with torch.no_grad():
        out = model(sample(), extras=ex)
    # zero-initialised correction: an untrained model is its base forecast, bit for bit
    torch.testing.assert_close(out, ex["bases"][:, BASELINE_NAMES.index(base)], rtol=0, atol=0)


def test_head_learns_and_reaches_the_core() -> None:
    model = build_model("convlstm", head="residual", base="seasonal")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ex, x, y = _extras(b=2), sample(b=2), sample(3, b=2)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, target=y, extras=ex), y).backward()
        opt.step()
    assert float(model.net[-1].weight.detach().abs().max()) > 0  # the correction left zero
    assert any(float(p.grad.abs().max()) > 0 for p in model.core.parameters())  # and gradients reach the core
    rebuilt = build_model("convlstm", **model.model_args)
    rebuilt.load_state_dict(model.state_dict())  # model_args rebuild the same architecture


@pytest.mark.parametrize("name", ["climatology", "trend", "anomaly"])
def test_fitted_baselines_return_their_bases_and_need_them(name: str) -> None:
    from glacierflow.learn.climate import BASELINE_NAMES

    model = build_model(name)
    ex = _extras()
    torch.testing.assert_close(model(sample(), extras=ex), ex["bases"][:, BASELINE_NAMES.index(name)])
    with pytest.raises(GlacierflowError, match="training periods"):
        model(sample())
