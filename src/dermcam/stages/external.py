"""The external sets a run records, as the report and the terminal read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.formatting import metric_label


def _external_entries(run: runmod.Run | str | Path, manifest: dict[str, Any] | None
                      ) -> tuple[runmod.Run, list[tuple[str, dict[str, Any]]]]:
    """``(run, [(key after "external:", stage entry)])``; ``run`` itself, or its folder opened
    (with ``manifest`` where given)."""
    if not isinstance(run, runmod.Run):
        run = runmod.Run(run, manifest) if manifest else runmod.Run.open(run)
    return run, [(key.split(":", 1)[1], entry) for key, entry in sorted(run.stages.items())
                 if key.startswith("external:") and isinstance(entry, dict)]


def external_sets(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                  ) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, folder, stage entry)`` of every external set the run records."""
    run, entries = _external_entries(run, manifest)
    return [(name, run.external(name).root, entry) for name, entry in entries if "/" not in name]


def external_audits(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``{name: {"explain" | "probe": stage entry}}`` of the external sets audited."""
    out: dict[str, dict[str, Any]] = {}
    for key, entry in _external_entries(run, manifest)[1]:
        if "/" in key:
            name, stage = key.split("/", 1)
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
    """One record per model and test set (internal first) with the :data:`SIDE_BY_SIDE`
    metrics."""
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
