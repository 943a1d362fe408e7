"""The command line itself: which warnings reach stderr, how --help wraps text, and
one name, one default and one help layout across the commands."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
import warnings

import pytest
import typer
from typer.testing import CliRunner

import dermcam
from dermcam.cli import app
from dermcam.logs import HARMLESS_WARNINGS, quiet_libraries
from dermcam.terminal import PIPELINE
from dermcam.terminal import paragraphs as _paragraphs

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
    """Except a verbatim block (``\\b``, as the examples are), which keeps its lines."""
    group = typer.main.get_command(app)
    assert len(group.commands) >= 8
    for name, command in group.commands.items():
        for paragraph in (command.help or "").split("\n\n"):
            assert paragraph and ("\n" not in paragraph or paragraph.startswith("\b")), name


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


# ------------------------------------------------------------ one command line

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)


def _help(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert r.exit_code == 0, r.output
    return r.output


def _options(flag: str) -> dict[str, object]:
    """``{command: option}`` for every command that has the option ``flag``."""
    return {name: p for name, cmd in GROUP.commands.items() for p in cmd.params
            if p.param_type_name == "option" and flag in p.opts + p.secondary_opts}


def test_version_prints_the_package_version():
    for args in (["--version"], ["--version", "train"]):  # eager: before any command
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert r.output == f"dermcam {dermcam.__version__}\n"


def test_help_lists_the_commands_in_pipeline_order():
    assert PIPELINE == ("demo", "download", "synth", "info", "models", "train", "evaluate",
                        "explain", "probe", "report", "audit", "predict")
    assert set(PIPELINE) == set(GROUP.commands)
    assert GROUP.list_commands(typer.Context(GROUP)) == list(PIPELINE)
    panel = _help().split("Commands")[1]
    assert re.findall(r"^│ (\w+) ", panel, flags=re.M) == list(PIPELINE)


@pytest.mark.parametrize("name", [None, *PIPELINE])
def test_flags_show_no_type_placeholder(name):
    """Typer prints ``<bool>`` after a flag unless told otherwise; a flag takes no value."""
    text = _help(*([name] if name else []))
    assert "<bool>" not in text
    cmd = GROUP if name is None else GROUP.commands[name]
    ctx = typer.Context(cmd)
    flags = [p for p in cmd.get_params(ctx) if getattr(p, "is_flag", False)]
    assert flags  # --help at least
    for p in flags:
        assert not p.display_type_rich(ctx), (name, p.opts)
    valued = [p for p in cmd.get_params(ctx) if not getattr(p, "is_flag", True)]
    if valued:  # options that take a value keep typer's placeholder
        assert any(p.display_type_rich(ctx) for p in valued)


def _examples(command) -> list[str]:
    """The lines of the verbatim ``Examples:`` block of a command's help."""
    block = [p for p in command.help.split("\n\n") if p.startswith("\b\nExamples:\n")]
    assert len(block) == 1, command.name
    return [line.strip() for line in block[0].splitlines()[2:]]


@pytest.mark.parametrize("name", PIPELINE)
def test_every_command_shows_examples_that_parse(name):
    assert "Examples:" in _help(name)
    command = GROUP.commands[name]
    lines = _examples(command)
    assert 1 <= len(lines) <= 3, lines
    for line in lines:
        words = shlex.split(line)
        assert words[:2] == ["dermcam", name], line
        # the command's own parser: an unknown option, a missing required one, a value
        # of the wrong type or a stray positional word fails here
        ctx = command.make_context(name, words[2:])
        assert not ctx.args, line


def test_device_defaults_to_auto_everywhere():
    devices = _options("--device")
    assert {"evaluate", "explain", "probe", "audit", "predict"} <= set(devices)
    assert {name: p.default for name, p in devices.items()} == dict.fromkeys(devices, "auto")


def test_one_seed_default():
    from dermcam.config import TrainConfig

    seeds = {name: p.default for name, p in _options("--seed").items()}
    assert seeds.pop("probe") is None  # probe's default is the run's own seed
    assert {"synth", "train", "demo"} <= set(seeds)
    assert set(seeds.values()) == {0} == {TrainConfig.__dataclass_fields__["seed"].default}


def test_every_output_is_out_with_o():
    outs = _options("--out")
    assert set(outs) == {"synth", "train", "demo", "download", "report", "audit", "predict"}
    for name, p in outs.items():
        assert p.opts == ["--out", "-o"] and p.name == "out", name
    assert outs["synth"].required and outs["download"].required
    for name, cmd in GROUP.commands.items():  # no other spelling, no positional OUT
        names = {o for p in cmd.params for o in p.opts}
        assert not names & {"--to", "--output", "--dest", "out"}, name


def test_artifact_labels_file_and_artifact_names_are_two_options():
    labels = _options("--artifact-labels")
    assert set(labels) == {"evaluate", "explain", "probe", "audit"}
    for p in labels.values():
        assert p.opts == ["--artifact-labels"] and p.name == "artifact_labels"
    names = _options("--artifacts")
    assert set(names) == {"probe"} and names["probe"].name == "artifacts"


#: Options several commands share whose defaults differ on purpose, and why.
DEFAULTS_DIFFER = {
    "--out": "each command writes its own kind of output",
    "--seed": "probe's default is the run's seed (checked above)",
    "--overwrite": "re-running the demo replaces the earlier demo",
    "--image-size": "the demo trains on small synthetic images",
    "--epochs": "the demo is short",
    "--batch-size": "each stage keeps a different number of tensors per image",
    "--precision": "probe scores in float32, as evaluate does; training picks bf16 where native, "
                   "and so does audit's whole run",
    "--placements": "audit's default is its speed budget's (two per painted artifact)",
}


def test_shared_options_share_their_default():
    shared: dict[str, dict[str, object]] = {}
    for name, cmd in GROUP.commands.items():
        for p in cmd.params:
            if p.param_type_name == "option":
                shared.setdefault(p.opts[0], {})[name] = p.default
    for flag, defaults in shared.items():
        if len(defaults) > 1 and flag not in DEFAULTS_DIFFER:
            assert len({repr(v) for v in defaults.values()}) == 1, (flag, defaults)


@pytest.mark.parametrize("name, flag", [("explain", "--methods")])
def test_help_lists_exactly_the_registrys_cam_methods(name, flag):
    """The CAM methods a command's help offers are dermcam.attribution.METHODS, in order."""
    from dermcam.attribution import METHODS

    text = " ".join(_help(name).replace("│", " ").split())
    listed = re.search(r"CAM methods? \(pytorch-grad-cam\): (.*?)[;.]", text)
    assert listed, text
    assert [m.strip() for m in listed.group(1).split(",")] == list(METHODS)
    ctx = typer.Context(GROUP.commands[name])
    [option] = [p for p in GROUP.commands[name].get_params(ctx) if flag in p.opts]
    assert "{" not in option.help  # the placeholder is filled in


def test_shared_options_read_the_same_everywhere():
    """An option several commands take has one help text, unless its meaning differs."""
    differ = {"--out", "--seed", "--image-size", "--batch-size", "--limit", "--precision",
              "--data", "--min-group", "--artifact-labels", "--device", "--method",
              "--target", "--layer"}
    helps: dict[str, set[str]] = {}
    for cmd in GROUP.commands.values():
        for p in cmd.get_params(typer.Context(cmd)):
            if p.param_type_name == "option" and p.opts[0] != "--help":
                helps.setdefault(p.opts[0], set()).add(p.help)
    for flag, texts in helps.items():
        if flag not in differ:
            assert len(texts) == 1, (flag, texts)


def test_every_declared_option_is_some_commands():
    """dermcam.options declares only what a command takes: each Annotated alias there is a
    parameter's type in some command (a left-over declaration would drift unseen)."""
    import typing

    from dermcam import cli, options

    declared = {n for n, v in vars(options).items()
                if typing.get_origin(v) is typing.Annotated}
    used = set()
    for fn in [cli._main, *(c.callback for c in GROUP.commands.values())]:
        for hint in fn.__annotations__.values():
            used.update(n for n in declared if hint == f"opt.{n}")
    assert declared - used == set()
    assert len(declared) > 60
