"""dermcam: train, compare and audit dermoscopy classifiers.

The top level is deliberately thin and lazy: importing :mod:`dermcam` does not
import torch, matplotlib or any heavy dependency. Import the stage you need::

    from dermcam.data import load_dataset
    from dermcam.leakage import score_batch

and audit a model trained anywhere with :func:`audit` (see :mod:`dermcam.outside`).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "DermcamError", "audit"]

from dermcam.errors import DermcamError  # noqa: E402  (light: no heavy imports)


def audit(model, data, out, **options):
    """The full audit of a model trained anywhere (a ``torch.nn.Module`` or a weights
    file) on ``data``, into the run folder ``out``; returns the run.
    :func:`dermcam.outside.audit` documents the options."""
    from dermcam.outside import audit as full_audit

    return full_audit(model, data, out, **options)
