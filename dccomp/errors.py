"""Exceptions raised by dccomp.

Every error dccomp raises on purpose derives from :class:`DccompError`, so callers can catch them all at once.
"""
from __future__ import annotations

__all__ = ["DccompError", "FormatError", "TracingError", "VerificationError", "PassError",
           "PipelineSyntaxError", "RegistryError", "StaleStateError", "RecipeError"]


class DccompError(Exception):
    """Base class of every error dccomp raises on purpose."""


class FormatError(DccompError, ValueError):
    """A ``.dcc`` file (or a typed array inside one) is malformed, corrupted, truncated or from a newer dccomp.

    The message names what is wrong (the field or section, and the expected vs the found value).
    It is also a :class:`ValueError`, so code that already handles bad values keeps working.
    """


class TracingError(DccompError):
    """``torch.fx`` could not trace the model, or the model holds something tracing would silently drop
    (forward hooks, parametrizations). The message names the construct and the workarounds."""


class VerificationError(DccompError):
    """An IR invariant is broken. ``layer`` names the weight, ``invariant`` the broken rule."""

    def __init__(self, layer: str, invariant: str, detail: str = ""):
        self.layer, self.invariant, self.detail = layer, invariant, detail
        super().__init__(f"IR verification failed at {layer!r}: {invariant}" + (f" ({detail})" if detail else ""))


class PassError(DccompError):
    """A pass failed, or its requirements were not met. Names the pass and the passes that ran before it."""


class PipelineSyntaxError(DccompError, ValueError):
    """A pipeline string such as ``prune{sparsity=0.9},cluster{bits=5}`` could not be parsed."""


class RegistryError(DccompError):
    """A pass or backend name is unknown, or registered twice."""


class StaleStateError(DccompError, ValueError):
    """A compiled model's live parameters no longer fit their compression state (e.g. an optimizer outside
    dccomp moved pruned weights off zero or clustered weights off their centroids), so a file written now would
    not compute what the model in memory computes. ``layers`` maps each such weight to what changed."""

    def __init__(self, message: str, layers: dict[str, str]):
        self.layers = layers
        super().__init__(message)


class RecipeError(DccompError, ValueError):
    """A recipe file is malformed: bad YAML, an unknown key, a wrong value, an unknown pass or option. The
    message starts with ``FILE:LINE:`` and names the key; ``line`` (1-based, ``None`` when unknown) and ``key``
    (the dotted path, e.g. ``pipeline[2].cluster.bits``) hold them too."""

    def __init__(self, message: str, line: int | None = None, key: str | None = None):
        self.line, self.key = line, key
        super().__init__(message)
