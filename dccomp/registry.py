"""Registry of passes, named pipelines and backends.

Built-in and third-party plugins register the same way: through the entry-point groups ``dccomp.passes``
(pass classes or :class:`NamedPipeline` objects) and ``dccomp.backends`` (backend classes), loaded lazily by
name, or in-process with :func:`register_pass` / :func:`register_backend` / :func:`register_pipeline`.
A name registered twice by different objects is an error (no silent overwrite).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from .errors import PassError, RegistryError
from .pass_infra import Pass

__all__ = ["NamedPipeline", "register_pass", "register_backend", "register_pipeline", "get_pass", "get_backend",
           "make_pass", "available_passes", "available_backends", "refresh_entry_points"]

T = TypeVar("T")


@dataclass(frozen=True)
class NamedPipeline:
    """A pipeline registered under a name, e.g. ``deep-compression``; expands in place when parsed."""

    name: str
    text: str
    doc: str = ""


class _Registry:
    def __init__(self, group: str, what: str):
        self.group, self.what = group, what
        self._objs: dict[str, Any] = {}
        self._eps: dict[str, metadata.EntryPoint] | None = None

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self._eps is None:
            eps: dict[str, metadata.EntryPoint] = {}
            for ep in metadata.entry_points(group=self.group):
                prev = eps.get(ep.name)
                if prev is not None and prev.value != ep.value:
                    raise RegistryError(f"{self.what} {ep.name!r} is registered twice in entry-point group "
                                        f"{self.group!r}: {prev.value} and {ep.value}; uninstall one of them")
                eps[ep.name] = ep
            self._eps = eps
        return self._eps

    def add(self, name: str, obj: Any) -> None:
        existing = self._objs.get(name)
        if existing is None and name in self._entry_points():
            existing = self.get(name)
        if existing is not None and existing is not obj:
            raise RegistryError(f"{self.what} name {name!r} is already registered by {existing!r}; "
                                "choose another name")
        self._objs[name] = obj

    def get(self, name: str) -> Any:
        if name in self._objs:
            return self._objs[name]
        ep = self._entry_points().get(name)
        if ep is None:
            raise RegistryError(f"unknown {self.what} {name!r}; known: {', '.join(self.names()) or 'none'}")
        try:
            obj = ep.load()
        except Exception as e:
            raise RegistryError(f"{self.what} {name!r} ({ep.value}) failed to load: {e}") from e
        self._objs[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(set(self._objs) | set(self._entry_points()))


_PASSES = _Registry("dccomp.passes", "pass")
_BACKENDS = _Registry("dccomp.backends", "backend")


def register_pass(cls: type[T] | None = None, *, name: str | None = None) -> Any:
    """Class decorator registering a pass in-process (``@register_pass`` or ``@register_pass(name=...)``).

    Raises:
        RegistryError: the name is taken by another object.
        TypeError: ``cls`` is not a frozen dataclass subclass of :class:`~dccomp.pass_infra.Pass`.
    """
    def deco(c: type[T]) -> type[T]:
        if not (isinstance(c, type) and issubclass(c, Pass) and dataclasses.is_dataclass(c)):
            raise TypeError(f"{c!r} must be a @dataclass(frozen=True) subclass of dccomp.Pass")
        if not c.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"pass {c.__name__} must be a frozen dataclass (@dataclass(frozen=True))")
        n = name or c.name
        if not n:
            raise TypeError(f"pass {c.__name__} has no `name`")
        _PASSES.add(n, c)
        return c
    return deco(cls) if cls is not None else deco


def register_pipeline(name: str, text: str, doc: str = "") -> NamedPipeline:
    """Register a named pipeline; ``text`` is parsed when the name is used."""
    p = NamedPipeline(name, text, doc)
    _PASSES.add(name, p)
    return p


def register_backend(cls: type[T] | None = None, *, name: str | None = None) -> Any:
    """Class decorator registering a backend (a class with ``name`` and ``lower(ir, **options)``)."""
    def deco(c: type[T]) -> type[T]:
        _BACKENDS.add(name or getattr(c, "name"), c)
        return c
    return deco(cls) if cls is not None else deco


def get_pass(name: str) -> Any:
    """The pass class or :class:`NamedPipeline` registered as ``name`` (raises RegistryError if unknown)."""
    return _PASSES.get(name)


def get_backend(name: str) -> Any:
    """The backend class registered as ``name`` (raises RegistryError if unknown)."""
    return _BACKENDS.get(name)


def refresh_entry_points() -> None:
    """Re-read the entry-point groups (after installing a plugin package in a running process)."""
    _PASSES._eps = None
    _BACKENDS._eps = None


def available_passes() -> list[str]:
    return _PASSES.names()


def available_backends() -> list[str]:
    return _BACKENDS.names()


def make_pass(name: str, options: dict[str, Any]) -> list[Pass]:
    """Instantiate pass ``name`` with ``options`` (a named pipeline expands to its passes; it takes no options).

    Raises:
        RegistryError: unknown name. PassError: unknown option or invalid value (the message names the pass).
    """
    obj = get_pass(name)
    if isinstance(obj, NamedPipeline):
        if options:
            raise PassError(f"named pipeline {name!r} takes no options; write its passes out instead: {obj.text}")
        from .pipeline import parse_pipeline

        return parse_pipeline(obj.text)
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise PassError(f"pass {name!r} has no option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(sorted(fields)) or 'none'}")
    try:
        made = obj(**options)  # the pass's own checks first: their messages are the most specific
    except (TypeError, ValueError) as e:
        raise PassError(f"pass {name!r}: {e}") from e
    for key, value in options.items():  # then the field types, for options the pass does not check itself
        problem = _type_problem(obj, key, value)
        if problem:
            raise PassError(f"pass {name!r}: option {key}={value!r} {problem}")
    return [made]


def _matches(value: Any, tp: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``tp`` (``None``: cannot tell, e.g. a custom generic)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, t) for t in typing.get_args(tp)]
        return True if any(results) else (None if None in results else False)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    base = origin or tp
    if base in (dict, list, tuple, set):
        return isinstance(value, base) or (base in (tuple, set) and isinstance(value, list))
    if typing.get_origin(tp) is typing.Literal:
        return value in typing.get_args(tp)
    return None


def _type_problem(cls: type, key: str, value: Any) -> str | None:
    """A message if ``value`` does not fit the type annotation of the pass option ``key``; ``None`` if it fits
    or the annotation cannot be checked."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the check to the pass
        return None
    tp = hints.get(key)
    if tp is None or _matches(value, tp) is not False:
        return None
    shown = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    hint = " (write true or false)" if tp is bool else ""
    return f"must be {shown}, got {type(value).__name__} {value!r}{hint}"
