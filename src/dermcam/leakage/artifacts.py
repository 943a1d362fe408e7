"""Localisation metrics split by artifact presence (hair, ruler, ink, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from dermcam.data.artifact_labels import split_by_presence
from dermcam.leakage.checks import is_constant, require_columns
from dermcam.leakage.compare import bootstrap_mean_ci

__all__ = ["presence_comparison", "artifact_summary"]


def presence_comparison(df: pd.DataFrame, columns: Sequence[str], metrics: Sequence[str],
                        n_boot: int = 1000, seed: int = 0,
                        cluster_col: str | None = None) -> list[dict]:
    """Each metric with versus without each 0/1 artifact flag in ``columns``: the rows of
    :func:`dermcam.data.artifact_labels.split_by_presence` (raw Mann-Whitney ``p``) with NaN
    counts, bootstrap CIs of both means (whole ``cluster_col`` clusters where shared) and
    ``reason`` (``""``, ``"too_few"``, ``"constant_metric"``: no test)."""
    from dermcam.stats import cluster_info

    require_columns(df, [*columns, *metrics])
    rows = split_by_presence(df, list(columns), list(metrics))
    groups = (df[cluster_col].to_numpy(dtype=object)
              if cluster_col is not None and cluster_col in df.columns else None)
    clustered = groups is not None and cluster_info(groups) is not None
    out = []
    for row, (col, metric) in zip(rows, [(c, m) for c in columns for m in metrics],
                                  strict=True):
        flag = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        v = pd.to_numeric(df[metric], errors="coerce").to_numpy(dtype=np.float64)
        r = dict(row)
        for side, sel in (("with", flag == 1), ("without", flag == 0)):
            vals = v[sel]
            g = groups[sel][~np.isnan(vals)] if clustered else None
            r[f"n_nan_{side}"] = int(np.isnan(vals).sum())
            r[f"ci_{side}"] = list(bootstrap_mean_ci(vals[~np.isnan(vals)], n_boot=n_boot,
                                                     seed=seed, groups=g))
        r["ci_method"] = "percentile cluster bootstrap" if clustered else \
            "percentile bootstrap"
        both = v[((flag == 1) | (flag == 0)) & ~np.isnan(v)]
        if not (r["n_with"] and r["n_without"]):
            r["reason"] = "too_few"
        elif is_constant(both):
            r.update(reason="constant_metric", p=float("nan"))
        else:
            r["reason"] = ""
        out.append(r)
    return out


def artifact_summary(df: pd.DataFrame, artifacts: Iterable[str],
                     by: Sequence[str] = ("model", "method")) -> pd.DataFrame:
    """Heatmap mass on artifacts (``mass_<name>``) and excess leakage, per ``by`` group x
    artifact x presence (``artifact_<name>``): ``n``, ``mean_mass``, ``n_mass``,
    ``mean_excess_leakage``, ``n_excess``."""
    artifacts = [artifacts] if isinstance(artifacts, str) else list(artifacts)
    by = [by] if isinstance(by, str) else list(by)
    require_columns(df, [*by, "excess_leakage",
                  *[f"artifact_{a}" for a in artifacts], *[f"mass_{a}" for a in artifacts]])
    rows = []
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for name in artifacts:
            present = pd.to_numeric(g[f"artifact_{name}"], errors="coerce")
            for flag in (False, True):
                sel = g[(present == 1) if flag else (present == 0)]
                mass = pd.to_numeric(sel[f"mass_{name}"], errors="coerce")
                exc = pd.to_numeric(sel["excess_leakage"], errors="coerce")
                rows.append({
                    **dict(zip(by, key, strict=True)), "artifact": name, "present": flag,
                    "n": len(sel),
                    "mean_mass": float(mass.mean()) if mass.notna().any() else np.nan,
                    "n_mass": int(mass.notna().sum()),
                    "mean_excess_leakage": float(exc.mean()) if exc.notna().any() else np.nan,
                    "n_excess": int(exc.notna().sum())})
    cols = [*by, "artifact", "present", "n", "mean_mass", "n_mass", "mean_excess_leakage",
            "n_excess"]
    return pd.DataFrame(rows, columns=cols)
