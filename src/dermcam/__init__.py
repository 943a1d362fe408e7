"""dermcam: train, compare and audit dermoscopy classifiers.

The top level is deliberately thin and lazy: importing :mod:`dermcam` does not
import torch, matplotlib or any heavy dependency. Import the stage you need::

    from dermcam.data import load_dataset
    from dermcam.leakage import score_batch
"""

__version__ = "0.1.0"

__all__ = ["__version__", "DermcamError"]

from dermcam.errors import DermcamError  # noqa: E402  (light: no heavy imports)
