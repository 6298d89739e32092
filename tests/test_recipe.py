"""Recipes (issue #13, part 2): YAML pipeline + training settings, round trip with pipeline text, errors that
name the line and key, the shipped deep-compression recipes, ``compile(recipe=)``, ``compress --recipe`` and the
option listing of ``dccomp passes``."""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dccomp
from dccomp.cli import main
from dccomp.errors import PassError, RecipeError
from dccomp.models import build_model
from dccomp.passdoc import describe_options, type_text
from dccomp.pipeline import parse_pipeline, print_pipeline
from dccomp.recipe import Recipe, TrainingSettings, parse_recipe
from dccomp.registry import NamedPipeline, available_passes, get_pass, make_pass

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
PASS_CLASSES = {n: get_pass(n) for n in available_passes() if not isinstance(get_pass(n), NamedPipeline)}


# ------------------------------------------------------------------ round trip: pipeline text -> recipe -> text

def _words(cls: type) -> list[str]:
    """String values a pass's module spells out (choices such as INITS), plus a few layer patterns."""
    mod = sys.modules[cls.__module__]
    words = {"auto", "fc1", "conv.*", "linear", "fc[0-9]"}
    for v in vars(mod).values():
        if isinstance(v, (tuple, list, dict)) and v and all(isinstance(x, str) for x in v):
            words.update(v)
    return sorted(words)


def _values(tp: typing.Any, words: list[str]) -> st.SearchStrategy:
    """Values of the annotation ``tp`` (pass options: numbers, strings, None, ``{regex: value}``)."""
    args = typing.get_args(tp)
    if args and (typing.get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType"):
        return st.one_of([_values(t, words) for t in args])
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(0, 20)
    if tp is float:
        return st.one_of(st.floats(0, 1, allow_nan=False), st.floats(1e-6, 100), st.integers(0, 10))
    if tp is str:
        return st.one_of(st.sampled_from(words), st.text("abcfv.*_1", min_size=1, max_size=5))
    if typing.get_origin(tp) is dict:
        leaf = st.one_of(st.integers(1, 16), st.floats(0, 1, allow_nan=False), st.just("auto"))
        return st.dictionaries(st.sampled_from(["fc1", "fc.*", "conv.*", "linear", "fc[0-9]", "a b"]), leaf,
                               max_size=3)
    return st.nothing()


@st.composite
def a_pass(draw):
    """A registered pass with a random subset of valid options (a value the pass refuses is left out)."""
    name = draw(st.sampled_from(sorted(PASS_CLASSES)))
    cls = PASS_CLASSES[name]
    hints, words = typing.get_type_hints(cls), _words(cls)
    opts: dict = {}
    if name == "prune":  # prune needs sparsity or quality (or layers)
        opts["sparsity"] = draw(st.floats(0, 1, allow_nan=False))
    for f in dataclasses.fields(cls):
        if not draw(st.booleans()):
            continue
        value = draw(_values(hints[f.name], words))
        try:
            make_pass(name, {**opts, f.name: value})
        except PassError:
            continue
        opts[f.name] = value
    return make_pass(name, opts)[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(passes=st.lists(a_pass(), min_size=1, max_size=4), batch=st.integers(1, 512), seed=st.integers(-5, 99))
def test_pipeline_text_to_recipe_and_back_is_the_same_text(passes, batch, seed):
    text = print_pipeline(passes)
    assert print_pipeline(parse_pipeline(text)) == text
    recipe = Recipe.from_pipeline(text, batch_size=batch, seed=seed)
    back = parse_recipe(recipe.to_yaml(), "round-trip.yaml")
    assert back.pipeline_text() == text
    assert back.training == TrainingSettings(batch_size=batch, seed=seed)
    assert parse_recipe(back.to_yaml()).to_yaml() == recipe.to_yaml()


def test_pipeline_as_text_and_named_pipelines_in_a_recipe():
    r = parse_recipe('pipeline: "prune{sparsity=0.9},cluster{bits=4},huffman"\n')
    assert r.pipeline_text() == "prune{sparsity=0.9},cluster{bits=4},huffman"
    r = parse_recipe("pipeline:\n  - deep-compression\n")
    assert r.pipeline_text() == print_pipeline(parse_pipeline("deep-compression"))


# ------------------------------------------------------------------ shipped recipes

@pytest.mark.parametrize("model", ["lenet-300-100", "lenet-5"])
def test_shipped_recipes_hold_the_deep_compression_settings(model):
    r = dccomp.load_recipe(RECIPES / f"deep-compression-{model}.yaml")
    assert r.model == model and r.training.data == "fashion-mnist" and r.training.batch_size == 128
    assert r.pipeline_text() == print_pipeline(parse_pipeline("deep-compression"))
    assert [p.name for p in r.passes] == ["prune", "retrain", "cluster", "retrain", "huffman"]
    assert r.passes[2].layers == {"conv.*": 8}  # per-layer option: 8-bit conv layers


# ------------------------------------------------------------------ errors name the line and the key

ERRORS = [
    ("pipeline:\n  - prune: {sparsity: 0.9}\n  - cluster:\n      bits: 20\n", 4, "pipeline[1].cluster.bits",
     "bits must be an integer in [1, 16], got 20"),
    ("pipeline:\n  - prune:\n      layers:\n        fc1: 0.9\n        fc2: 1.5\n", 5, "pipeline[0].prune.layers.fc2",
     "got 1.5"),
    ("pipeline:\n  - cluster:\n      bitz: 4\n", 3, "pipeline[0].cluster.bitz", "has no option 'bitz'"),
    ("pipeline:\n  - huffman\n  - prun: {sparsity: 0.9}\n", 3, "pipeline[1].prun", "unknown pass 'prun'"),
    ("pipeline:\n  - cluster: {init: foo}\n", 2, "pipeline[0].cluster.init", "init must be one of"),
    ("training:\n  batch_size: -3\npipeline: [huffman]\n", 2, "training.batch_size", "positive integer"),
    ("training:\n  data: cifar\npipeline: [huffman]\n", 2, "training.data", "unknown data set 'cifar'"),
    ("training:\n  epochs: 3\npipeline: [huffman]\n", 2, "training.epochs", "options of the passes that train"),
    ("pipeline:\n  - cluster:\n      bits: 4\n      bits: 5\n", 4, "pipeline[0].cluster.bits", "given twice"),
    ("pipeline: 'prune{sparsity=2}'\n", 1, "pipeline", "sparsity must be a number in [0, 1]"),
    ("model: lenet-5\n", 1, "pipeline", "missing"),
    ("model: lenet-5\npipelines: []\n", 2, "pipelines", "unknown key"),
    ("pipeline:\n  - retrain: {evaluate: 3}\n", 2, "pipeline[0].retrain.evaluate", "must be bool"),
    ("pipeline:\n  - deep-compression: {bits: 3}\n", 2, "pipeline[0].deep-compression", "takes no options"),
    ("pipeline:\n  - {prune: {sparsity: 0.5}, huffman: null}\n", 2, "pipeline[0]", "one name"),
    ("pipeline:\n  - prune: {sparsity: 0.9\n  - huffman\n", 4, None, "not valid YAML"),
]


@pytest.mark.parametrize("text, line, key, msg", ERRORS)
def test_errors_name_the_line_and_the_key(text, line, key, msg):
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, "r.yaml")
    assert e.value.line == line and e.value.key == key, str(e.value)
    assert str(e.value).startswith(f"r.yaml:{line}: ") and msg in str(e.value)
    if key:
        assert f": {key}: " in str(e.value)


# ------------------------------------------------------------------ compile(recipe=) and compress --recipe

DIGITS_RECIPE = """\
model: lenet-300-100
training:
  data: digits
  batch_size: 32
  max_batches: 2
  seed: 3
pipeline:
  - prune:
      sparsity: 0.8
      layers: {fc3: 0.5}
  - retrain: {epochs: 1, lr: 0.01}
  - cluster: {bits: 4}
  - huffman
"""
DIGITS_PIPELINE = 'prune{sparsity=0.8,layers={"fc3":0.5}},retrain{lr=0.01},cluster{bits=4},huffman'


def test_compile_with_a_recipe_equals_the_same_settings_given_by_hand(tmp_path):
    from dccomp.data import get_dataset

    (tmp_path / "r.yaml").write_text(DIGITS_RECIPE)
    torch.manual_seed(0)
    model = build_model("lenet-300-100", (1, 8, 8), 10)
    a = dccomp.compile(model, recipe=tmp_path / "r.yaml")
    trainer = dccomp.Trainer(get_dataset("digits", "train"), get_dataset("digits", "test"), batch_size=32,
                             max_batches=2)
    b = dccomp.compile(model, DIGITS_PIPELINE, trainer=trainer, seed=3)
    assert a.records["retrain#2"]["steps"] == 2
    assert a.save(tmp_path / "a.dcc") == b.save(tmp_path / "b.dcc")
    assert (tmp_path / "a.dcc").read_bytes() == (tmp_path / "b.dcc").read_bytes()
    with pytest.raises(TypeError, match="not both"):
        dccomp.compile(model, "huffman", recipe=tmp_path / "r.yaml")


def test_cli_compress_with_a_recipe(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(DIGITS_RECIPE)
    main(["compress", "--recipe", str(tmp_path / "r.yaml"), "--random-weights", "--out", str(tmp_path / "m.dcc"),
          "--no-progress", "--json", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["pipeline"] == DIGITS_PIPELINE and r["data"] == "digits" and r["model"] == "lenet-300-100"
    assert r["records"]["retrain#2"]["steps"] == 2 and (tmp_path / "m.dcc").exists()
    (tmp_path / "bad.yaml").write_text("pipeline:\n  - cluster: {bits: 40}\n")
    for argv, msg in [(["--recipe", str(tmp_path / "bad.yaml")], "bad.yaml:2: pipeline[0].cluster.bits"),
                      (["--recipe", str(tmp_path / "r.yaml"), "--pipeline", "huffman"], "not both"),
                      ([], "--pipeline TEXT")]:
        with pytest.raises(SystemExit) as e:
            main(["compress", "lenet-300-100", "--random-weights", "--out", str(tmp_path / "x.dcc")] + argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err, err


# ------------------------------------------------------------------ dccomp passes: every option, derived

def test_passes_lists_every_option_with_type_default_and_meaning(capsys):
    main(["passes"])
    out = capsys.readouterr().out
    for name, cls in PASS_CLASSES.items():
        block = out.split(f"\n{name} ", 1)[1] if not out.startswith(f"{name} ") else out
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            doc = next(o for o in describe_options(cls) if o.name == f.name)
            assert doc.type == type_text(hints[f.name])
            assert doc.meaning, f"{name}.{f.name} has no meaning in its docstring"
            line = next(ln for ln in block.splitlines() if ln.split()[:1] == [f.name])
            assert doc.type in line and f"= {doc.default}" in line and doc.meaning in line
    assert "    = prune{" in out  # the named pipeline's passes


def test_option_meanings_come_from_the_docstring():
    meanings = {o.name: o.meaning for o in describe_options(get_pass("prune"))}
    assert meanings["scope"].startswith("layer (each layer pruned to the target) or global")
    assert meanings["steps"] == "number of pruning steps"

    @dataclasses.dataclass(frozen=True)
    class Toy(dccomp.Pass):
        """A toy pass.

        Options: ``alpha`` (how much), ``beta``: the other knob; ``gamma``."""

        name = "toy"
        alpha: float = 0.5
        beta: int = 2
        gamma: str = "x"
        delta: int = dataclasses.field(default=1, metadata={"doc": "given in the field"})

    docs = {o.name: (o.type, o.default, o.meaning) for o in describe_options(Toy)}
    assert docs == {"alpha": ("float", "0.5", "how much"), "beta": ("int", "2", "the other knob"),
                    "gamma": ("str", "x", ""), "delta": ("int", "1", "given in the field")}


def test_input_shape_with_a_training_recipe_says_why(tmp_path, capsys):
    """Found by a new user: --input-shape silently dropped the recipe's data, then retrain asked for data."""
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "deep-compression-lenet-300-100.yaml"
    with pytest.raises(SystemExit) as e:
        main(["compress", "--recipe", str(recipe), "--random-weights", "--input-shape", "1,28,28",
              "--out", str(tmp_path / "x.dcc")])
    assert e.value.code == 2 and "replaces the recipe's data set" in capsys.readouterr().err
