"""What a pass is: a small frozen dataclass with a kebab-case ``name``, its options as fields, and ``run``.

Modelled on xDSL's ``ModulePass`` and torch.fx's ``PassBase``: ``run(ir, ctx) -> PassResult(ir, modified)``.
A pass states what it requires (``requires``: the least compression state every weight must have reached,
and whether coded weights are allowed); the :class:`~dccomp.manager.PassManager` checks it and never reorders.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

from .ir import IR, State, Weight

if TYPE_CHECKING:
    from .train import Trainer

__all__ = ["Pass", "PassResult", "PassContext", "select_value", "validate_selectors", "selector_problem"]


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) IR and whether it changed anything."""

    ir: IR
    modified: bool


@dataclass
class PassContext:
    """Options and services a pass may use; built by the driver (``dccomp.compile`` or the CLI).

    Attributes:
        trainer: a :class:`dccomp.train.Trainer` holding the user's training/eval data and loss; ``None`` when
            no data was given (passes that need it raise :class:`~dccomp.errors.PassError`).
        seed: base random seed; passes derive their own deterministic seeds from it.
        instruments: objects notified before/after each pass and asked for progress bars.
        records: free-form measurements passes leave for instruments and reports, e.g. accuracy after
            retraining (``{"retrain#2": {"accuracy": 0.98}}``).
        teacher: a frozen (eval-mode, ``requires_grad=False``) copy of the model as it was before the pipeline,
            for distillation (``retrain{distill=...}``); ``dccomp.compile`` sets it when a pass needs it.
    """

    trainer: "Trainer | None" = None
    seed: int = 0
    instruments: list[Any] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str = ""
    teacher: Any = None

    def progress(self, iterable: Iterable, *, total: int | None = None, desc: str = "") -> Iterable:
        """Wrap ``iterable`` with the first instrument offering ``progress`` (e.g. tqdm); passes never print."""
        for inst in self.instruments:
            fn: Callable | None = getattr(inst, "progress", None)
            if fn is not None:
                return fn(iterable, total=total, desc=desc)
        return iterable

    def record(self, **values: Any) -> None:
        """Store measurements under the running pass's key (``name#index``)."""
        self.records.setdefault(self.current, {}).update(values)


class Pass:
    """Base class of all passes. Subclasses are ``@dataclass(frozen=True)`` with a class attribute ``name``.

    Class attributes:
        name: kebab-case name used in pipeline strings and the registry.
        requires: least :class:`~dccomp.ir.State` each targeted weight must have (``DENSE``: none).
        accepts_coded: whether weights may already be entropy-coded (``False`` for passes that change values).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[State] = State.DENSE
    accepts_coded: ClassVar[bool] = False

    def run(self, ir: IR, ctx: PassContext) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, ir: IR) -> str | None:
        """Why this pass cannot run on ``ir`` (a message), or ``None``. The manager raises with it."""
        for w in ir.weights.values():
            if not self.accepts_coded and w.state == State.CODED:
                return (f"weight {w.name!r} is already entropy-coded; '{self.name}' changes weight values, so "
                        "entropy coding must be the last pass of the pipeline")
            if w.state < self.requires:
                return (f"'{self.name}' needs every weight {self.requires} or later, but {w.name!r} is {w.state}; "
                        f"put a pass that makes it {self.requires} before '{self.name}'")
        return None

    def needs_training_data(self) -> bool:
        """Whether :meth:`run` trains the model, so the driver must supply training data (``ctx.trainer``).

        Convention: a pass with an ``epochs`` option trains when ``epochs > 0``; override for other rules. The
        CLI uses this to ask for ``--data`` before any work.
        """
        epochs = getattr(self, "epochs", 0)
        return isinstance(epochs, (int, float)) and epochs > 0

    def options(self) -> dict[str, Any]:
        """Options that differ from their defaults, in field order (what the pipeline printer writes)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if v != default:
                out[f.name] = v
        return out

    def __str__(self) -> str:
        from .pipeline import print_pipeline

        return print_pipeline([self])


def select_value(w: Weight, layers: dict[str, Any] | None, default: Any) -> Any:
    """The per-layer option for weight ``w``: the first key of ``layers`` that fully matches (as a regex)
    the weight name (``fc1.weight``), its module name (``fc1``) or its kind (``linear``, ``conv2d``,
    ``conv2d.depthwise``, ``rnn``...; ``"conv2d"`` matches only ungrouped convolutions, ``"conv2d.*"`` all);
    else ``default``."""
    module = w.name.rsplit(".", 1)[0]
    for pattern, value in (layers or {}).items():
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"layer pattern {pattern!r} is not a valid regular expression: {e}") from None
        if rx.fullmatch(w.name) or rx.fullmatch(module) or rx.fullmatch(w.kind):
            return value
    return default


def validate_selectors(layers: Any, exclude: Any = None) -> None:
    """Check the types of a pass's ``layers`` (``{regex: value}``) and ``exclude`` (one regex) options.

    Raises:
        ValueError: not a mapping / not a string / not a valid regular expression, with an example.
    """
    if not isinstance(layers, dict):
        raise ValueError(f"layers must be a mapping {{regex: value}}, e.g. layers={{\"fc1\":0.95}}; got {layers!r}")
    for key in layers:
        if not isinstance(key, str):
            raise ValueError(f"layers keys must be regular-expression strings, got {key!r}")
        _check_regex(key, "layer pattern")
    if exclude is not None:
        if not isinstance(exclude, str):
            raise ValueError(f"exclude must be one regular expression, e.g. exclude=\"conv1|fc3\"; got {exclude!r}")
        _check_regex(exclude, "exclude")


def _check_regex(pattern: str, what: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{what} {pattern!r} is not a valid regular expression: {e}") from None


def selector_problem(ir: IR, layers: dict[str, Any], exclude: str | None = None) -> str | None:
    """A message if a ``layers`` key or ``exclude`` matches no weight of ``ir`` (a typo would silently do
    nothing), else ``None``. Patterns that name a layer kind (``linear``, ``conv.*``...) are rules by layer type,
    as generic pipelines use them, and may match nothing in a given model."""
    from .trace import LAYER_KINDS

    names = ", ".join(ir.weights) or "none"
    for pattern in list(layers) + ([exclude] if exclude else []):
        if any(re.fullmatch(pattern, kind) for kind in LAYER_KINDS):
            continue
        if not any(select_value(w, {pattern: True}, False) for w in ir.weights.values()):
            return (f"layer pattern {pattern!r} matches no compressible weight (patterns fully match a weight name, "
                    f"module name or layer kind); the weights are: {names}")
    return None
