"""Retraining on torch.distributed: 2 CPU ranks (gloo) on the digits data against a one-process run.

Checks: weights, masks, codebooks and cluster indices bit-identical on both ranks; masks equal to the one-process
run's; weights and centroids within a small tolerance of it (same global batches; only the floating-point
summation order differs); accuracy sane; the CLI's ``--nproc 2`` writes one file and prints once.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import dccomp
from dccomp import dist
from dccomp.data import get_dataset
from dccomp.models import LeNet300100

PIPELINE = ("prune{sparsity=0.8,steps=2,epochs=1,lr=0.05},retrain{epochs=1,lr=0.05},cluster{bits=4},"
            "retrain{epochs=1,lr=0.02,optimizer=adam}")


def _run(out_path: str | None) -> dict:
    """The pipeline on digits; returns each weight's state and the final accuracy."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LeNet300100(in_features=64)
    trainer = dccomp.Trainer(get_dataset("digits", "train"), get_dataset("digits", "test"), batch_size=64)
    c = dccomp.compile(model, PIPELINE, example_inputs=torch.zeros(1, 1, 8, 8), trainer=trainer)
    state = {w.name: {"weight": c.ir.param(w.name).detach().clone(), "mask": w.mask, "codebook": w.codebook,
                      "indices": w.indices} for w in c.ir.weights.values()}
    state["bias"] = {n: p.detach().clone() for n, p in c.ir.gm.named_parameters() if n.endswith("bias")}
    res = {"state": state, "accuracy": trainer.evaluate(c)["accuracy"], "records": c.records,
           "world": dist.world(), "batches": _fit_on_batches(), "batchnorm": _fit_on_batches(batchnorm=True)}
    if out_path:
        torch.save(res, out_path)
    return res


def _fit_on_batches(batchnorm: bool = False) -> dict[str, torch.Tensor]:
    """Trainer.fit on a plain list of (x, y) batches (each batch cut per rank; sizes 16, ..., 16, 5); with
    ``batchnorm`` the model has a BatchNorm1d (statistics per shard, taken from rank 0 after each step)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(85, 12, generator=g), torch.randint(0, 3, (85,), generator=g)
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16) if batchnorm else torch.nn.Identity(),
                            torch.nn.ReLU(), torch.nn.Linear(16, 3))
    dccomp.Trainer([(x[i:i + 16], y[i:i + 16]) for i in range(0, 85, 16)]).fit(m, m.parameters(), epochs=2, lr=0.1)
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _worker(rank: int, world_size: int, folder: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                         world_size=world_size)
    try:
        _run(os.path.join(folder, f"rank{rank}.pt"))
        try:  # the replication check can fail: a tensor that differs between the ranks
            dist.check_replicated({"same": torch.ones(3), "differs": torch.full((3,), float(rank))})
            msg = "no error"
        except RuntimeError as e:
            msg = str(e)
        with open(os.path.join(folder, f"check{rank}.txt"), "w") as fh:
            fh.write(msg)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(2, folder), nprocs=2, join=True)
    ranks = [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    for r in range(2):
        with open(os.path.join(folder, f"check{r}.txt")) as fh:
            ranks[r]["check"] = fh.read()
    return ranks, _run(None)


def test_ranks_hold_identical_weights_masks_and_codebooks(runs):
    (r0, r1), _ = runs
    assert r0["world"] == (0, 2) and r1["world"] == (1, 2)
    for name, s0 in r0["state"].items():
        if name == "bias":
            for b, t in s0.items():
                assert torch.equal(t, r1["state"]["bias"][b]), b
            continue
        for key in ("weight", "mask", "codebook", "indices"):
            assert torch.equal(s0[key], r1["state"][name][key]), f"{name} {key} differs between ranks"
    assert r0["accuracy"] == r1["accuracy"]
    for r in (r0, r1):
        assert "differs differ between ranks" in r["check"] and "same" not in r["check"].split("differ")[0]
    for key in ("batches", "batchnorm"):
        for k, v in r0[key].items():
            assert torch.equal(v, r1[key][k]), k
    assert int(r0["batchnorm"]["1.num_batches_tracked"]) == 12  # 2 epochs x 6 batches


def test_distributed_equals_one_process_within_tolerance(runs):
    (r0, _), one = runs
    assert one["world"] == (0, 1)
    for name, s in one["state"].items():
        if name == "bias":
            for b, t in s.items():
                torch.testing.assert_close(r0["state"]["bias"][b], t, atol=2e-4, rtol=1e-3)
            continue
        d = r0["state"][name]
        assert torch.equal(d["mask"], s["mask"]), f"{name}: masks differ from the one-process run"
        assert torch.count_nonzero(d["weight"][~d["mask"]]) == 0
        assert torch.equal(d["weight"], d["codebook"][d["indices"]] * d["mask"])
        torch.testing.assert_close(d["codebook"], s["codebook"], atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(d["weight"], s["weight"], atol=2e-4, rtol=1e-3)
    # the same number of steps (same global batches), the same accuracy up to a few borderline examples
    for key, rec in one["records"].items():
        if "steps" in rec:
            assert r0["records"][key]["steps"] == rec["steps"], key
        if "loss" in rec:  # the mean training loss of the last epoch, over the global batches
            assert abs(r0["records"][key]["loss"] - rec["loss"]) < 1e-4, key
    for k, v in one["batches"].items():  # data given as a list of batches: each batch cut per rank
        torch.testing.assert_close(r0["batches"][k], v, atol=1e-5, rtol=1e-4)
    assert r0["accuracy"] > 0.8 and one["accuracy"] > 0.8
    assert abs(r0["accuracy"] - one["accuracy"]) <= 0.01


def test_global_batch_sampler_shards_the_one_process_batches():
    data = torch.utils.data.TensorDataset(torch.arange(103))
    one = [b[0].tolist() for b in torch.utils.data.DataLoader(data, 16, shuffle=True,
                                                              generator=torch.Generator().manual_seed(7))]
    shards = []
    for r in range(3):
        loader = torch.utils.data.DataLoader(data, 16, shuffle=True, generator=torch.Generator().manual_seed(7))
        sampler = dist.GlobalBatchSampler(loader.batch_sampler, r, 3)
        shards.append([b[0].tolist() for b in torch.utils.data.DataLoader(data, batch_sampler=sampler,
                                                                          generator=loader.generator)])
        assert len(sampler) == len(one) == len(shards[-1])  # 103 % 16 = 7 >= 3 ranks: last batch kept
    for b, batch in enumerate(one):
        assert sum((s[b] for s in shards), []) == batch
        assert max(len(s[b]) for s in shards) - min(len(s[b]) for s in shards) <= 1
    small = torch.utils.data.BatchSampler(range(10), 3, drop_last=False)
    assert [len(b) for b in dist.GlobalBatchSampler(small, 0, 2)] == [2, 2, 2]  # the last batch (1) is dropped
    with pytest.raises(ValueError, match="smaller than the 4 ranks"):
        dist.GlobalBatchSampler(small, 0, 4)


def test_cli_nproc_runs_torchrun_and_only_rank0_writes(tmp_path):
    out = tmp_path / "m.dcc"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pipeline = "prune{sparsity=0.9},retrain{epochs=0.5,lr=0.05},cluster{bits=4}"
    r = subprocess.run([sys.executable, "-m", "dccomp.cli", "compress", "lenet-300-100", "--random-weights",
                        "--data", "digits", "--pipeline", pipeline, "--out", str(out), "--no-progress", "--nproc", "2"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    # torchrun's summary hides the rank's own error: show the lines that name it first
    why = [ln for ln in r.stderr.splitlines() if any(w in ln for w in ("Error", "terminate", "what()", "gloo"))]
    assert r.returncode == 0, "\n".join(why[:20]) + "\n...\n" + r.stderr[-1500:]
    assert out.exists() and [p.name for p in tmp_path.iterdir() if p.suffix == ".dcc"] == ["m.dcc"]
    assert r.stdout.count("reload accuracy identical") == 1, r.stdout[-2000:]
    assert "2 ranks" in r.stdout
