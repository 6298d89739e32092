"""Recipes: a pipeline (with per-layer options) and its training settings in one YAML file.

``dccomp compress --recipe r.yaml`` and ``dccomp.compile(model, recipe="r.yaml")`` read them; ``recipes/``
ships the ``deep-compression`` settings for LeNet-300-100 and LeNet-5. A recipe::

    description: Deep Compression of LeNet-300-100      # free text (optional)
    model: lenet-300-100                                # the CLI's MODEL when none is given (optional)
    training:                                           # optional; every key optional (see TrainingSettings)
      data: fashion-mnist
      batch_size: 128
      seed: 0
    pipeline:                                           # required: pass entries in order
      - prune: {sparsity: 0.9, layers: {fc3: 0.5}}      #   a pass with options (per-layer: `layers`)
      - retrain: {epochs: 1, lr: 0.001}
      - cluster:
          bits: 5
          layers: {"conv.*": 8}
      - huffman                                         #   a pass (or named pipeline) without options

``pipeline`` may also be pipeline text (``"prune{sparsity=0.9},huffman"``). Pass options are exactly the
pipeline-text options (``dccomp passes`` lists them); recipe -> :meth:`Recipe.pipeline_text` and
:meth:`Recipe.from_pipeline` -> :meth:`Recipe.to_yaml` round-trip. YAML is read with PyYAML's safe loader
(no Python objects); every error is a :class:`~dccomp.errors.RecipeError` that starts with ``FILE:LINE:`` and
names the key.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import PassError, PipelineSyntaxError, RecipeError, RegistryError
from .pass_infra import Pass

__all__ = ["Recipe", "TrainingSettings", "load_recipe", "parse_recipe", "recipe_compile_settings"]

_TOP_KEYS = ("description", "model", "training", "pipeline")


@dataclass(frozen=True)
class TrainingSettings:
    """The training settings of a recipe (every field optional).

    Attributes:
        data: built-in data set (``fashion-mnist``, ``digits``) for retraining and evaluation: the CLI's
            ``--data``; ``dccomp.compile`` loads its train and test splits when a pass trains and no
            ``train_data``/``trainer`` is given.
        data_root: folder of the data set's files (CLI ``--data-root``).
        input_shape: per-example input shape, e.g. ``[1, 28, 28]`` (CLI ``--input-shape``; ``dccomp.compile``
            captures with a zero example of it when no ``example_inputs`` are given).
        batch_size: training batch size of the :class:`~dccomp.train.Trainer` (examples per step).
        eval_batch_size: evaluation batch size.
        max_batches: stop each training epoch after this many batches (``None``: whole epochs).
        seed: base random seed (CLI ``--seed``; ``dccomp.compile(seed=)``).
        verify: run the IR verifier before and after every pass (CLI ``--verify``).
    """

    data: str | None = None
    data_root: str | None = None
    input_shape: list[int] | None = None
    batch_size: int = 128
    eval_batch_size: int = 1000
    max_batches: int | None = None
    seed: int = 0
    verify: bool = False

    def problem(self, key: str, value: Any) -> str | None:
        """Why ``value`` is not valid for ``key`` (a message), or ``None``."""
        tp = typing.get_type_hints(TrainingSettings)[key]
        if value is None:
            return None if type(None) in typing.get_args(tp) else "must not be empty"
        if key == "input_shape":
            ok = isinstance(value, list) and value and all(type(d) is int and d >= 1 for d in value)
            return None if ok else f"must be a list of positive integers, e.g. [1, 28, 28]; got {value!r}"
        if key in ("batch_size", "eval_batch_size", "max_batches"):
            return None if type(value) is int and value >= 1 else f"must be a positive integer, got {value!r}"
        if key == "seed":
            return None if type(value) is int else f"must be an integer, got {value!r}"
        if key == "verify":
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if not isinstance(value, str):
            return f"must be a string, got {value!r}"
        if key == "data":
            from .data import DATASETS

            if value not in DATASETS:
                return f"unknown data set {value!r}; built-in: {', '.join(sorted(DATASETS))}"
        return None

    def changed(self) -> dict[str, Any]:
        """Settings that differ from their defaults, in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class Recipe:
    """A pipeline and its training settings (see the module docstring for the YAML form).

    Attributes:
        passes: the pass objects, in order (named pipelines expanded).
        training: :class:`TrainingSettings`.
        model: model name for the CLI (``lenet-300-100``, ``lenet-5`` or ``module:Class``), or ``None``.
        description: free text.
        source: where it was read from (for messages).
    """

    passes: list[Pass]
    training: TrainingSettings = field(default_factory=TrainingSettings)
    model: str | None = None
    description: str = ""
    source: str = "<recipe>"

    def pipeline_text(self) -> str:
        """The canonical pipeline text of :attr:`passes` (see :func:`dccomp.print_pipeline`)."""
        from .pipeline import print_pipeline

        return print_pipeline(self.passes)

    @classmethod
    def from_pipeline(cls, pipeline: str | Sequence[Pass], *, model: str | None = None, description: str = "",
                      **training: Any) -> "Recipe":
        """A recipe from pipeline text (or passes) and training settings (``batch_size=64``, ...).

        Raises:
            PipelineSyntaxError, RegistryError, PassError: bad pipeline text. RecipeError: a bad setting.
        """
        from .manager import resolve_passes

        names = {f.name for f in dataclasses.fields(TrainingSettings)}
        for key, value in training.items():
            why = f"unknown training setting; known: {', '.join(sorted(names))}" if key not in names else \
                TrainingSettings().problem(key, value)
            if why:
                raise RecipeError(f"training.{key}: {why}", None, f"training.{key}")
        return cls(resolve_passes(pipeline), TrainingSettings(**training), model, description)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what :meth:`to_yaml` writes): defaults left out, pass entries as in the YAML form."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        if self.model:
            out["model"] = self.model
        if self.training.changed():
            out["training"] = _plain(self.training.changed())
        out["pipeline"] = [{p.name: _plain(p.options())} if p.options() else p.name for p in self.passes]
        return out

    def to_yaml(self) -> str:
        """The recipe as YAML text; :func:`parse_recipe` of it gives the same pipeline text and settings."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True,
                              width=100)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) else k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class _Reader:
    """Walks PyYAML's node tree so every value keeps its line (``node.start_mark``)."""

    def __init__(self, text: str, source: str):
        import yaml

        self.source = source
        self.loader = yaml.SafeLoader(text)

    def error(self, node: Any, key: str, msg: str) -> RecipeError:
        line = node.start_mark.line + 1 if node is not None else None
        where = f"{self.source}:{line}" if line else self.source
        return RecipeError(f"{where}: {key}: {msg}", line, key)

    def plain(self, node: Any, key: str) -> Any:
        """The Python value of ``node`` (safe types only); a key given twice in a mapping is an error."""
        import yaml

        if isinstance(node, yaml.MappingNode):
            return {k: self.plain(v, f"{key}.{k}") for k, (_, v) in self.mapping(node, key).items()}
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(v, f"{key}[{i}]") for i, v in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise self.error(node, key, str(getattr(e, "problem", e))) from None

    def mapping(self, node: Any, key: str) -> dict[Any, tuple[Any, Any]]:
        """``{key: (key_node, value_node)}`` of a mapping node, refusing repeated keys."""
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, f"must be a mapping (key: value lines), got {_kind(node)}")
        self.loader.flatten_mapping(node)  # YAML merge keys (<<)
        out: dict[Any, tuple[Any, Any]] = {}
        for knode, vnode in node.value:
            k = self.plain(knode, key)
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise self.error(knode, key, f"keys must be plain scalars, got {_kind(knode)}")
            if k in out:
                raise self.error(knode, f"{key}.{k}", f"given twice (first on line {out[k][0].start_mark.line + 1})")
            out[k] = (knode, vnode)
        return out


def _kind(node: Any) -> str:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the scalar {node.value!r}"[:80]


def _culprit(message: str, opts: dict[str, Any], nodes: dict[str, tuple[Any, Any]], make: Any) -> tuple[str, Any]:
    """``(option key path, node)`` the pass's error is about: the option whose value (or a value inside it) the
    message quotes after "got", else the first option named in the message, else the option without which the
    pass accepts the rest; ``("", None)`` when none can be told."""
    def leaves(value: Any, node: Any, path: str) -> list[tuple[Any, Any, str]]:
        """``(value, node, dotted path)`` of every scalar inside an option value (mapping keys included)."""
        if isinstance(value, dict) and isinstance(getattr(node, "value", None), list):
            out = []
            for kn, vn in node.value:
                if getattr(kn, "value", None) in value:
                    out += leaves(value[kn.value], vn, f"{path}.{kn.value}") + [(kn.value, kn, path)]
            return out
        if isinstance(value, list) and isinstance(getattr(node, "value", None), list):
            return [leaf for i, (v, n) in enumerate(zip(value, node.value)) for leaf in leaves(v, n, f"{path}[{i}]")]
        return [(value, node, path)]

    for key, value in opts.items():
        for leaf, node, path in leaves(value, nodes[key][1], key):
            if re.search(rf"got {re.escape(repr(leaf))}(?![\w.])", message):
                return path, node
    for key in opts:
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", message):
            return key, nodes[key][0]
    for key in opts:
        try:
            make({k: v for k, v in opts.items() if k != key})
        except (PassError, RegistryError):
            continue
        return key, nodes[key][0]
    return "", None


def _entry(r: _Reader, node: Any, i: int) -> list[Pass]:
    """The passes of pipeline entry ``i``: a name, or ``{name: {option: value}}``."""
    import yaml

    from .registry import NamedPipeline, get_pass, make_pass

    key = f"pipeline[{i}]"
    if isinstance(node, yaml.ScalarNode):
        name, name_node, opts_node = r.plain(node, key), node, None
    elif isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        name_node, opts_node = node.value[0]
        name = r.plain(name_node, key)
    else:
        raise r.error(node, key, f"each pipeline entry is a pass name or {{name: {{option: value}}}} with one "
                                 f"name, got {_kind(node)} " + (f"with {len(node.value)} keys" if
                                                              isinstance(node, yaml.MappingNode) else ""))
    if not isinstance(name, str):
        raise r.error(name_node, key, f"pass name must be a string, got {name!r}")
    key = f"{key}.{name}"
    try:
        obj = get_pass(name)
    except RegistryError as e:
        raise r.error(name_node, key, str(e)) from None
    nodes: dict[str, tuple[Any, Any]] = {}
    if opts_node is not None and not (isinstance(opts_node, yaml.ScalarNode) and r.plain(opts_node, key) is None):
        nodes = r.mapping(opts_node, key)
    opts = {k: r.plain(v, f"{key}.{k}") for k, (_, v) in nodes.items()}
    if isinstance(obj, NamedPipeline):
        if opts:
            raise r.error(opts_node, key, f"named pipeline {name!r} takes no options; write its passes out "
                                          f"instead: {obj.text}")
    elif dataclasses.is_dataclass(obj):
        fields = [f.name for f in dataclasses.fields(obj)]
        for k, (knode, _) in nodes.items():
            if k not in fields:
                raise r.error(knode, f"{key}.{k}", f"pass {name!r} has no option {k!r}; its options are: "
                                                   f"{', '.join(fields) or 'none'} (see `dccomp passes`)")
    try:
        return make_pass(name, opts)
    except (PassError, RegistryError) as e:
        msg = str(e).removeprefix(f"pass {name!r}: ")
        k, at = _culprit(msg, opts, nodes, lambda o: make_pass(name, o))
        raise r.error(at or name_node, f"{key}.{k}" if k else key, msg) from None


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Read a recipe from YAML ``text`` (``source`` names it in messages).

    Raises:
        RecipeError: ``SOURCE:LINE: KEY: what is wrong`` -- invalid YAML, an unknown or repeated key, a wrong
            value, an unknown pass or option, or an option value the pass refuses.
    """
    import yaml

    if not isinstance(text, str):
        raise TypeError(f"recipe text must be a str, got {type(text).__name__}")
    r = _Reader(text, source)
    try:
        try:
            root = r.loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else None
            raise RecipeError(f"{source}:{line}: not valid YAML: {e.problem or e.context}", line, None) from None
        except yaml.YAMLError as e:
            raise RecipeError(f"{source}: not valid YAML: {e}", None, None) from None
        if root is None:
            raise RecipeError(f"{source}: the recipe is empty; it needs at least a 'pipeline:' key", 1, "pipeline")
        top = r.mapping(root, "recipe")
        for k, (knode, _) in top.items():
            if k not in _TOP_KEYS:
                raise r.error(knode, str(k), f"unknown key; a recipe has {', '.join(_TOP_KEYS)}")
        if "pipeline" not in top:
            raise r.error(root, "pipeline", "missing: a recipe needs a 'pipeline:' list of passes")
        settings: dict[str, Any] = {}
        if "training" in top:
            tnode = top["training"][1]
            tmap = {} if isinstance(tnode, yaml.ScalarNode) and r.plain(tnode, "training") is None else \
                r.mapping(tnode, "training")
            names = [f.name for f in dataclasses.fields(TrainingSettings)]
            for k, (knode, vnode) in tmap.items():
                if k not in names:
                    raise r.error(knode, f"training.{k}", f"unknown training setting; known: {', '.join(names)} "
                                                          "(epochs and lr are options of the passes that train)")
                value = r.plain(vnode, f"training.{k}")
                why = TrainingSettings().problem(k, value)
                if why:
                    raise r.error(vnode, f"training.{k}", why)
                settings[k] = value
        texts = {}
        for k in ("description", "model"):
            if k in top:
                v = r.plain(top[k][1], k)
                if not isinstance(v, str):
                    raise r.error(top[k][1], k, f"must be a string, got {v!r}")
                texts[k] = v
        pnode = top["pipeline"][1]
        if isinstance(pnode, yaml.ScalarNode):
            text = r.plain(pnode, "pipeline")
            if not isinstance(text, str) or not text.strip():
                raise r.error(pnode, "pipeline", f"must be a list of passes or pipeline text, got {text!r}")
            from .pipeline import parse_pipeline

            try:
                passes = parse_pipeline(text)
            except (PipelineSyntaxError, RegistryError, PassError) as e:
                raise r.error(pnode, "pipeline", str(e)) from None
        elif isinstance(pnode, yaml.SequenceNode):
            passes = [p for i, item in enumerate(pnode.value) for p in _entry(r, item, i)]
        else:
            raise r.error(pnode, "pipeline", f"must be a list of passes, got {_kind(pnode)}")
    finally:
        r.loader.dispose()
    return Recipe(passes, TrainingSettings(**settings), texts.get("model"), texts.get("description", ""), source)


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe file (YAML, UTF-8). Raises OSError when it cannot be read and :class:`RecipeError` (see
    :func:`parse_recipe`) when it is malformed."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return parse_recipe(text, source=path)


def recipe_compile_settings(recipe: "str | os.PathLike | Recipe", passes: Any, *, example_inputs: Any,
                            example_kwargs: Any, train_data: Any, eval_data: Any, loss: Any, trainer: Any,
                            seed: int | None, verify: bool | None) -> dict[str, Any]:
    """What ``dccomp.compile(model, recipe=...)`` runs with: the recipe's passes, and its training settings where
    the call gives none (explicit arguments win).

    Returns:
        ``{"passes", "example_inputs", "trainer", "seed", "verify"}``. The trainer is built with the recipe's
        batch sizes from ``train_data``/``eval_data`` or, when neither (nor ``trainer``) is given and a pass
        trains, from the recipe's ``data`` set; it is ``None`` when there is nothing to train or evaluate on.

    Raises:
        TypeError: both ``passes`` and ``recipe`` were given. RecipeError, OSError: see :func:`load_recipe`.
    """
    import torch

    from .train import Trainer

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if passes:
        raise TypeError("give the passes either as passes= or in the recipe, not both")
    t = rec.training
    if example_inputs is None and not example_kwargs and t.input_shape:
        example_inputs = torch.zeros(1, *t.input_shape)
    if trainer is None and train_data is None and eval_data is None and t.data and any(
            p.needs_training_data() for p in rec.passes):
        from .data import get_dataset

        train_data, eval_data = get_dataset(t.data, "train", t.data_root), get_dataset(t.data, "test", t.data_root)
    if trainer is None and (train_data is not None or eval_data is not None):
        trainer = Trainer(train_data, eval_data, loss, batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
                          max_batches=t.max_batches)
    return {"passes": rec.passes, "example_inputs": example_inputs, "trainer": trainer,
            "seed": t.seed if seed is None else seed, "verify": t.verify if verify is None else verify}
