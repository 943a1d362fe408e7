"""What the command-line entries show of the libraries' logging and warnings: without
``--debug``, Lightning's info logs and the :data:`HARMLESS_WARNINGS` are hidden; every other
warning (scikit-learn's, numpy's: an honest evaluation must show them) reaches stderr.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["HARMLESS_WARNINGS", "quiet_libraries"]

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric",
                     "lightning.pytorch.utilities.rank_zero",
                     "lightning.fabric.utilities.rank_zero",
                     "lightning.fabric.utilities.distributed")

# (category, module regex, message regex, why it is harmless); each matches one known message,
# so a new warning from the same module is still shown. UserWarning rather than Lightning's
# PossibleUserWarning (a subclass) keeps Lightning unimported until training starts.
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str, str, str], ...] = (
    (UserWarning, r"lightning\.pytorch\.trainer\.connectors\.data_connector\Z",
     r"The '\w+' does not have many workers",
     "dermcam's loaders read small cached arrays; --num-workers is the user's choice"),
    (UserWarning, r"lightning\.pytorch\.trainer\.setup\Z",
     r"GPU available but not used",
     "--accelerator cpu was asked for (the default 'auto' uses the GPU)"),
    (UserWarning, r"lightning\.pytorch\.callbacks\.model_checkpoint\Z",
     r"Checkpoint directory .* exists and is not empty",
     "the folder is the run's own: best.ckpt and last.ckpt are kept there for --resume"),
    (FutureWarning, r"lightning\.pytorch\.utilities\._pytree\Z",
     r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     "Lightning's own use of a torch API due to change; nothing the user can act on"),
    # multi-process training (--devices N --strategy ddp)
    (FutureWarning, r"lightning\.fabric\.utilities\.distributed\Z",
     r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
     "the same: Lightning's all_gather calls a deprecated torch function"),
    (UserWarning, r"lightning\.pytorch\.trainer\.connectors\.logger_connector\.result\Z",
     r"It is recommended to use `self\.log\('val_(loss|auc|ap|n)', \.\.\., sync_dist=True\)`",
     "the validation outputs are gathered from every process before they are scored, so "
     "each process logs the same value"),
)


def quiet_libraries(debug: bool) -> None:
    """Set up logging; unless ``debug``, hide Lightning's info logs and harmless warnings."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if debug:
        return
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category, module, message, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
