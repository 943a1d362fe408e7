"""The command line itself: which warnings reach stderr, and how --help wraps text."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import typer
from typer.testing import CliRunner

from dermcam.cli import _paragraphs, app
from dermcam.logs import HARMLESS_WARNINGS, quiet_libraries

# ------------------------------------------------------------------------ warnings

# A command added to the real app in a fresh process: it raises the warnings an honest
# evaluation must show (scikit-learn's undefined metric, numpy's empty mean), a warning
# Lightning has not been seen to give, and, from Lightning's own code in a real (tiny)
# fit, the harmless warnings dermcam hides.
NOISY = textwrap.dedent("""
    import sys
    from pathlib import Path

    import dermcam.cli as cli


    @cli.app.command("noisy")
    def noisy(folder: Path) -> None:
        import warnings

        import numpy as np
        import torch
        import lightning.pytorch as pl
        from lightning.pytorch.accelerators import CUDAAccelerator
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.trainer import setup
        from lightning.pytorch.trainer.connectors import data_connector
        from sklearn.metrics import precision_score

        precision_score([0, 1, 1], [0, 0, 0])  # no positive prediction: precision 0/0
        np.mean(np.zeros(0))
        warnings.warn_explicit("a new message from Lightning", UserWarning, "setup.py", 1,
                               module="lightning.pytorch.trainer.setup")

        class HasGPU(CUDAAccelerator):  # as on a GPU machine asked to train on the CPU
            @staticmethod
            def is_available():
                return True

        setup.CUDAAccelerator = HasGPU
        data_connector.suggested_max_num_workers = lambda n: 4  # as on a machine with 5 cores

        class Tiny(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(2, 2)

            def training_step(self, batch, i):
                x, y = batch
                return torch.nn.functional.cross_entropy(self.lin(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        ckdir = folder / "ck"
        ckdir.mkdir()
        (ckdir / "last.ckpt").write_bytes(b"")  # a resumed run's folder is not empty
        data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.tensor([0, 1] * 4))
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[ModelCheckpoint(dirpath=ckdir)],
                             default_root_dir=folder)
        trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
        print("done")


    sys.argv = ["dermcam", *sys.argv[1:]]
    cli.main()
""")

SHOWN = ("UndefinedMetricWarning", "Precision is ill-defined", "RuntimeWarning: Mean of empty "
         "slice", "a new message from Lightning")
HIDDEN = ("does not have many workers", "GPU available but not used",
          "exists and is not empty", "LeafSpec")


def _noisy(tmp_path, *options):
    script = tmp_path / "noisy.py"
    script.write_text(NOISY)
    (tmp_path / "run").mkdir()
    return subprocess.run([sys.executable, str(script), *options, "noisy", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)


def test_metric_warnings_reach_stderr_and_listed_lightning_ones_do_not(tmp_path):
    r = _noisy(tmp_path)
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    for text in SHOWN:
        assert text in r.stderr, text
    for text in HIDDEN:
        assert text not in r.stderr, text


def test_debug_shows_the_listed_lightning_warnings_too(tmp_path):
    """The control: Lightning really gives the hidden warnings in that fit."""
    r = _noisy(tmp_path, "--debug")
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    for text in SHOWN + HIDDEN:
        assert text in r.stderr, text


def test_filters_are_specific_not_a_blanket_ignore():
    with warnings.catch_warnings():
        warnings.resetwarnings()
        quiet_libraries(debug=False)
        ignores = [f for f in warnings.filters if f[0] == "ignore"]
        assert len(ignores) == len(HARMLESS_WARNINGS)
        for _action, message, category, module, _lineno in ignores:
            assert message is not None and module is not None
            assert category is not Warning and module.pattern.startswith("lightning")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet_libraries(debug=False)  # again, as the CLI does before each command
            warnings.warn("undefined metric", RuntimeWarning, stacklevel=1)
        assert [str(w.message) for w in seen] == ["undefined metric"]


# ------------------------------------------------------------------------ help text


def test_help_wraps_docstring_paragraphs_to_the_terminal():
    r = CliRunner().invoke(app, ["synth", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert r.exit_code == 0, r.output
    assert ("Lesions differ by the ABCD cues (asymmetry, border, colour, diameter; malignant "
            "larger on average), with exact masks") in r.output
    narrow = CliRunner().invoke(app, ["synth", "--help"], env={"COLUMNS": "60"})
    assert max(len(line) for line in narrow.output.splitlines()) <= 60


def test_every_command_help_is_one_line_per_paragraph():
    group = typer.main.get_command(app)
    assert len(group.commands) >= 8
    for name, command in group.commands.items():
        for paragraph in (command.help or "").split("\n\n"):
            assert paragraph and "\n" not in paragraph, name


@pytest.mark.parametrize("doc, expected", [
    (None, None),
    ("One line.", "One line."),
    ("""Title line.

    First paragraph
    over two lines.

    Second.
    """, "Title line.\n\nFirst paragraph over two lines.\n\nSecond."),
    ("Title.\n\n\b\nkeep\nthese breaks", "Title.\n\n\b\nkeep\nthese breaks"),
])
def test_paragraphs(doc, expected):
    assert _paragraphs(doc) == expected
