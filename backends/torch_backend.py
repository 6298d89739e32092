"""The reference backend: runs the compressed IR with PyTorch (weights decoded to dense tensors)."""
from __future__ import annotations

import copy
import warnings

from torch import fx

from dccomp.ir import IR, keep_non_persistent

__all__ = ["TorchBackend"]


class TorchBackend:
    """Reference lowering: a copy of the traced ``GraphModule`` whose parameters hold the compressed weights'
    values (``codebook[indices] * mask``, per-channel codebooks ``codebook[row, indices] * mask``: exactly what the
    IR verifier checks). Always available; every other
    backend is tested against it."""

    name = "torch"

    def lower(self, ir: IR, **options) -> fx.GraphModule:
        """Return an eval-mode ``GraphModule`` computing the compressed model (options are ignored).

        Raises:
            TypeError: an unknown option was given (the torch backend takes none but ``target='cpu'``).
        """
        target = options.pop("target", None)
        if options or target not in (None, "cpu", "torch"):
            raise TypeError(f"the torch backend takes no options; got {sorted(options) or {'target': target}}")
        with warnings.catch_warnings():  # torch's pytree specs of exported graphs warn when deep-copied
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            gm = copy.deepcopy(ir.gm)
        keep_non_persistent(ir.gm, gm)
        gm.eval()
        return gm
