"""dccomp: Deep Compression (Han, Mao, Dally, ICLR 2016) as a compiler for PyTorch models.

``dccomp.compile(model, passes="prune{sparsity=0.9},retrain{epochs=1},cluster{bits=5},retrain,huffman", ...)``
traces the model with torch.fx into dccomp's IR, runs the passes, and lowers the result with a backend;
``dccomp.save`` writes the compressed ``.dcc`` file whose size is the size dccomp reports.
"""
from .compiler import CompiledModel, compile
from .errors import (DccompError, FormatError, PassError, PipelineSyntaxError, RecipeError, RegistryError,
                     TracingError, VerificationError)
from .ir import IR, State, Weight
from .manager import PassManager
from .pass_infra import Pass, PassContext, PassResult
from .pipeline import parse_pipeline, print_pipeline
from .recipe import Recipe, load_recipe
from .reopen import load_compiled
from .registry import register_backend, register_pass, register_pipeline
from .trace import trace
from .train import Trainer
from .verify import verify

__version__ = "0.1.0"


def save(compiled, path, *, overwrite=False):
    """Write ``compiled`` (CompiledModel or IR) to a ``.dcc`` file atomically; see :func:`dccomp.format.save`
    (``overwrite=True`` replaces a regular file that is not a ``.dcc`` file)."""
    from .format import save as _save

    return _save(compiled, path, overwrite=overwrite)


def load(path, model=None):
    """Read a ``.dcc`` file: its tensors (no ``model``) or ``model`` with the file's values, as a plain dense
    module; see :func:`dccomp.format.load`. To keep the compression state (masks, codebooks, coded streams), use
    :func:`load_compiled`."""
    from .format import load as _load

    return _load(path, model)


__all__ = ["compile", "CompiledModel", "save", "load", "load_compiled", "trace", "verify", "IR", "State", "Weight", "Pass",
           "PassContext", "PassResult", "PassManager", "Trainer", "parse_pipeline", "print_pipeline",
           "register_pass", "register_backend", "register_pipeline", "DccompError", "FormatError", "PassError",
           "PipelineSyntaxError", "RecipeError", "RegistryError", "Recipe", "load_recipe", "TracingError", "VerificationError"]
