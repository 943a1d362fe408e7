"""The external sets a run records, as the report and the terminal read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.formatting import metric_label


def _as_run(run: runmod.Run | str | Path, manifest: dict[str, Any] | None) -> runmod.Run:
    """``run`` itself, or its folder opened (with ``manifest`` where given)."""
    if isinstance(run, runmod.Run):
        return run
    return runmod.Run(run, manifest) if manifest else runmod.Run.open(run)


def external_sets(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                  ) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, folder, stage entry)`` of every external set the run records."""
    run = _as_run(run, manifest)
    out = []
    for key, entry in sorted(run.stages.items()):
        if key.startswith("external:") and "/" not in key and isinstance(entry, dict):
            name = key.split(":", 1)[1]
            out.append((name, run.external(name).root, entry))
    return out


def external_audits(run: runmod.Run | str | Path, manifest: dict[str, Any] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``{name: {"explain" | "probe": stage entry}}`` of the external sets audited."""
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
