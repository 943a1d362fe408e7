"""The external sets a run records, as the report and the terminal read them.

``dermcam evaluate RUN --data OTHER`` (:func:`dermcam.stages.evaluate.run_evaluate`) scores
another data set into ``RUN/external/<name>/``, stage ``external:<name>``; ``explain
--data`` and ``probe --data`` audit its masked images into the same folder, stages
``external:<name>/explain`` and ``external:<name>/probe`` (which images, and the helpers
they share: :mod:`dermcam.audit_set`). Here: which sets a run holds
(:func:`external_sets`, :func:`external_audits`) and the internal-versus-external table
(:func:`side_by_side`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.formatting import metric_label


def _as_run(run: runmod.Run | str | Path, manifest: dict[str, Any] | None) -> runmod.Run:
    """``run`` itself, or the run folder ``run`` opened (with ``manifest`` where given,
    else read from the folder)."""
    if isinstance(run, runmod.Run):
        return run
    return runmod.Run(run, manifest) if manifest else runmod.Run.open(run)


def external_sets(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                  ) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, folder, stage entry)`` of every external set the run records.

    ``run``: a :class:`dermcam.run.Run`, or a run folder (its manifest read unless
    ``manifest`` is given)."""
    run = _as_run(run, manifest)
    out = []
    for key, entry in sorted(run.stages.items()):
        if key.startswith("external:") and "/" not in key and isinstance(entry, dict):
            name = key.split(":", 1)[1]
            out.append((name, run.external(name).root, entry))
    return out


def external_audits(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``{name: {"explain": stage entry, "probe": stage entry}}`` of every external set
    that ``explain --data`` or ``probe --data`` ran on (each stage only where it ran).

    ``run``: a :class:`dermcam.run.Run`, or a run folder (as :func:`external_sets`)."""
    run = _as_run(run, manifest)
    out: dict[str, dict[str, Any]] = {}
    for key, entry in sorted(run.stages.items()):
        if key.startswith("external:") and "/" in key and isinstance(entry, dict):
            name, stage = key.split(":", 1)[1].split("/", 1)
            out.setdefault(name, {})[stage] = entry
    return out


#: (metrics.json block, key, column title) of the internal-versus-external table; the
#: titles are the metric-label registry's short labels.
SIDE_BY_SIDE = tuple((block, key, metric_label(key, short=True)) for block, key in (
    ("threshold_free", "roc_auc"), ("threshold_free", "average_precision"),
    ("at_threshold", "sensitivity"), ("at_threshold", "specificity"),
    ("at_threshold", "balanced_accuracy")))


def side_by_side(internal: dict[str, Any] | None, externals: list[tuple[str, dict[str, Any]]]
                 ) -> list[dict[str, Any]]:
    """One record per model and test set: ``{"model", "set", "n", "n_malignant", key:
    {"value", "lo", "hi"}}`` for the keys of :data:`SIDE_BY_SIDE`, the internal test set
    first (``set`` = ``"internal test"``), then each external set by name."""
    sets = ([("internal test", internal)] if internal else []) + list(externals)
    models = list(dict.fromkeys(m for _, res in sets for m in (res.get("models") or {})))
    rows = []
    for m in models:
        for set_name, res in sets:
            entry = (res.get("models") or {}).get(m)
            if entry is None:
                continue
            test = res.get("test") or {}
            row = {"model": m, "set": set_name, "n": test.get("n"),
                   "n_malignant": test.get("n_malignant")}
            for block, key, _ in SIDE_BY_SIDE:
                row[key] = (entry.get(block) or {}).get(key) or {}
            rows.append(row)
    return rows
