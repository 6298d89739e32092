"""The main job, top to bottom: dense baseline -> Deep Compression pipeline -> ``.dcc`` file -> reload -> evaluate.

Used by ``dccomp demo`` and ``bench/compression.py``. Prints nothing itself; returns a result dict.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import dist
from .compiler import compile
from .data import DATASETS, get_dataset
from .format import check_save_path, load, save
from .instruments import DumpIR, Progress, SizeTracker, StageLog, Timing
from .manager import resolve_passes
from .models import build_model
from .train import Trainer

__all__ = ["cache_dir", "dense_baseline", "run_demo", "DENSE_RECIPE"]

#: dense training recipe (SGD + momentum; the paper's LeNets were trained with Caffe's SGD).
DENSE_RECIPE = {"epochs": 10, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
                "schedule": "cosine"}


def cache_dir() -> Path:
    """``$DCCOMP_CACHE`` or ``$XDG_CACHE_HOME/dccomp`` or ``~/.cache/dccomp``."""
    root = os.environ.get("DCCOMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dccomp")
    return Path(root)


def dense_baseline(model_name: str, data: str, trainer: Trainer, *, seed: int = 0, epochs: int | None = None,
                   progress: Callable | None = None) -> tuple[nn.Module, bool]:
    """The trained dense model, from the cache when present (stored as a ``.dcc`` file: no pickle).

    Returns ``(model, from_cache)``. The cache key covers the model, data set, recipe and seed.
    """
    info = DATASETS[data]
    torch.manual_seed(seed)  # the initial weights too: the same seed gives the same dense model
    model = build_model(model_name, info.input_shape, info.num_classes)
    recipe = dict(DENSE_RECIPE, epochs=epochs or DENSE_RECIPE["epochs"])
    key = hashlib.sha256(repr((model_name, data, sorted(recipe.items()), seed)).encode()).hexdigest()[:12]
    path = cache_dir() / f"dense-{model_name}-{data}-{key}.dcc"
    loaded = False
    if path.exists():
        try:
            loaded = load(path, model) is model
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # a corrupt cache is rebuilt, never trusted
    # under torch.distributed the ranks train together unless every one read the cache (no shared file system)
    if dist.all_reduce_sum([float(loaded)])[0] == dist.world()[1]:
        return model, True
    torch.manual_seed(seed)
    trainer.fit(model, model.parameters(), epochs=recipe["epochs"], lr=recipe["lr"], momentum=recipe["momentum"],
                weight_decay=recipe["weight_decay"], progress=progress, seed=seed, schedule=recipe["schedule"])
    model.eval()
    if dist.is_main():  # under torch.distributed the ranks trained identical copies: rank 0 writes the cache
        path.parent.mkdir(parents=True, exist_ok=True)
        save(compile(model, [], example_inputs=torch.zeros(1, *info.input_shape)), path)
    return model, False


def run_demo(model_name: str = "lenet-300-100", data: str = "fashion-mnist", *, pipeline: str = "deep-compression",
             out: str | os.PathLike = "lenet-300-100.dcc", data_root: str | None = None, seed: int = 0,
             progress: bool = True, dense_epochs: int | None = None, verify: bool = True,
             dump_ir: str | os.PathLike | None = None, log: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole Deep Compression job and return its measurements.

    Returns:
        dict with ``dense_accuracy``, ``compressed_accuracy`` (in memory), ``reloaded_accuracy`` (from the file),
        ``file_bytes``, ``ratio``, ``report`` (SizeReport), ``stages`` (file size after each pass), ``timing``,
        ``records`` (per-pass measurements), ``out`` (path), ``dense_model`` (the dense baseline module).
        ``dump_ir``: folder for the IR text after each pass; ``log``: one line per pass on stderr;
        ``overwrite``: see :func:`dccomp.save`. Under ``torch.distributed`` every rank retrains its shard
        (:mod:`dccomp.dist`) and only rank 0 writes files; the other ranks return only ``compressed_accuracy``.

    Raises:
        DatasetNotFoundError: the data set is not installed (message gives the install command).
        PipelineSyntaxError, RegistryError, PassError: a bad ``pipeline``, raised before any training.
        FileExistsError, IsADirectoryError, FileNotFoundError: ``out`` cannot be written (checked first).
    """
    passes = resolve_passes(pipeline)  # a typo fails here, before the dense baseline trains
    check_save_path(out, overwrite=overwrite)
    info = DATASETS[data]
    train = get_dataset(data, "train", data_root)
    test = get_dataset(data, "test", data_root)
    trainer = Trainer(train, test, batch_size=DENSE_RECIPE["batch_size"])
    bar = Progress()
    t0 = time.perf_counter()
    if log:
        print(f"[dccomp] dense baseline {model_name} on {data}: loading from the cache or training "
              f"({dense_epochs or DENSE_RECIPE['epochs']} epochs)", file=sys.stderr, flush=True)
    dense, cached = dense_baseline(model_name, data, trainer, seed=seed, epochs=dense_epochs,
                                   progress=bar.progress if progress else None)
    dense_acc = trainer.evaluate(dense)["accuracy"]
    t_dense = time.perf_counter() - t0
    sizes, timing = SizeTracker(), Timing()
    instruments = [sizes, timing] + ([bar] if progress else []) + ([DumpIR(dump_ir)] if dump_ir else [])
    instruments += [StageLog()] if log else []
    compiled = compile(dense, passes, example_inputs=torch.zeros(1, *info.input_shape), trainer=trainer,
                       verify=verify, instruments=instruments, seed=seed)
    comp_acc = trainer.evaluate(compiled)["accuracy"]
    if not dist.is_main():  # under torch.distributed only rank 0 writes the file
        return {"model": model_name, "data": data, "compressed_accuracy": comp_acc, "out": None}
    nbytes = save(compiled, out, overwrite=overwrite)
    fresh = build_model(model_name, info.input_shape, info.num_classes)
    reloaded = load(out, fresh)
    re_acc = trainer.evaluate(reloaded)["accuracy"]
    report = compiled.report()
    return {"model": model_name, "data": data, "pipeline": pipeline, "dense_accuracy": dense_acc,
            "dense_from_cache": cached, "dense_seconds": t_dense, "compressed_accuracy": comp_acc,
            "reloaded_accuracy": re_acc, "file_bytes": nbytes, "dense_fp32_bytes": compiled.ir.dense_nbytes(),
            "ratio": compiled.ir.dense_nbytes() / nbytes, "report": report, "stages": sizes.rows,
            "timing": timing.rows, "records": compiled.records, "out": str(out), "ir": str(compiled.ir),
            "seconds": time.perf_counter() - t0, "dense_model": dense, "ranks": dist.world()[1]}
