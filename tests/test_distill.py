"""Tests of retraining without labels: ``retrain{distill=...}`` against a frozen copy of the input model."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import dccomp
from dccomp import PassContext, PassManager
from dccomp.distill import agreement_kl, distill_loss
from dccomp.passes.retrain import Retrain

pytestmark = pytest.mark.usefixtures("always_verify", "one_thread")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


class _Inputs(Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


RETRAIN = "retrain{{distill=1,distill_loss={loss},epochs=4,lr=0.003,optimizer=adam,weight_decay=0}}"


@pytest.mark.parametrize("loss", ["kl", "mse"])
@pytest.mark.parametrize("form", ["tensor", "dataset", "loader"])
def test_unlabelled_distillation_lowers_divergence(loss, form):
    model = _mlp()
    g = torch.Generator().manual_seed(1)
    x, x_eval = torch.randn(1024, 20, generator=g), torch.randn(512, 20, generator=g)
    data = {"tensor": x, "dataset": _Inputs(x), "loader": DataLoader(_Inputs(x), batch_size=64, shuffle=True)}[form]
    pruned = dccomp.compile(model, "prune{sparsity=0.8}")
    distilled = dccomp.compile(model, "prune{sparsity=0.8}," + RETRAIN.format(loss=loss), train_data=data,
                               eval_data=x_eval)
    for w in distilled.ir:  # masks exactly as pruned, pruned entries exactly 0
        assert torch.equal(w.mask, pruned.ir.weights[w.name].mask)
        assert torch.count_nonzero(distilled.ir.param(w.name)[~w.mask]) == 0
    before, after = agreement_kl(pruned, model, x_eval), agreement_kl(distilled, model, x_eval)
    with torch.no_grad():
        mse_before = float(nn.functional.mse_loss(pruned.eval()(x_eval), model(x_eval)))
        mse_after = float(nn.functional.mse_loss(distilled.eval()(x_eval), model(x_eval)))
    assert after["kl"] < before["kl"] and mse_after < mse_before  # both fall, the trained one by half or more
    assert (after["kl"] < 0.5 * before["kl"]) if loss == "kl" else (mse_after < 0.5 * mse_before)
    assert after["agreement"] > before["agreement"]
    rec = distilled.records["retrain#2"]
    if loss == "kl":
        assert rec["eval_kl"] == pytest.approx(after["kl"], rel=1e-4, abs=1e-7)
        assert rec["eval_agreement"] == after["agreement"]
    else:  # embeddings / raw outputs: cosine and mse, not top-1
        assert rec["eval_mse"] == pytest.approx(mse_after, rel=1e-4)
        assert 0.5 < rec["eval_cosine"] <= 1.0 + 1e-6


class _KeywordEncoder(nn.Module):
    """A tiny encoder called like a Hugging Face model: keyword inputs, a dict out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.fc(self.emb(input_ids))) * attention_mask[..., None]
        return {"last_hidden_state": h, "logits": self.head(h.sum(1))}


def _keyword_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(6)[None] < torch.randint(2, 7, (n, 1), generator=g)).long()
    return {"input_ids": torch.randint(0, 40, (n, 6), generator=g), "attention_mask": mask}


@pytest.mark.parametrize("form", ["dict", "batches"])
def test_distillation_with_keyword_inputs_and_dict_outputs(form):
    """Models called as model(**batch) and returning dicts (Hugging Face style) distil without labels."""
    model = _KeywordEncoder().eval()
    train, ev = _keyword_data(512, 1), _keyword_data(128, 2)
    data = train if form == "dict" else [{k: v[i:i + 64] for k, v in train.items()} for i in range(0, 512, 64)]
    kw = dict(example_kwargs=_keyword_data(2, 3), capture="export")
    pipe = "prune{sparsity=0.7}"
    base = dccomp.compile(model, pipe, **kw)
    out = dccomp.compile(model, pipe + ",retrain{distill=1,distill_loss=mse,distill_output=last_hidden_state,"
                         "epochs=15,lr=0.01,optimizer=adam,weight_decay=0}", train_data=data, eval_data=ev, **kw)
    with torch.no_grad():
        ref = model(**ev)["last_hidden_state"]
        err = lambda m: float(nn.functional.mse_loss(m(**ev)["last_hidden_state"].detach(), ref))  # noqa: E731
        assert err(out) < 0.7 * err(base)
    rec = out.records["retrain#2"]
    assert rec["eval_mse"] == pytest.approx(err(out), rel=1e-4) and rec["eval_cosine"] > 0.5
    for w in out.ir:  # masks held
        assert torch.equal(w.mask, base.ir.weights[w.name].mask)


def test_distill_output_errors_name_the_entries():
    model = _KeywordEncoder().eval()
    kw = dict(example_kwargs=_keyword_data(2, 3), capture="export")
    with pytest.raises(dccomp.PassError, match="last_hidden_state, logits"):
        dccomp.compile(model, "retrain{distill=1,distill_loss=mse,distill_output=pooler_output}",
                       train_data=_keyword_data(64, 1), **kw)


def test_teacher_is_the_model_before_the_pipeline_and_unchanged():
    model = _mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(256, 20)
    compiled = dccomp.compile(model, "prune{sparsity=0.9},cluster{bits=3},retrain{distill=1,epochs=2,lr=0.01}",
                              train_data=x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    for w in compiled.ir:  # centroid sharing kept: every surviving weight equals its centroid
        p = compiled.ir.param(w.name).detach()
        assert torch.equal(p[w.mask], w.codebook[w.indices[w.mask]])


def test_mixed_loss_needs_labels_and_uses_them():
    model = _mlp()
    x, y = torch.randn(256, 20), torch.randint(0, 10, (256,))
    out = dccomp.compile(model, "prune{sparsity=0.5},retrain{distill=0.5,epochs=1,temperature=4}", train_data=(x, y))
    assert out.records["retrain#2"]["steps"] == 2
    with pytest.raises(dccomp.PassError, match="no labels"):
        dccomp.compile(model, "retrain{distill=0.5,epochs=1}", train_data=x)
    with pytest.raises(dccomp.PassError, match="no labels"):
        dccomp.compile(model, "retrain{epochs=1}", train_data=x)


def test_teacher_needed_and_options_checked():
    ir = dccomp.trace(_mlp())
    trainer = dccomp.Trainer(torch.randn(32, 20))
    with pytest.raises(dccomp.PassError, match="needs a teacher"):
        PassManager("retrain{distill=1}").run(ir, PassContext(trainer=trainer))
    teacher = _mlp(1)
    out = PassManager("retrain{distill=1,epochs=1}").run(ir, PassContext(trainer=trainer, teacher=teacher))
    assert out is not ir
    for bad, why in (("distill=2", "alpha in"), ("distill_loss=l1", "kl, mse"), ("temperature=0", "> 0")):
        with pytest.raises(dccomp.PassError, match=why):
            dccomp.parse_pipeline(f"retrain{{{bad}}}")
    assert Retrain(distill=True).distill == 1.0 and not Retrain().needs_teacher


def test_distill_loss_values():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean()
    assert float(distill_loss(s, t)) == pytest.approx(float(kl), rel=1e-5)
    assert float(distill_loss(s, t, "mse")) == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        distill_loss(s, t[:, :4])


def test_freeze_bn_keeps_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(128, 20) * 3 + 1
    frozen = dccomp.compile(model, "retrain{distill=1,epochs=1,freeze_bn=true}", train_data=x)
    moved = dccomp.compile(model, "retrain{distill=1,epochs=1}", train_data=x)
    assert torch.equal(frozen.ir.gm.get_buffer("1.running_mean"), model[1].running_mean)
    assert not torch.equal(moved.ir.gm.get_buffer("1.running_mean"), model[1].running_mean)
