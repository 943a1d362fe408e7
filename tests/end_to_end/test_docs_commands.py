"""Every ``dermcam ...`` command the README and docs/ show must still parse.

Each command line in a shell code block of README.md or docs/*.md (fenced, with no
language or ``bash``/``sh``/``console``; tag listings ``text``), with ``$ `` prompts,
``\\`` continuations, ``&&``/``;`` chains and trailing comments handled, and each inline
code span that starts with ``dermcam ``, is run in-process with ``--help`` appended.
``--help`` is eager, so placeholders (``DATA``, ``RUN``) need no values, but click still
parses every option first: an option that does not exist fails. Two things ``--help`` lets
through are caught by first parsing the words with the command's own parser: positional
words a command does not take (``dermcam synth data/synth`` once ``synth`` takes
``--out``), and an option left without its value (which would swallow ``--help`` and run
the command). Tests are named ``file:line`` so a failure names the line to fix.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from dermcam.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "zsh"}  # python, json, ... blocks skipped
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
CHAIN = {"&&", "||", ";", "|", "&"}
LAUNCHERS_TO_SKIP = {"pip", "pip3", "apt-get", "apt", "git"}  # 'pip install dermcam' is no call


def _words(text: str) -> list[str]:
    """Shell words of one logical line, comments dropped, with chain operators
    (``&&``, ``;``, ``|``) as words of their own."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _dermcam_args(words: list[str]) -> list[list[str]]:
    """The arguments of every ``dermcam`` call among ``words`` (one per chained command)."""
    calls, segment = [], []
    for w in [*words, ";"]:
        if w not in CHAIN:
            segment.append(w)
            continue
        if segment and segment[0] not in LAUNCHERS_TO_SKIP and "dermcam" in segment:
            calls.append(segment[segment.index("dermcam") + 1:])
        segment = []
    return calls


def _fenced_commands(lines: list[str]):
    """(line number, arguments) of each ``dermcam`` call in the fenced code blocks."""
    in_block, shell, pending, start = False, False, "", 0
    for no, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence:
            in_block, pending = not in_block, ""
            shell = in_block and fence.group(2).lower() in SHELL_BLOCKS
            continue
        if not shell:
            continue
        text = line.strip()
        if not pending:
            start = no
            if text.startswith("$ "):
                text = text[2:]
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        logical, pending = pending + text, ""
        if "dermcam" not in logical or logical.startswith(("#", ">>>", "from ", "import ")):
            continue
        try:
            words = _words(logical)
        except ValueError as e:  # unbalanced quotes
            yield start, None, f"cannot split: {e}"
            continue
        for args in _dermcam_args(words):
            yield start, args, None


def _inline_commands(lines: list[str]):
    """(line number, arguments) of each inline code span that starts with ``dermcam ``.

    Prose notation is read as the reader would: ``[--name NAME]`` is the option without its
    brackets, ``…``/``...`` mark an omitted rest."""
    text, in_block = [], False
    for line in lines:  # blank out fenced blocks, keeping line numbers
        if FENCE.match(line):
            in_block = not in_block
            text.append("")
        else:
            text.append("" if in_block else line)
    prose = "\n".join(text)
    for m in INLINE.finditer(prose):
        span = " ".join(m.group(1).split())
        if not span.startswith("dermcam ") and span != "dermcam":
            continue
        no = prose.count("\n", 0, m.start()) + 1
        span = span.replace("[", " ").replace("]", " ")
        try:
            words = [w for w in shlex.split(span) if w not in ("...", "…")]
        except ValueError as e:
            yield no, None, f"cannot split: {e}"
            continue
        yield no, words[1:], None


def _collect():
    cases = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        rel = path.relative_to(ROOT).as_posix()
        for kind, found in (("", _fenced_commands(lines)), ("inline ", _inline_commands(lines))):
            for no, args, problem in found:
                shown = "dermcam " + " ".join(args) if args is not None else ""
                cases.append(pytest.param(args, problem, id=f"{rel}:{no} {kind}{shown}"[:150]))
    return cases


CASES = _collect()


def _parse_problem(args: list[str]) -> str | None:
    """Why ``dermcam ARGS`` would not parse (None if it does), without running anything.

    Walks the command tree with each level's own option parser: unknown options, options
    without their value and unknown commands raise; words left over at a command (not a
    group) are positional arguments it does not take."""
    cmd, name, ctx = typer.main.get_command(app), "dermcam", None
    args = list(args)
    while True:
        ctx = cmd.context_class(cmd, info_name=name, parent=ctx)
        try:
            _opts, rest, _order = cmd.make_parser(ctx).parse_args(args=args)
        except Exception as e:  # click's UsageError and its subclasses
            return f"{name}: {getattr(e, 'format_message', e.__str__)()}"
        if not hasattr(cmd, "get_command"):  # a command, not a group
            return f"{name}: unexpected extra argument(s) {rest}" if rest else None
        if not rest:
            return None
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            return f"{name}: no such command {rest[0]!r}"
        cmd, name, args = sub, f"{name} {rest[0]}", rest[1:]


def test_commands_were_found():
    assert len(CASES) >= 20, "the docs' commands were not found: has the collector broken?"
    readme = [c for c in CASES if c.id.startswith("README.md:")]
    assert any(c.values[0] == ["demo"] for c in readme), "README must show 'dermcam demo'"


@pytest.mark.parametrize(("args", "problem"), CASES)
def test_documented_command_parses(args, problem):
    assert problem is None, problem
    parse = _parse_problem(args)
    assert parse is None, parse
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES})"


def test_readme_shows_an_image_that_exists():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(
        r"<img[^>]+src=\"([^\"]+)\"", text)
    assert targets, "README.md has no image"
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing, f"README.md links images that do not exist: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    lines, in_block, found = path.read_text(encoding="utf-8").splitlines(), False, set()
    for line in lines:
        if FENCE.match(line):
            in_block = not in_block
        elif not in_block and line.startswith("#"):
            found.add(_slug(line.lstrip("#")))
    return found


def test_relative_links_resolve():
    """Every relative link in README.md and docs/*.md points at a file or folder that
    exists, and a link into a Markdown file's heading (``page.md#heading``) at a heading
    that exists; web addresses are not checked."""
    broken = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target, _, anchor = m.group(1).partition("#")
            if re.match(r"^[a-z]+:", target):
                continue
            dest = path.parent / target if target else path
            ok = dest.exists() and (not anchor or dest.suffix != ".md"
                                    or anchor in _anchors(dest))
            if not ok:
                no = text.count("\n", 0, m.start()) + 1
                broken.append(f"{path.relative_to(ROOT).as_posix()}:{no} -> {m.group(1)}")
    assert not broken, "broken links:\n" + "\n".join(broken)
