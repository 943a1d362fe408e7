"""dermcam: train, compare and audit dermoscopy classifiers. Importing it imports nothing
heavy (no torch, matplotlib); import the stage you need, or audit a model with :func:`audit`."""

__version__ = "0.1.0"

__all__ = ["__version__", "DermcamError", "audit"]

from dermcam.errors import DermcamError  # noqa: E402  (light: no heavy imports)


def audit(model, data, out, **options):
    """The full audit of a model trained anywhere (a module or a weights file) on ``data``, into
    the run folder ``out``; returns the run (options: :func:`dermcam.outside.audit`)."""
    from dermcam.outside import audit as full_audit
    return full_audit(model, data, out, **options)
