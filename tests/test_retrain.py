"""Tests of the ``retrain`` pass: masks and shared weights held, centroids trained with Eq. 3 of Deep Compression."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import dccomp
from dccomp import PassContext, PassManager, State
from dccomp.passes.cluster import Cluster
from dccomp.passes.prune import Prune
from dccomp.passes.retrain import Retrain

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(ir_or_model, passes, **ctx):
    ir = ir_or_model if isinstance(ir_or_model, dccomp.IR) else dccomp.trace(ir_or_model)
    return PassManager(passes).run(ir, PassContext(**ctx))


@SETTINGS
@given(seed=st.integers(0, 20), sparsity=st.floats(0.1, 0.95), bits=st.integers(1, 4),
       optimizer=st.sampled_from(["sgd", "adam", "adamw"]))
def test_invariants_hold_after_retrain(check_ir, tiny_mlp, data_factory, trainer_factory, seed, sparsity, bits,
                                       optimizer):
    torch.manual_seed(seed)
    data = data_factory(48, seed=seed)
    ctx = dict(trainer=trainer_factory(data), seed=seed)
    pruned = _run(tiny_mlp, [Prune(sparsity=sparsity)], **ctx)
    masked = _run(pruned, [Retrain(epochs=1, lr=0.05, optimizer=optimizer)], **ctx)
    check_ir(masked)
    for w in masked:
        assert torch.equal(w.mask, pruned.weights[w.name].mask)
        p = masked.param(w.name).detach()
        assert torch.count_nonzero(p[~w.mask]) == 0
        assert not torch.equal(p, pruned.param(w.name).detach()), "retrain changed nothing"
    clustered = _run(masked, [Cluster(bits=bits)], **ctx)
    trained = _run(clustered, [Retrain(epochs=1, lr=0.05, optimizer=optimizer)], **ctx)
    check_ir(trained)
    for w in trained:
        c = clustered.weights[w.name]
        p = trained.param(w.name).detach()
        assert w.state == State.CLUSTERED
        assert torch.equal(w.mask, c.mask) and torch.equal(w.indices, c.indices)
        assert w.k == c.k and w.bits == c.bits
        assert w.k <= 2 ** bits and torch.unique(p[p != 0]).numel() <= w.k
        assert torch.equal(p[w.mask], w.codebook[w.indices[w.mask]])
        assert torch.equal(p != 0, w.mask)
        if w.k:
            assert not torch.equal(w.codebook, c.codebook), "centroids were not trained"


def test_centroid_update_is_summed_cluster_gradient():
    """One SGD step (no momentum, no weight decay) moves centroid k by lr * sum_{i in cluster k} dL/dW_i (Eq. 3);
    pruned positions contribute nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(16, 6)
    y = torch.randint(0, 3, (16,))
    ir = _run(model, "prune{sparsity=0.4},cluster{bits=2}")
    # the gradient of the loss w.r.t. the dense (decoded) weights, by plain autograd
    gm = copy.deepcopy(ir.gm)
    gm.train()
    nn.functional.cross_entropy(gm(x), y).backward()
    lr = 0.5
    tr = dccomp.Trainer((x, y), batch_size=16)
    out = _run(ir, [Retrain(epochs=1, lr=lr, momentum=0.0, weight_decay=0.0)], trainer=tr)
    for name in ("0.weight", "2.weight"):
        w = ir.weights[name]
        g = gm.get_parameter(name).grad
        expected = torch.stack([g[(w.indices == k) & w.mask].sum() for k in range(w.k)])
        # the masked-out positions have non-zero dense gradient: they must not leak into the sum
        assert g[~w.mask].abs().sum() > 0
        step = w.codebook - out.weights[name].codebook
        torch.testing.assert_close(step, lr * expected, rtol=1e-4, atol=1e-6)
        assert (expected != 0).any()


def test_centroid_lr_applies_to_centroids_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    ir = _run(model, "cluster{bits=2}")
    tr = dccomp.Trainer((x, y), batch_size=16)
    kw = dict(epochs=1, momentum=0.0, weight_decay=0.0)
    a = _run(ir, [Retrain(lr=0.1, **kw)], trainer=tr)
    b = _run(ir, [Retrain(lr=0.1, centroid_lr=0.2, **kw)], trainer=tr)
    for name in ("0.weight", "2.weight"):
        c0 = ir.weights[name].codebook
        torch.testing.assert_close(b.weights[name].codebook - c0, 2 * (a.weights[name].codebook - c0))
    torch.testing.assert_close(a.param("0.bias"), b.param("0.bias"))


def test_retrain_without_data_raises_pass_error(tiny_mlp):
    with pytest.raises(dccomp.PassError, match="train_data"):
        dccomp.compile(tiny_mlp, "prune{sparsity=0.5},retrain{epochs=1}")
    with pytest.raises(dccomp.PassError, match="train_data"):
        dccomp.compile(tiny_mlp, "retrain", trainer=dccomp.Trainer(eval_data=(torch.randn(4, 12),
                                                                                torch.zeros(4, dtype=torch.long))))
    # iterative pruning retrains between steps, so it needs data too
    with pytest.raises(dccomp.PassError, match="train_data"):
        dccomp.compile(tiny_mlp, "prune{sparsity=0.5,steps=2,epochs=1}")


def test_failing_pass_leaves_user_model_and_input_ir_unchanged(tiny_mlp):
    state = {k: v.clone() for k, v in tiny_mlp.state_dict().items()}
    with pytest.raises(dccomp.PassError):
        dccomp.compile(tiny_mlp, "prune{sparsity=0.9},cluster{bits=2},retrain{epochs=1}")
    assert all(torch.equal(state[k], v) for k, v in tiny_mlp.state_dict().items())
    ir = _run(tiny_mlp, "prune{sparsity=0.5}")
    snap = {n: p.detach().clone() for n, p in ir.gm.named_parameters()}
    masks = {w.name: w.mask.clone() for w in ir}
    with pytest.raises(dccomp.PassError):
        PassManager("cluster{bits=2},retrain").run(ir, PassContext())
    assert all(torch.equal(snap[n], p) for n, p in ir.gm.named_parameters())
    assert all(torch.equal(masks[w.name], w.mask) and w.codebook is None for w in ir)


def test_user_step_fn_is_used_and_masks_hold(tiny_mlp, tiny_data, check_ir):
    calls = []

    def step_fn(module, batch, opt):
        # a user loop that also perturbs every parameter after the step (as e.g. an EMA or a buggy loop might)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(module(batch[0]), batch[1])
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.01)
        calls.append(len(batch[0]))
        return float(loss.detach())

    tr = dccomp.Trainer(tiny_data, batch_size=16, step_fn=step_fn)
    c = dccomp.compile(tiny_mlp, "prune{sparsity=0.7},retrain{epochs=1,lr=0.1},cluster{bits=3},retrain{epochs=1}",
                       trainer=tr, verify=True)
    assert calls == [16] * 8  # 64 samples / 16, two retrain passes
    check_ir(c.ir)
    for w in c.ir:
        assert torch.count_nonzero(c.ir.param(w.name)[~w.mask]) == 0
        assert abs(float(w.mask.float().mean()) - 0.3) < 0.02
    assert c.records["retrain#2"]["steps"] == 4


def test_fractional_epochs_and_max_batches(tiny_mlp, tiny_data):
    tr = dccomp.Trainer(tiny_data, batch_size=8, max_batches=3)
    c = dccomp.compile(tiny_mlp, "prune{sparsity=0.5},retrain{epochs=2}", trainer=tr)
    assert c.records["retrain#2"]["steps"] == 6
    tr = dccomp.Trainer(tiny_data, batch_size=8)
    c = dccomp.compile(tiny_mlp, "retrain{epochs=0.5}", trainer=tr)
    assert c.records["retrain#1"]["steps"] == 4


def test_retrain_records_eval_accuracy(tiny_mlp, tiny_data):
    c = dccomp.compile(tiny_mlp, "retrain{epochs=1}", train_data=tiny_data, eval_data=tiny_data)
    rec = c.records["retrain#1"]
    assert 0.0 <= rec["eval_accuracy"] <= 1.0 and rec["eval_n"] == 64


@pytest.mark.parametrize("text, match", [
    ("retrain{optimizer=rmsprop}", "optimizer must be sgd, adam or adamw, got 'rmsprop'"),
    ("retrain{lr=0}", "lr must be a number > 0"),
    ("retrain{epochs=-1}", "epochs must be a number >= 0"),
])
def test_option_errors_from_pipeline_text(text, match):
    with pytest.raises(dccomp.PassError, match=match):
        dccomp.parse_pipeline(text)


@pytest.mark.parametrize("pipeline", ["prune{sparsity=0.5},retrain{lr=0.1}", "cluster{bits=2},retrain{lr=0.1}",
                                      "prune{sparsity=0.5},cluster{bits=2},retrain{lr=0.1}"])
def test_frozen_layer_is_retrained_around_not_through(tiny_mlp, tiny_data, pipeline, check_ir):
    """A layer the user froze (requires_grad=False) stays frozen: retrain neither crashes (no gradient hook on a
    tensor without grad) nor trains its weights or centroids, and the flag survives the pass."""
    tiny_mlp.fc1.weight.requires_grad_(False)
    before = dccomp.compile(tiny_mlp, pipeline.rsplit(",", 1)[0]).ir
    c = dccomp.compile(tiny_mlp, pipeline, train_data=tiny_data, verify=True)
    check_ir(c.ir)
    assert torch.equal(c.ir.param("fc1.weight"), before.param("fc1.weight"))
    assert not c.ir.param("fc1.weight").requires_grad
    assert not torch.equal(c.ir.param("fc2.weight"), before.param("fc2.weight"))
    assert c.ir.param("fc2.weight").requires_grad


def test_fully_frozen_model_is_a_clear_error(tiny_mlp, tiny_data):
    for p in tiny_mlp.parameters():
        p.requires_grad_(False)
    with pytest.raises(dccomp.PassError, match="nothing to train"):
        dccomp.compile(tiny_mlp, "prune{sparsity=0.5},retrain", train_data=tiny_data)

