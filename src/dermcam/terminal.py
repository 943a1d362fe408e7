"""The terminal side of the ``dermcam`` command line: how its help reads (options are in
:mod:`dermcam.options`) and how tables, findings and progress are printed."""

from __future__ import annotations

import contextlib
import inspect
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.findings import display_names, write_findings
from dermcam.options import CAM_METHODS
from dermcam.views import findings_lines


def paragraphs(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line: typer's help keeps hard line breaks, which
    break mid-sentence in a wide terminal. A paragraph starting with ``\\b`` keeps its breaks
    (click's verbatim blocks)."""
    if not doc:
        return doc
    return "\n\n".join(p if p.startswith("\b") else " ".join(s.strip() for s in p.splitlines())
                       for p in inspect.cleandoc(doc).split("\n\n"))


#: The order ``dermcam --help`` lists the commands in: the order a study runs them.
PIPELINE = ("demo", "download", "synth", "info", "models", "train", "evaluate", "explain",
            "probe", "report", "audit", "predict")


class BareFlags:
    """Help that shows flags with an empty metavar (typer would print ``--overwrite <bool>``)
    and :data:`CAM_METHODS` in a help text replaced by the registry's methods."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
            if CAM_METHODS in (getattr(p, "help", None) or ""):
                from dermcam.attribution import METHODS

                p.help = p.help.replace(CAM_METHODS, ", ".join(METHODS))
        return params


class Command(BareFlags, typer.core.TyperCommand):
    pass


class Group(BareFlags, typer.core.TyperGroup):
    """The top-level group: commands listed in :data:`PIPELINE` order, any other after."""

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: PIPELINE.index(n) if n in PIPELINE else len(PIPELINE))


class App(typer.Typer):
    """A Typer app whose commands' docstrings are rewrapped by the help formatter."""

    def command(self, name: str | None = None, **kwargs):
        register = super().command
        kwargs.setdefault("cls", Command)

        def decorator(f):
            if kwargs.get("help") is None:
                kwargs["help"] = paragraphs(f.__doc__)
            return register(name, **kwargs)(f)

        return decorator


# Wide enough for the comparison tables when output goes to a file or CI log.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
#: Set by the app's callback from ``--debug``, ``--quiet``, ``--verbose``.
state = {"debug": False, "quiet": False, "verbose": False}


def names(text: str | None) -> list[str]:
    """A comma-separated option's names, blanks dropped."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def numbers(text: str | None, kind=float) -> tuple | None:
    """A comma-separated option's numbers (None when not given), refused in one line."""
    try:
        return tuple(kind(v) for v in text.split(",")) if text else None
    except ValueError:
        raise DermcamError(f"expected comma-separated numbers, got {text!r}") from None


def show(table, to: Console | None = None) -> None:
    """Print a :class:`dermcam.views.Table` (None prints nothing), every string as plain text:
    rich would read a CI cell ``0.03 [n/a, 0.06]`` as markup."""
    if table is None:
        return
    t = Table(title=Text(table.title))
    for i, c in enumerate(table.columns):
        t.add_column(Text(c), justify="right" if i >= table.numeric_from else "left")
    for r in table.rows:
        t.add_row(*map(Text, r))
    (to or console).print(t)
    if table.note:
        (to or console).print(Text("  " + table.note))


def detail(run_dir: Path, heading: str, tables) -> None:
    """A stage's detail tables: printed with ``--verbose``, always appended to
    ``RUN/dermcam.log`` as plain text."""
    tables = [t for t in tables if t is not None]
    if state["verbose"]:
        for t in tables:
            show(t)
    path = Path(run_dir) / runmod.LOG
    if not path.parent.is_dir():
        return
    with path.open("a", encoding="utf-8") as fh:
        log = Console(file=fh, width=160, no_color=True, highlight=False)
        log.rule(f"{heading} ({runmod.now()})")
        for t in tables:
            show(t, log)


STYLE = {"alarm": "bold red", "caution": "yellow", "ok": "green", "not_run": "dim"}


def answer(run_dir: Path, topics: tuple[str, ...] = ()) -> None:
    """Write ``RUN/findings.json`` and print the findings on ``topics`` (prefixes; all when
    empty)."""
    _, found = write_findings(run_dir)
    lines = findings_lines(found, display_names(runmod.Run.open(run_dir), found), topics)
    width = max((len(name) for name, _, _ in lines), default=0)
    for name, status, text in lines:
        console.print(Text.assemble((name.ljust(width), "bold"), "  ",
                                    (f"{status.replace('_', ' '):<8}", STYLE[status]), text),
                      soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str):
    """Yield a ``callback(done, total)`` that drives a rich progress bar."""
    if state["quiet"]:
        yield None
        return
    from rich import progress as rp

    with rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                     rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                     console=console, transient=False) as prog:
        task = prog.add_task(description, total=None)

        def cb(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield cb
