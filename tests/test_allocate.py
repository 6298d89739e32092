"""``allocate`` (issue #11): per-layer sparsity/bits for an accuracy budget, checked on held-out data.

Digits MLP (scikit-learn's bundled 8x8 digits), dense model trained on the training part of the same
:func:`holdout_split` the pass uses, so the budget check is on examples neither the dense model, the sensitivity
analysis nor the retraining saw."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.data import Subset

import dccomp
from dccomp.data import get_dataset
from dccomp.errors import PassError
from dccomp.format import file_nbytes
from dccomp.pipeline import parse_pipeline, print_pipeline
from dccomp.sensitivity import LayerCurve, Point, Sensitivity, analyze
from dccomp.passes.allocate import DROP_EPS, Allocate, holdout_split, plan_allocation

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")


@pytest.fixture(scope="module")
def digits():
    """(train, test, dense MLP trained on the 90% training part of holdout_split(seed=0))."""
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    tr_idx, _ = holdout_split(len(train), 0.2, 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(Subset(train, tr_idx.tolist()), batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for _ in range(10):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return train, test, model.eval()


FAST = ("sparsities=[0.0,0.5,0.8,0.9,0.95],bits=[2,3,4,6],steps=2,prune_epochs=1,epochs=4,cluster_epochs=2,"
        "lr=0.01,val_fraction=0.2")


def test_budget_respected_on_held_out_data(digits, check_ir, tmp_path, monkeypatch):
    monkeypatch.setenv("DCCOMP_CACHE", str(tmp_path))
    train, test, model = digits
    c = dccomp.compile(model, f"allocate{{budget=2.0,recovery=1,{FAST}}},huffman",
                       example_inputs=torch.zeros(1, 1, 8, 8), train_data=train, eval_data=test, seed=0)
    check_ir(c.ir)
    rec = c.records["allocate#1"]
    assert rec["budget_met"]
    chosen = rec["attempts"][rec["chosen"]]
    assert chosen["val_drop_points"] <= 2.0
    # the recorded validation accuracy is the returned model's, measured again here on the same split
    _, val_idx = holdout_split(len(train), 0.2, 0)
    val = dccomp.Trainer(eval_data=Subset(train, val_idx.tolist())).evaluate(c)["accuracy"]
    assert val == pytest.approx(chosen["val_accuracy"])
    assert 100 * (rec["dense_val_accuracy"] - val) <= 2.0
    # the plan was applied: each layer's density and codebook size are the chosen ones
    for name, (s, b) in chosen["choices"].items():
        w = c.ir.weights[name]
        assert abs(float(w.mask.float().mean()) - (1 - s)) <= 1 / w.mask.numel() + 1e-9
        assert w.k <= 2 ** b
    assert "test_accuracy" in chosen and "top-1 (%) vs sparsity" in rec["sensitivity_table"]
    assert c.ir.dense_nbytes() / file_nbytes(c.ir) > 3


def test_chosen_size_monotone_in_budget(digits):
    train, _, model = digits
    ir = dccomp.trace(model, torch.zeros(1, 1, 8, 8))
    sens = analyze(ir, train, sparsities=[0.0, 0.5, 0.8, 0.9, 0.95, 0.98], bits=[2, 3, 4, 6], cache=False)
    sizes = [plan_allocation(sens, 20 * b).bytes for b in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > sizes[-1]  # the budget matters on this model
    tight = plan_allocation(sens, 0.0)
    assert tight.drop <= 1e-9 or not tight.feasible


def _synthetic(drops: list[list[tuple[float, float]]]) -> Sensitivity:
    layers = {}
    for i, opts in enumerate(drops):
        c = LayerCurve(f"l{i}", "linear", 100)
        c.points = [Point(j / 10, 4, 1.0 - d / 100, cost) for j, (d, cost) in enumerate(opts)]
        layers[c.name] = c
    return Sensitivity(1.0, layers, {"sparsities": [], "bits": [4]})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(0, 10), st.floats(1, 1000)), min_size=1, max_size=5),
                min_size=1, max_size=3),
       st.floats(0, 20), st.floats(0, 20))
def test_plan_is_the_exact_optimum_and_monotone(drops, t1, t2):
    """Against brute force over every combination; and a larger tolerance never gives more bytes."""
    import itertools

    sens = _synthetic(drops)
    lo, hi = sorted((t1, t2))
    p = plan_allocation(sens, lo)
    combos = [(sum(d for d, _ in c), sum(x for _, x in c)) for c in itertools.product(*drops)]
    fits = [x for d, x in combos if d <= lo + DROP_EPS / 2]  # clearly within (drops round-trip accuracies)
    near = [x for d, x in combos if d <= lo + 2 * DROP_EPS]
    if fits:
        assert p.feasible and p.drop <= lo + DROP_EPS and min(near) - 1e-6 <= p.bytes <= min(fits) + 1e-6
    elif not near:
        assert not p.feasible and p.drop == pytest.approx(min(d for d, _ in combos))
    assert plan_allocation(sens, hi).bytes <= p.bytes + 1e-6


def test_options_checked_and_pipeline_round_trip():
    text = print_pipeline(parse_pipeline("deep-compression-auto"))
    assert text.startswith("allocate") and print_pipeline(parse_pipeline(text)) == text
    t = "allocate{budget=0.2,sparsities=[0.5,0.9],bits=[3,4],distill=0.5}"
    assert print_pipeline(parse_pipeline(t)) == t
    assert parse_pipeline(t)[0].needs_teacher
    for bad in ("allocate{budget=-1}", "allocate{val_fraction=1.5}", "allocate{attempts=0}",
                "allocate{init=nope}", "allocate{bits=[]}"):
        with pytest.raises(PassError):
            parse_pipeline(bad)
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(10, 0.0, 0)


def test_needs_splittable_training_data(digits):
    _, _, model = digits
    with pytest.raises(PassError, match="training data"):
        dccomp.compile(model, "allocate", example_inputs=torch.zeros(1, 1, 8, 8))
    batches = [(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(PassError, match="Dataset with a length"):
        dccomp.compile(model, "allocate", example_inputs=torch.zeros(1, 1, 8, 8), train_data=iter(batches))


def test_model_without_compressible_weights_is_refused():
    model = nn.Sequential(nn.ReLU())
    with pytest.raises(PassError, match="no compressible weight"):
        dccomp.compile(model, "allocate", example_inputs=torch.zeros(1, 4), train_data=(torch.zeros(8, 4),
                                                                                     torch.zeros(8).long()))
