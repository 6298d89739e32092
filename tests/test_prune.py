"""Property tests of the ``prune`` pass (magnitude pruning, Han et al. NIPS'15 / Deep Compression §2)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import dccomp
from dccomp import PassContext, PassManager
from dccomp.passes.prune import Prune, agp_schedule, prune_weight

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Three(nn.Module):
    """Three layers of different sizes and kinds: conv (54 weights), fc (shape varies), fc."""

    def __init__(self, h: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc1 = nn.Linear(12, h)
        self.fc2 = nn.Linear(h, 5)

    def forward(self, x, z):
        return self.conv(x).sum() + self.fc2(self.fc1(z))


def _model(seed: int, h: int, discrete: bool) -> nn.Module:
    torch.manual_seed(seed)
    m = Three(h)
    if discrete:  # many exactly equal magnitudes: ties must still give the exact count
        with torch.no_grad():
            for mod in (m.conv, m.fc1, m.fc2):
                mod.weight.copy_(torch.randint(-3, 4, mod.weight.shape).float())
    return m


def _run(model, passes, **ctx):
    ir = dccomp.trace(model)
    return PassManager(passes).run(ir, PassContext(**ctx))


def _density_ok(w, p, target_sparsity, before=None):
    """Kept count matches the target within one weight; exact zeros of the input are never kept, so with
    ``before`` (the weight before pruning) the target is capped at its number of non-zeros."""
    n = p.numel()
    kept = int(w.mask.sum())
    target = n - target_sparsity * n
    if before is not None:
        target = min(target, int((before != 0).sum()))
    return abs(kept - target) <= 1


@SETTINGS
@given(seed=st.integers(0, 50), h=st.integers(1, 9), sparsity=st.floats(0, 1), discrete=st.booleans())
def test_layer_density_matches_target(check_ir, seed, h, sparsity, discrete):
    model = _model(seed, h, discrete)
    before = {n: p.detach().clone() for n, p in dccomp.trace(model).gm.named_parameters()}
    ir = _run(model, [Prune(sparsity=sparsity)])
    check_ir(ir)
    for w in ir:
        p = ir.param(w.name).detach()
        assert w.mask is not None and w.state == dccomp.State.MASKED
        assert _density_ok(w, p, sparsity, before[w.name]), (w.name, int(w.mask.sum()), p.numel(), sparsity)
        assert not (w.mask & (before[w.name] == 0)).any()  # exact zeros are never kept
        # survivors keep their value; every survivor is at least as large as every pruned entry
        assert torch.equal(p[w.mask], before[w.name][w.mask])
        if w.mask.any() and (~w.mask).any():
            assert before[w.name].abs()[w.mask].min() >= before[w.name].abs()[~w.mask].max()
    # biases are dense and untouched
    for d in ir.dense:
        assert torch.equal(ir.param(d.name).detach(), before[d.name])


@SETTINGS
@given(seed=st.integers(0, 50), default=st.floats(0, 1), s_fc=st.floats(0, 1), s_conv=st.floats(0, 1))
def test_layer_regex_overrides(check_ir, seed, default, s_fc, s_conv):
    model = _model(seed, 6, False)
    # "fc2" matches the module name, "conv2d" the kind; fc1 gets the default
    ir = _run(model, [Prune(sparsity=default, layers={"fc2": s_fc, "conv2d": s_conv})])
    check_ir(ir)
    targets = {"conv.weight": s_conv, "fc1.weight": default, "fc2.weight": s_fc}
    for w in ir:
        assert _density_ok(w, ir.param(w.name), targets[w.name]), (w.name, targets[w.name])


def test_layer_regex_first_match_wins_and_exclude():
    model = _model(0, 6, False)
    ir = _run(model, "prune{sparsity=0.5,layers={\"fc.*\":0.9,\"fc1\":0.1},exclude=conv2d}")
    assert ir.weights["conv.weight"].mask is None
    assert ir.weights["conv.weight"].state == dccomp.State.DENSE
    assert int(ir.weights["fc1.weight"].mask.sum()) == 12 * 6 - round(0.9 * 72)
    assert int(ir.weights["fc2.weight"].mask.sum()) == 30 - round(0.9 * 30)


@SETTINGS
@given(seed=st.integers(0, 50), h=st.integers(1, 9), sparsity=st.floats(0, 1), discrete=st.booleans())
def test_global_scope_hits_global_target(check_ir, seed, h, sparsity, discrete):
    model = _model(seed, h, discrete)
    before = {n: p.detach().clone() for n, p in dccomp.trace(model).gm.named_parameters()}
    ir = _run(model, [Prune(sparsity=sparsity, scope="global")])
    check_ir(ir)
    total = sum(ir.param(w.name).numel() for w in ir)
    kept = sum(int(w.mask.sum()) for w in ir)
    nonzero = sum(int((before[w.name] != 0).sum()) for w in ir)  # exact zeros are never kept
    assert abs(kept - min(total - sparsity * total, nonzero)) <= 1, (kept, total, sparsity)
    # one threshold over all layers: no pruned magnitude exceeds a surviving one
    kept_mag = torch.cat([before[w.name].abs()[w.mask] for w in ir])
    gone_mag = torch.cat([before[w.name].abs()[~w.mask] for w in ir])
    if kept_mag.numel() and gone_mag.numel():
        assert kept_mag.min() >= gone_mag.max()


def test_global_scope_with_ties_exact():
    """All weights the same magnitude: global pruning must still remove exactly the requested count
    (a threshold ``|w| > t`` removes every tied weight and overshoots)."""
    m = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        for lin in m:
            lin.weight.fill_(0.5)
    ir = _run(m, [Prune(sparsity=0.3, scope="global")])
    assert sum(int(w.mask.sum()) for w in ir) == 140


@SETTINGS
@given(seed=st.integers(0, 50), h=st.integers(2, 9), q=st.floats(0, 2.5))
def test_quality_removes_exactly_small_weights(check_ir, seed, h, q):
    model = _model(seed, h, False)
    before = {n: p.detach().clone() for n, p in dccomp.trace(model).gm.named_parameters()}
    ir = _run(model, [Prune(quality=q)])
    check_ir(ir)
    for w in ir:
        v = before[w.name].double().numpy()
        thr = q * float(np.std(v, ddof=1))
        mag = np.abs(v)
        border = np.isclose(mag, thr, rtol=1e-9, atol=0)
        removed = ~w.mask.numpy()
        expect = mag <= thr
        assert np.array_equal(removed[~border], expect[~border]), (w.name, thr)


def test_quality_threshold_boundary_is_inclusive():
    # weights {-2,-1,0,1,2} x4: std (ddof=1) = sqrt(40/19); q chosen so q*std == 1 up to rounding, |w|==1 removed
    w = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0] * 4).view(4, 5)
    std = float(w.double().std())
    mask = prune_weight(w, None, quality=1.0 / std * (1 + 1e-12))
    assert mask.sum() == 8 and bool((w[mask].abs() == 2).all())
    mask = prune_weight(w, None, quality=0.999 / std)
    assert mask.sum() == 16


def test_iterative_steps_reach_target_and_schedule_is_monotone(tiny_mlp, tiny_data, trainer_factory, check_ir):
    for schedule in ("linear", "agp"):
        passes = [Prune(sparsity=0.75, steps=3, schedule=schedule, epochs=1, lr=0.01)]
        ir = _run(tiny_mlp, passes, trainer=trainer_factory(tiny_data))
        check_ir(ir)
        for w in ir:
            assert _density_ok(w, ir.param(w.name), 0.75)
    s = agp_schedule(0.0, 1.0, 4)
    assert s == sorted(s) and math.isclose(s[-1], 1.0) and s[0] > 0


def test_pruned_entries_stay_pruned_when_pruning_again(check_ir):
    model = _model(3, 8, False)
    ir = _run(model, "prune{sparsity=0.5},prune{sparsity=0.8}")
    ir1 = _run(model, "prune{sparsity=0.5}")
    check_ir(ir)
    for w in ir:
        assert not (w.mask & ~ir1.weights[w.name].mask).any()
        assert _density_ok(w, ir.param(w.name), 0.8)


def test_exclude_matches_module_name_like_layers():
    """``exclude=fc1`` must leave ``fc1.weight`` alone (``layers`` matches module names; exclude used not to)."""
    ir = _run(_model(0, 4, False), "prune{sparsity=0.5,exclude=fc1}")
    assert ir.weights["fc1.weight"].state == dccomp.State.DENSE
    assert ir.weights["fc2.weight"].state == dccomp.State.MASKED
    assert ir.weights["conv.weight"].state == dccomp.State.MASKED


def test_prune_after_cluster_is_refused():
    with pytest.raises(dccomp.PassError, match="prune before cluster"):
        _run(_model(0, 4, False), "prune{sparsity=0.5},cluster{bits=3},prune{sparsity=0.7}")
    # excluded clustered weights do not block pruning of the others
    ir = _run(_model(0, 4, False), "cluster{bits=3,layers={\"fc2\":2},exclude=\"fc1|conv2d\"},"
                                   "prune{sparsity=0.5,exclude=fc2.weight}")
    assert ir.weights["fc2.weight"].state == dccomp.State.CLUSTERED
    assert ir.weights["fc1.weight"].state == dccomp.State.MASKED


@pytest.mark.parametrize("text, match", [
    ("prune{sparsity=1.5}", r"sparsity must be a number in \[0, 1\], got 1.5"),
    ("prune{sparsity=-0.1}", r"sparsity must be a number in \[0, 1\]"),
    ("prune{sparsity=0.5,quality=1.0}", "exactly one of sparsity"),
    ("prune", "exactly one of sparsity"),
    ("prune{quality=1.0,scope=global}", "scope=global takes one sparsity="),
    ("prune{sparsity=0.5,scope=global,layers={\"fc1\":0.9}}", "no per-layer layers="),
    ("prune{sparsity=0.5,scope=net}", "scope must be 'layer' or 'global'"),
    ("prune{sparsity=0.5,schedule=cosine}", "schedule must be 'linear' or 'agp'"),
    ("prune{sparsity=0.5,steps=0}", "steps must be an integer >= 1"),
    ("prune{sparsity=0.5,layers={\"fc1\":2}}", r"sparsity must be a number in \[0, 1\], got 2"),
    ("prune{sparsty=0.5}", "has no option"),
])
def test_option_errors_from_pipeline_text(text, match):
    with pytest.raises(dccomp.PassError, match=match) as ei:
        dccomp.parse_pipeline(text)
    assert "prune" in str(ei.value)


def test_bad_layer_regex_is_a_clear_error():
    with pytest.raises(ValueError, match="not a valid regular expression"):  # refused when the pass is built
        Prune(sparsity=0.5, layers={"fc(": 0.3})
    with pytest.raises(dccomp.PassError, match="not a valid regular expression"):
        dccomp.parse_pipeline('prune{sparsity=0.5,layers={"fc(":0.3}}')


@pytest.mark.parametrize("text, msg", [
    ('prune{layers={"fc9":0.95}}', "'fc9' matches no compressible weight"),
    ('prune{sparsity=0.5,exclude="nope"}', "'nope' matches no compressible weight"),
    ('prune{sparsity=0.5},cluster{layers={"fc9":3}}', "'fc9' matches no compressible weight"),
    ('cluster{bits=4,layers=["fc1"]}', "layers must be a mapping"),
    ('prune{sparsity=0.5,exclude=["fc1"]}', "exclude must be one regular expression"),
])
def test_layer_selectors_that_do_nothing_are_errors(text, msg):
    with pytest.raises(dccomp.PassError, match=re.escape(msg)):
        dccomp.compile(_model(0, 4, False), text)


def test_kind_rules_may_match_nothing():
    # a generic pipeline's per-kind rule (conv.*) is fine on a model without convolutions
    from dccomp.models import LeNet300100

    c = dccomp.compile(LeNet300100(), 'prune{sparsity=0.5},cluster{bits=3,layers={"conv.*":8}}')
    assert {w.kind for w in c.ir.weights.values()} == {"linear"}
    assert all(w.bits <= 3 for w in c.ir.weights.values())


def test_one_step_prune_with_epochs_retrains():
    """Found by a new user: prune{epochs=N} with the default steps=1 pruned one-shot and ignored epochs."""
    import dccomp

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
    one_shot = dccomp.compile(m, "prune{sparsity=0.7}")
    retrained = dccomp.compile(m, "prune{sparsity=0.7,epochs=2,lr=0.05}", train_data=(x, y))
    for w in retrained.ir:
        assert torch.equal(w.mask, one_shot.ir.weights[w.name].mask)  # same magnitude mask, then trained
        assert not torch.equal(retrained.ir.param(w.name), one_shot.ir.param(w.name))
        assert torch.count_nonzero(retrained.ir.param(w.name)[~w.mask]) == 0
    with pytest.raises(dccomp.PassError, match="training data"):
        dccomp.compile(m, "prune{sparsity=0.7,epochs=1}")
