"""``dccomp`` command line: demo, compress, inspect, eval, build, passes.

Errors a user can fix (bad arguments, missing data, corrupt files) end with a one-line message and exit code 2.
Every command checks its arguments (pipeline text, output path, data, weights) before any work. Every command
takes ``--threads N`` (default 1 unless ``$OMP_NUM_THREADS`` is set; 0 = torch's default, one per physical core).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import dist

__all__ = ["main"]


def _fail(msg: str) -> None:
    print(f"dccomp: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _load_user_model(spec: str, data: str | None) -> Any:
    """``lenet-300-100`` / ``lenet-5`` or ``module:Class`` (a class taking no arguments)."""
    from .data import DATASETS
    from .models import MODELS, build_model

    if spec in MODELS:
        info = DATASETS[data or "fashion-mnist"]
        return build_model(spec, info.input_shape, info.num_classes)
    if ":" not in spec:
        _fail(f"model {spec!r} is neither a built-in ({', '.join(MODELS)}) nor 'module:Class'")
    mod_name, cls_name = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        _fail(f"cannot import {spec!r}: {e}")
    import torch

    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        _fail(f"{spec} is not a torch.nn.Module subclass; give 'module:Class' of your model's class")
    try:
        return cls()
    except TypeError as e:
        _fail(f"{spec} must be constructible without arguments: {e}")


def _names(keys: list[str], limit: int = 10) -> str:
    more = f" ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _fit_state(model: Any, state: Any, path: str) -> None:
    """Load ``state`` into ``model``, or fail naming the missing, unexpected and mis-shaped keys."""
    import torch

    if not isinstance(state, dict):
        _fail(f"weights {path!r} hold a {type(state).__name__}, not a state_dict of tensors: save them with "
              "torch.save(model.state_dict(), path)")
    other = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if other:
        _fail(f"weights {path!r} hold entries that are not tensors ({_names(other)}): save the weights alone "
              "with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing from the file: {_names(missing)}" if missing else "",
                 f"not in the model: {_names(unexpected)}" if unexpected else "",
                 f"shapes differ: {_names(shapes)}" if shapes else ""]
        hint = ("; the file's keys start with 'module.' (saved from DataParallel/DDP): save "
                "model.module.state_dict() instead" if unexpected and all(k.startswith("module.") for k in unexpected)
                else "; save the weights of this very class with torch.save(model.state_dict(), path)")
        _fail(f"weights {path!r} do not fit {type(model).__name__}: " + "; ".join(p for p in parts if p) + hint)
    model.load_state_dict(state)


def _load_weights(model: Any, path: str | None) -> None:
    if path is None:
        return
    import torch

    from . import load

    if not os.path.exists(path):
        _fail(f"weights file {path!r} does not exist")
    if path.endswith(".dcc"):
        load(path, model)
        return
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")  # never unpickle arbitrary objects
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if first.startswith("Weights only load failed"):  # torch's advice (weights_only=False) is unsafe here
            first = "it holds objects other than tensors, or is not a torch.save file"
        elif "load key" in first or first.isdigit() or "zip archive" in first or "magic number" in first:
            first = f"not a torch.save file ({type(e).__name__}: {first})"
        _fail(f"cannot read {path!r} as a state_dict: {first}. dccomp reads only tensors (torch.load with "
              "weights_only=True, never arbitrary pickled objects): save the weights with "
              "torch.save(model.state_dict(), path), or pass a .dcc file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    _fit_state(model, state, path)


def _check_json(args: argparse.Namespace) -> None:
    """Fail before any work if ``--json PATH`` cannot or must not be written: a directory, a special file, a
    missing folder, the path of another argument (input or output file), or an existing file that is not a
    ``.json`` file (or empty) without ``--force``."""
    path = getattr(args, "json", None)
    if path is None or path == "-":
        return
    p = Path(path)
    if p.is_dir():
        _fail(f"--json {path!r} is a directory; give a file path such as {os.path.join(path, 'results.json')}")
    if p.exists() and not p.is_file():
        _fail(f"--json {path!r} is not a regular file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        _fail(f"--json {path!r}: folder {str(parent)!r} does not exist; create it first")
    for opt in ("file", "out", "weights", "recipe", "dense"):
        other = getattr(args, opt, None)
        if isinstance(other, str) and (os.path.abspath(other) == os.path.abspath(path) or (
                p.exists() and os.path.exists(other) and os.path.samefile(other, path))):
            flag = opt if opt == "file" else f"--{opt}"
            _fail(f"--json {path!r} is also the {flag} file; write the JSON elsewhere")
    if p.is_file() and p.stat().st_size and p.suffix.lower() != ".json" and not getattr(args, "force", False):
        _fail(f"--json {path!r} exists and is not a .json file; refusing to replace it (give a .json path"
              + (", or --force)" if hasattr(args, "force") else ")"))


def _check_dump_dir(path: str | None) -> None:
    """Fail before any work if ``--dump-ir DIR`` names something that is not a folder."""
    if path and os.path.exists(path) and not os.path.isdir(path):
        _fail(f"--dump-ir {path!r} is a file; it takes a folder (created if missing) for the IR text files")


def _check_in(path: str, what: str = "file") -> None:
    """Fail before any work if the input ``path`` is missing or not a regular file."""
    if not os.path.exists(path):
        _fail(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        _fail(f"{what} {path!r} is not a regular file (a .dcc file is expected)")


def _check_out(path: str, force: bool = False) -> None:
    """Fail before any work if ``path`` cannot or must not be written (a directory, a device/FIFO/socket, a
    file that is not a .dcc file without --force, a missing or unwritable folder); see check_save_path."""
    from .format import check_save_path

    p = Path(path)
    if p.is_dir() or str(path).endswith(os.sep):
        _fail(f"--out {path!r} is a directory; give a file path such as {os.path.join(path, 'model.dcc')}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        _fail(f"--out {path!r}: folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        _fail(f"--out {path!r}: folder {str(parent)!r} is not writable")
    try:
        check_save_path(path, overwrite=force)
    except OSError as e:
        _fail(f"--out: {e}".replace("overwrite=True (CLI: --force)", "--force"))


def _parse_pipeline(text: str, have_data: bool, passes: list | None = None, recipe: str | None = None) -> list:
    """The pipeline's passes (``passes`` of ``recipe``, or parsed from ``text``) before any work; fails if a pass
    trains and no --data was given."""
    from .manager import resolve_passes

    passes = resolve_passes(text) if passes is None else passes
    trains = [f"'{p}'" for p in passes if p.needs_training_data()]
    if trains and not have_data:
        where = f"--recipe {recipe!r}" if recipe else f"--pipeline {text!r}"
        data = "--data (or 'data:' under the recipe's 'training:')" if recipe else "--data"
        _fail(f"{where}: {', '.join(trains)} retrains the model, which needs training data: add "
              f"{data} (fashion-mnist or digits), or remove the retraining passes (retrain, prune with steps>1 "
              "and epochs>0) from the pipeline")
    return passes


def _set_threads(n: int | None) -> None:
    """torch's intra-op threads: ``n`` (0: torch's default, one per physical core); by default 1 unless $OMP_NUM_THREADS
    is set. LeNet-sized layers gain little from threads, and on a busy shared machine extra threads cost much
    more (one user measured 98 s per epoch with the default against 21 s with one thread on 2 busy cores)."""
    import torch

    if n is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        n = 1
    if n == 0:  # torch's own choice, made at import: $OMP_NUM_THREADS or one per physical core
        return
    torch.set_num_threads(n)


def _check_model_runs(model: Any, shape: tuple[int, ...], spec: str, where: str) -> None:
    """Run ``model`` on one zero example of ``shape``; fail with the root cause if it does not accept it."""
    import torch

    was = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))  # eval: batch norm must not update its statistics here
    except Exception as e:  # the user's model raised: report its last line, not the traceback
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        _fail(f"model {spec} does not accept inputs of shape {tuple(shape)} ({where}): "
              f"{type(e).__name__}: {lines[-1].strip() if lines else ''}")
    finally:
        model.train(was)


def _shape(text: str) -> tuple[int, ...]:
    """argparse type for --input-shape: comma-separated positive ints, at most 10 M elements per example."""
    try:
        dims = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,28,28") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be >= 1")
    if math.prod(dims) > 10_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} has {math.prod(dims)} elements per example; the limit is 10 M")
    return dims


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return v


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0 (0: torch's default thread count)")
    return v


def _print_json(obj: Any, path: str | None) -> None:
    """Print ``obj`` as JSON, or write it to ``path`` atomically (a temporary file renamed over it)."""
    text = json.dumps(obj, indent=2, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o))
    if path in (None, "-"):
        print(text)
        return
    from .container import write_atomic

    write_atomic(path, [(text + "\n").encode()])


def _summary(r: dict[str, Any], json_path: str | None, dense_source: str) -> None:
    """Print (or write as JSON) a demo/compress result: IR, size table, size and time after each pass,
    accuracies (when measured) and the file's ratio. Exits 1 if the reloaded file's accuracy differs."""
    if json_path:
        _print_json({k: v for k, v in r.items() if k not in ("ir", "dense_model")}, json_path)
    if json_path != "-":
        print(r["ir"])
        print()
        print(r["report"])
        print()
        print("size after each pass (file bytes):")
        for (key, nbytes, ratio), (_, secs) in zip(r["stages"][1:], r["timing"]):
            rec = r["records"].get(key, {})
            acc = f"  acc {100 * rec['eval_accuracy']:.2f}%" if "eval_accuracy" in rec else ""
            print(f"  {key:<16} {nbytes:>9} B {ratio:>7.1f}x {secs:>7.1f} s{acc}")
        print()
        for key in (k for k in r["records"] if k.startswith("allocate#")):
            from .passes.allocate import format_allocation

            print(f"{key}:\n{format_allocation(r['records'][key])}\n")
    same = "not measured (no --data)"
    if r.get("dense_accuracy") is not None:
        same = "identical" if r["reloaded_accuracy"] == r["compressed_accuracy"] else "DIFFERENT"
        if json_path != "-":
            print(f"dense accuracy      {100 * r['dense_accuracy']:.2f}%  ({dense_source})")
            print(f"compressed accuracy {100 * r['compressed_accuracy']:.2f}%  (in memory)")
            print(f"reloaded accuracy   {100 * r['reloaded_accuracy']:.2f}%  (from {r['out']})")
    if json_path != "-" and r.get("ranks", 1) > 1:
        print(f"retrained data-parallel on {r['ranks']} ranks (torch.distributed)")
    if json_path != "-":
        print(f"file {r['out']}: {r['file_bytes']} bytes vs {r['dense_fp32_bytes']} dense float32 -> "
              f"{r['ratio']:.1f}x; reload accuracy {same}; {r['seconds']:.0f} s total")
    if same == "DIFFERENT":
        raise SystemExit(1)


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    out = a.out or f"{a.model}.dcc"
    _check_out(out, a.force)
    _parse_pipeline(a.pipeline, True)  # a typo fails now, not after training the dense baseline
    if dist.is_main():
        print(f"dccomp demo: {a.model} on {a.data}, pipeline {a.pipeline!r}", file=sys.stderr)
    main_rank = dist.is_main()  # under torch.distributed only rank 0 prints and writes files
    r = run_demo(a.model, a.data, pipeline=a.pipeline, out=out, data_root=a.data_root, seed=a.seed,
                 progress=not a.no_progress and main_rank, dense_epochs=a.dense_epochs,
                 dump_ir=a.dump_ir if main_rank else None, log=main_rank, overwrite=a.force)
    if not main_rank:
        return
    _summary(r, a.json, "cached baseline" if r["dense_from_cache"] else "trained baseline")
    if not a.no_plots:
        _demo_plots(r, a.json == "-")


def _demo_plots(r: dict[str, Any], quiet: bool) -> None:
    """Draw the demo file's pictures into ``<file stem>-plots/`` beside it, over the dense baseline; list them."""
    from .plot import available, plot_file

    if not available():
        print("plots: skipped (matplotlib is not installed: pip install 'dccomp[plot]', or --no-plots)",
              file=sys.stderr)
        return

    out = Path(r["out"])
    dense = r["dense_model"].state_dict() if r.get("dense_model") is not None else None
    files = plot_file(out, out.with_name(out.stem + "-plots"), dense=dense)
    if not quiet:
        print(f"plots ({len(files)} PNG files: per layer, weights/cluster indices/relative indices; summary):")
        for p in files:
            print(f"  {p}")


def cmd_compress(a: argparse.Namespace) -> None:
    import torch

    from . import compile, load, save
    from .data import DATASETS, get_dataset
    from .instruments import DumpIR, Progress, SizeTracker, StageLog, Timing
    from .recipe import TrainingSettings
    from .train import Trainer

    t0 = time.perf_counter()
    _check_out(a.out, a.force)
    if a.data and a.input_shape:
        _fail("give --data (its examples fix the input shape) or --input-shape, not both")
    recipe = _apply_recipe(a)
    passes = _parse_pipeline(a.pipeline, bool(a.data), recipe.passes if recipe else None, a.recipe)
    model = _load_user_model(a.model, a.data)
    if a.weights is None and not a.random_weights:
        _fail("no --weights given: dccomp would compress the model's random initial weights (a useless model). "
              "Pass --weights W.pt (torch.save(model.state_dict(), 'W.pt')) or a .dcc file; or --random-weights "
              "to compress the initial weights on purpose (tests, size estimates)")
    if a.weights is not None and a.random_weights:
        _fail("give --weights or --random-weights, not both")
    _load_weights(model, a.weights)
    trainer = None
    shape = None
    if a.data:
        t = recipe.training if recipe else TrainingSettings()
        trainer = Trainer(get_dataset(a.data, "train", a.data_root), get_dataset(a.data, "test", a.data_root),
                          batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, max_batches=t.max_batches)
        shape = DATASETS[a.data].input_shape
    elif a.input_shape:
        shape = a.input_shape
    if shape:
        _check_model_runs(model, shape, a.model, "--data" if a.data else "--input-shape")
    ex = torch.zeros(1, *shape) if shape else None
    dense_acc = trainer.evaluate(model)["accuracy"] if trainer else None
    sizes, timing = SizeTracker(), Timing()
    main_rank = dist.is_main()  # under torch.distributed only rank 0 prints and writes files
    instruments = [sizes, timing] + ([] if a.no_progress or not main_rank else [Progress()]) + (
        [DumpIR(a.dump_ir)] if a.dump_ir and main_rank else []) + ([StageLog()] if main_rank else [])
    compiled = compile(model, passes, example_inputs=ex, trainer=trainer, verify=a.verify,
                       instruments=instruments, seed=a.seed)
    if not main_rank:
        return
    nbytes = save(compiled, a.out, overwrite=a.force)
    r: dict[str, Any] = {"model": a.model, "data": a.data, "pipeline": a.pipeline, "recipe": a.recipe,
                         "dense_accuracy": dense_acc,
                         "compressed_accuracy": None, "reloaded_accuracy": None}
    if trainer:
        r["compressed_accuracy"] = trainer.evaluate(compiled)["accuracy"]
        fresh = _load_user_model(a.model, a.data)
        r["reloaded_accuracy"] = trainer.evaluate(load(a.out, fresh))["accuracy"]
    dense_bytes = compiled.ir.dense_nbytes()
    r.update({"file_bytes": nbytes, "dense_fp32_bytes": dense_bytes, "ratio": dense_bytes / nbytes,
              "report": compiled.report(), "stages": sizes.rows, "timing": timing.rows, "records": compiled.records,
              "out": a.out, "ir": str(compiled.ir), "seconds": time.perf_counter() - t0,
              "ranks": dist.world()[1]})
    _summary(r, a.json, f"{a.weights} as given" if a.weights else "random initial weights (--random-weights)")


def _apply_recipe(a: argparse.Namespace) -> Any:
    """Read ``--recipe`` (or check ``--pipeline``) and fill the arguments the command line left out from it:
    MODEL, --data/--data-root (unless --input-shape), --input-shape, --seed, --verify, and --pipeline (the
    recipe's pipeline text). Returns the recipe, or ``None`` without one."""
    from . import load_recipe

    if a.recipe and a.pipeline:
        _fail("give --pipeline or --recipe, not both")
    if not a.recipe:
        if not a.pipeline:
            _fail("give the passes: --pipeline TEXT (e.g. 'prune{sparsity=0.9},cluster{bits=5},huffman') or "
                  "--recipe FILE.yaml")
        a.seed, a.verify = a.seed or 0, bool(a.verify)
        if not a.model:
            _fail("give MODEL: lenet-300-100, lenet-5 or module:Class")
        return None
    recipe = load_recipe(a.recipe)
    t = recipe.training
    a.pipeline = recipe.pipeline_text()
    a.model = a.model or recipe.model
    if not a.model:
        _fail(f"give MODEL (lenet-300-100, lenet-5 or module:Class): recipe {a.recipe!r} names no model")
    if not a.input_shape:
        a.data = a.data or t.data
        a.input_shape = None if a.data else (tuple(t.input_shape) if t.input_shape else None)
    elif t.data and any(p.needs_training_data() for p in recipe.passes):
        _fail(f"--input-shape replaces the recipe's data set ({t.data}), but its pipeline trains: drop "
              "--input-shape to train on it (the data fixes the input shape), or give --data")
    a.data_root = a.data_root or t.data_root
    a.seed = t.seed if a.seed is None else a.seed
    a.verify = t.verify if a.verify is None else a.verify
    return recipe


def cmd_inspect(a: argparse.Namespace) -> None:
    from . import load

    f = load(a.file)
    sizes = {s.name: s.length for s in f.container.sections}
    rep = f.report()
    if a.json:
        _print_json({"model": f.meta.get("model"), "tensors": f.meta["tensors"], "report": rep}, a.json)
        return
    print(f"file {a.file}: model {f.meta.get('model')}, {len(f.names)} tensors, {f.file_size} bytes")
    for name in f.names:
        e = f.info(name)
        if e["role"] == "weight":
            m = e["meta"]
            cshape = e.get("codebook", {}).get("shape", ["-"])
            k = (f"{cshape[1]} codebooks={cshape[0]}" if isinstance(cshape, list) and len(cshape) == 2
                 else cshape[0])
            shape = ",".join(map(str, e["shape"]))
            nbytes = sum(sizes[f"{name}/{s}"] for s in e["streams"])
            print(f"  {name} {e['kind']} f32[{shape}] density={m['nnz'] / max(m['n'], 1):.4f} k={k} "
                  f"bits={e.get('bits', '-')} coded={nbytes}B({e['coder']}) index_bits={e['index_bits']}")
        else:
            shape = ",".join(map(str, e["array"]["shape"]))
            print(f"  {name} raw({e['reason']}) {e['array']['dtype']}[{shape}]")
    print()
    print(rep)


def cmd_eval(a: argparse.Namespace) -> None:
    from . import load
    from .data import DATASETS, get_dataset
    from .train import Trainer

    model = _load_user_model(a.model, a.data)
    try:
        load(a.file, model)
    except ValueError as e:
        raise ValueError(f"{e}; {a.model} is built for --data {a.data} ({DATASETS[a.data].input_shape} inputs): "
                         "check --model and --data") from e
    test = get_dataset(a.data, "test", a.data_root)
    _check_model_runs(model, DATASETS[a.data].input_shape, a.model,
                      f"the {a.data} test images; dccomp eval measures accuracy on a built-in data set, for other "
                      "inputs evaluate dccomp.load(file, model=...) in Python")
    res = Trainer(eval_data=test).evaluate(model)
    if a.json:
        _print_json(res, a.json)
    else:
        print(f"{a.file}: top-1 accuracy {100 * res['accuracy']:.2f}% on {res['n']} {a.data} test images")


def cmd_build(a: argparse.Namespace) -> None:
    import torch

    from . import load_compiled
    from .data import DATASETS
    from .registry import get_backend

    if a.data and a.input_shape:
        _fail("give --data (its examples fix the input shape) or --input-shape, not both")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        _fail(f"--out {a.out!r} is a file; build writes a folder (the .so library and its .json): give a folder")
    model = _load_user_model(a.model, a.data)
    shape = a.input_shape or DATASETS[a.data or "fashion-mnist"].input_shape
    _check_model_runs(model, shape, a.model, "--input-shape" if a.input_shape else
                      f"{a.data or 'fashion-mnist'} images; pass --input-shape for other inputs")
    ex = torch.zeros(a.batch, *shape)
    compiled = load_compiled(a.file, model, example_inputs=ex)  # the file's masks, codebooks and coded streams
    base = getattr(compiled.ir, "name", None) or "model"
    old = [str(Path(a.out) / f"{base}{ext}") for ext in (".so", ".json") if (Path(a.out) / f"{base}{ext}").exists()]
    if old and not a.force:
        _fail(f"--out {a.out!r} already holds an artifact ({', '.join(old)}); give another folder or --force to "
              "replace it")
    files = get_backend("tvm")().export(compiled.ir, a.out, target=a.target, example_inputs=ex)
    for p in files:
        print(p)


def cmd_plot(a: argparse.Namespace) -> None:
    from .plot import plot_file

    for what, path in (("file", a.file), ("--dense", a.dense)):
        if path is not None and not os.path.isfile(path):
            _fail(f"{what} {path!r} is not a file; give a .dcc file written by dccomp")
    for p in plot_file(a.file, a.out, dense=a.dense):
        print(p)


def cmd_passes(a: argparse.Namespace) -> None:
    from .passdoc import describe_options
    from .registry import available_backends, available_passes, get_pass, NamedPipeline

    names = available_passes()
    pipelines = [n for n in names if isinstance(get_pass(n), NamedPipeline)]
    print("passes (options: name, type, default, meaning):")
    for name in (n for n in names if n not in pipelines):
        obj = get_pass(name)
        doc = " ".join((obj.__doc__ or "").replace("``", "").strip().split("\n\n")[0].split())  # first paragraph
        print(f"{name:<18} {doc}")
        for o in describe_options(obj):
            print(f"    {o.name:<15} {o.type:<17} = {o.default:<9} {o.meaning or '(undocumented)'}")
    print("\nnamed pipelines (use the name as pipeline text):")
    for name in pipelines:
        obj = get_pass(name)
        print(f"{name:<18} {obj.doc}\n    = {obj.text}")
    print("\nbackends: " + ", ".join(available_backends()))


_NPROC_HELP = ("retrain data-parallel in N processes on this machine (runs itself under torchrun --standalone "
               "--nproc-per-node N; torch.distributed, gloo); or launch with torchrun yourself")


def _strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` option (what each torchrun rank runs)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .models import MODELS

    p = argparse.ArgumentParser(prog="dccomp", description="Deep Compression compiler for PyTorch models")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_nonneg, metavar="N",
                        help="torch CPU threads (default 1, or $OMP_NUM_THREADS when set; 0: torch's default, "
                             "one per physical core)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def data_args(sp, required=False, default=None):
        sp.add_argument("--data", choices=sorted(DATASETS), required=required, default=default)
        sp.add_argument("--data-root", help="folder of the data set's files (fashion-mnist: gzipped IDX); "
                                            "default $DCCOMP_FASHION_MNIST or /usr/share/datasets/fashion-mnist")

    d = sub.add_parser("demo", parents=[common], help="train, compress, save, reload and evaluate a LeNet on real data")
    d.add_argument("--model", choices=sorted(MODELS), default="lenet-300-100")
    data_args(d, default="fashion-mnist")
    d.add_argument("--pipeline", default="deep-compression", help="pipeline text or a named pipeline")
    d.add_argument("--out", help="output .dcc file (default: MODEL.dcc)")
    d.add_argument("--force", action="store_true", help="replace --out (and --json) even if it is not a .dcc (.json) file")
    d.add_argument("--dense-epochs", type=_positive, help="epochs for the dense baseline (default 10)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' for stdout)")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--dump-ir", metavar="DIR", help="write the IR text before and after each pass (NNN_pass.txt)")
    d.add_argument("--nproc", type=_positive, metavar="N", help=_NPROC_HELP)
    d.add_argument("--no-plots", action="store_true", help="do not draw the PNGs (dccomp plot) next to the .dcc")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("compress", parents=[common], help="compress a model: built-in name or module:Class + weights")
    c.add_argument("model", nargs="?", help="lenet-300-100, lenet-5 or module:Class (default: the recipe's model)")
    c.add_argument("--weights", help="state_dict file (.pt, loaded with weights_only=True) or .dcc (required "
                                     "unless --random-weights)")
    c.add_argument("--random-weights", action="store_true", help="compress the model's random initial weights")
    data_args(c)
    c.add_argument("--input-shape", type=_shape, help="per-example input shape, e.g. 1,28,28 (when no --data)")
    c.add_argument("--pipeline", help="pipeline text or a named pipeline (or give --recipe)")
    c.add_argument("--recipe", metavar="FILE.yaml", help="recipe: pipeline with per-layer options and training "
                                                          "settings; arguments given here override its settings")
    c.add_argument("--out", required=True)
    c.add_argument("--force", action="store_true", help="replace --out (and --json) even if it is not a .dcc (.json) file")
    c.add_argument("--verify", action="store_true", default=None)
    c.add_argument("--seed", type=int, help="base random seed (default 0, or the recipe's)")
    c.add_argument("--json", metavar="PATH")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--dump-ir", metavar="DIR", help="write the IR text before and after each pass (NNN_pass.txt)")
    c.add_argument("--nproc", type=_positive, metavar="N", help=_NPROC_HELP)
    c.set_defaults(func=cmd_compress)

    i = sub.add_parser("inspect", parents=[common], help="show a .dcc file's tensors and size table")
    i.add_argument("file")
    i.add_argument("--json", metavar="PATH")
    i.set_defaults(func=cmd_inspect)

    e = sub.add_parser("eval", parents=[common], help="evaluate a .dcc file's top-1 accuracy")
    e.add_argument("file")
    e.add_argument("--model", required=True, help="lenet-300-100, lenet-5 or module:Class")
    data_args(e, default="fashion-mnist")
    e.add_argument("--json", metavar="PATH")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("build", parents=[common], help="generate deployable code for a target with the TVM backend")
    b.add_argument("file")
    b.add_argument("--model", required=True)
    b.add_argument("--target", default="llvm", help="llvm, arm_cpu, cuda, mali")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--force", action="store_true", help="replace an artifact of the same model already in --out")
    b.add_argument("--batch", type=_positive, default=1)
    data_args(b)
    b.add_argument("--input-shape", type=_shape, help="per-example input shape, e.g. 3,32,32 (default: the "
                                                      "--data set's, fashion-mnist when neither is given)")
    b.set_defaults(func=cmd_build)

    pl = sub.add_parser("plot", parents=[common], help="draw a .dcc file's weight, cluster-index and "
                        "relative-index distributions per layer, and bits/ratio per layer (PNG; dccomp[plot])")
    pl.add_argument("file")
    pl.add_argument("--out", required=True, help="output folder (created if missing)")
    pl.add_argument("--dense", metavar="F.dcc", help="dense baseline file: its weight distributions are drawn "
                                                    "under the compressed ones (before/after)")
    pl.set_defaults(func=cmd_plot)

    ps = sub.add_parser("passes", parents=[common], help="list registered passes, pipelines and backends")
    ps.set_defaults(func=cmd_passes)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dccomp`` console script."""
    from .data import DatasetNotFoundError
    from .errors import DccompError

    args = build_parser().parse_args(argv)
    _set_threads(args.threads)
    _check_json(args)
    _check_dump_dir(getattr(args, "dump_ir", None))
    if isinstance(getattr(args, "file", None), str):
        _check_in(args.file)
    nproc = getattr(args, "nproc", None)
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:  # launch the ranks; each runs without --nproc
        raise SystemExit(dist.launch(nproc, _strip_nproc(sys.argv[1:] if argv is None else argv)))
    try:
        dist.init_from_env()  # under torchrun (WORLD_SIZE > 1): join the process group
        args.func(args)
        if dist.active():  # rank 0 writes and reports while the others are done: leave the group together
            import torch

            torch.distributed.barrier()
    except BrokenPipeError:  # `dccomp inspect f.dcc | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except DatasetNotFoundError as e:
        _fail(str(e))
    except (DccompError, OSError, ValueError) as e:
        _fail(f"{type(e).__name__}: {e}")
    except ImportError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        print("dccomp: interrupted (no file was left half-written)", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if dist.active():
            import torch

            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
