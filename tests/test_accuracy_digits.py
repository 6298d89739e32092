"""Accuracy invariant on real data (scikit-learn's bundled 8x8 digits): Deep Compression's prune -> retrain ->
cluster -> retrain keeps a small MLP within 2 points of its dense test accuracy (paper Tables 1-2: no loss)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dccomp
from dccomp.data import get_dataset

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")


@pytest.mark.slow
def test_digits_mlp_compressed_within_2_points_of_dense(check_ir):
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert len(train) == 1347 and len(test) == 450
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))  # 64-100-10 MLP
    trainer = dccomp.Trainer(train, test, batch_size=64)
    # dense training (plain SGD with momentum, no dccomp constraints involved)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for _ in range(10):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    dense_acc = trainer.evaluate(model)["accuracy"]
    assert dense_acc >= 0.93, f"dense baseline too weak to mean anything: {dense_acc:.3f}"

    c = dccomp.compile(model, "prune{sparsity=0.8},retrain{epochs=2,lr=0.01},cluster{bits=5},"
                              "retrain{epochs=1,lr=0.002}",
                       example_inputs=torch.zeros(1, 1, 8, 8), trainer=trainer, verify=True, seed=0)
    check_ir(c.ir)
    for w in c.ir:
        assert abs(float(w.mask.float().mean()) - 0.2) <= 1 / w.mask.numel()
        assert w.k <= 32
    acc = trainer.evaluate(c)["accuracy"]
    assert acc >= dense_acc - 0.02, f"compressed {acc:.4f} vs dense {dense_acc:.4f}"
    # the recorded eval accuracy of the last retrain is the compiled model's accuracy
    assert c.records["retrain#4"]["eval_accuracy"] == pytest.approx(acc)
    # sanity: the metric can tell a damaged model apart (97% pruning + 1-bit weights, no retraining)
    crude = dccomp.compile(model, "prune{sparsity=0.97},cluster{bits=1}")
    assert trainer.evaluate(crude)["accuracy"] < dense_acc - 0.02
