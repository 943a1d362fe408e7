"""Do two demo folders hold the same results? For checking that a refactor changed no output.

    python benchmarks/same_outputs.py dermcam-demo-before dermcam-demo-after

Compares every file byte for byte. A file that differs is reported as "same but for clocks"
when the only differences are what a second run always changes: timestamps, durations and
speeds, the folder's own path, and the data fingerprint (it hashes file mtimes). Weights files
(model.pt) are compared tensor by tensor. Prints one line per differing file and a count;
exits 1 when any result differs.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

#: Keys and CSV columns that hold clocks, speeds or paths, never results.
CLOCKS = re.compile(r"((^|_)at|created|updated|seconds|per_second|per_image|elapsed_s|time_s|"
                    r"fingerprint|trained_on|location)$")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+\-Z0-9:]*")


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _masked(obj, root: str):
    """JSON-like ``obj`` with clock and path values replaced by a placeholder."""
    if isinstance(obj, dict):
        return {k: "<clock>" if CLOCKS.search(str(k)) else _masked(v, root)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_masked(v, root) for v in obj]
    if isinstance(obj, str):
        return STAMP.sub("<time>", obj.replace(root, "<root>"))
    return obj


def _text(p: Path, root: str) -> str:
    """A text file with timestamps, the folder's path and fingerprints masked; in CSV files the
    clock columns are blanked."""
    lines = STAMP.sub("<time>", p.read_text(errors="replace").replace(root, "<root>"))
    lines = re.sub(r"(Fingerprint</dt><dd>|\"fingerprint\": \")[0-9a-f]{16}", r"\1<fp>", lines)
    lines = re.sub(r"\d+(\.\d+)? ?(s|ms|images/s)\b", "<dur>", lines)
    if p.suffix != ".csv":
        return lines
    rows = [r.split(",") for r in lines.splitlines()]
    drop = {i for i, c in enumerate(rows[0]) if CLOCKS.search(c)} if rows else set()
    return "\n".join(",".join(c for i, c in enumerate(r) if i not in drop) for r in rows)


def same_but_clocks(a: Path, b: Path, root_a: str, root_b: str) -> bool:
    if a.suffix == ".pt":
        import torch

        x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
        return _same_weights(_masked(x, root_a), _masked(y, root_b))
    if a.suffix == ".json":
        import json

        return _masked(json.loads(a.read_text()), root_a) == _masked(json.loads(b.read_text()),
                                                                     root_b)
    if a.suffix in (".csv", ".html", ".log", ".txt", ".md"):
        return _text(a, root_a) == _text(b, root_b)
    return False


def _same_weights(x, y) -> bool:
    import torch

    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same_weights(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_same_weights(u, v) for u, v in zip(x, y))
    if torch.is_tensor(x):
        return torch.is_tensor(y) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args(argv)
    files = {p.relative_to(args.before) for p in args.before.rglob("*") if p.is_file()}
    other = {p.relative_to(args.after) for p in args.after.rglob("*") if p.is_file()}
    bad = 0
    for rel in sorted(files ^ other):
        print(f"only in {'before' if rel in files else 'after'}: {rel}")
        bad += 1
    clocks = 0
    for rel in sorted(files & other):
        a, b = args.before / rel, args.after / rel
        if _digest(a) == _digest(b):
            continue
        if same_but_clocks(a, b, str(args.before.resolve()), str(args.after.resolve())):
            clocks += 1
            print(f"same but for clocks: {rel}")
        else:
            bad += 1
            print(f"DIFFERENT: {rel}")
    n = len(files & other)
    print(f"{n - clocks - bad} of {n} files byte-identical, {clocks} same but for clocks, "
          f"{bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
