"""The demo's figures, measured as a new user gets them: wall time, AUCs, localisation, shortcut.

Runs ``dermcam -q demo`` once per seed (and ``--repeats`` times at the first seed, for a
median wall time) in a temporary folder, then prints per run: wall seconds, each model's
test ROC AUC, the default CAM layer's median pixel AUROC and undefined share on the test
images, the sanity verdict, the planted-shortcut ratio CIs for the shortcut model and
its control and the shortcut model's mass against the control's on the same images, and
the run's stage times.

    python benchmarks/bench_demo.py --seeds 0,1,2 --repeats 3
    python benchmarks/bench_demo.py --seeds 0 -- --epochs 6     # extra demo options
    python benchmarks/bench_demo.py --existing dermcam-demo      # a finished demo's figures
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(seed: int, extra: list[str], root: Path) -> dict:
    out = root / f"demo-{seed}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "dermcam", "-q", "demo", "--out", str(out), "--seed",
           str(seed), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"demo failed (seed {seed}):\n{r.stderr[-2000:]}")
    return summarise(out, seed, wall)


def summarise(out: Path, seed: int, wall: float | None) -> dict:
    """One demo folder's figures (``wall``: its seconds, when this script timed it)."""
    run = out / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "attention_summary.json").read_text())
    row = {"seed": seed, "wall_s": None if wall is None else round(wall, 1)}
    for name, m in metrics["models"].items():
        row[f"auc_{name}"] = round(m["threshold_free"]["roc_auc"]["value"], 3)
    for key, t in summary["tests"].items():
        g = t.get("uniform_guard") or {}
        model = key.split("/")[0]
        row[f"layer_{model}"] = f"{key.split('/')[1]}@{t.get('layer')}"
        row[f"pixauroc_{model}"] = round(g.get("median_pixel_auroc", float("nan")), 3)
        full = (t.get("sanity") or {}).get("full") or {}
        row[f"sanity_{model}"] = full.get("verdict")
    und = {}
    for r_ in summary["by_class"]:
        if r_["metric"] == "pixel_auroc":
            n, k = und.get(r_["model"], (0, 0))
            und[r_["model"]] = (n + r_["n"] + r_["n_nan"], k + r_["n_nan"])
    for model, (n, k) in und.items():
        row[f"undef_{model}"] = round(k / n, 3) if n else None
    exp_path = run / "shortcut_experiment.json"
    if exp_path.exists():
        exp = json.loads(exp_path.read_text())
        for role, x in exp["runs"].items():
            row[f"ratio_{role}"] = (f"{x['ratio']:.2f} [{x['ratio_ci_low']:.2f}, "
                                    f"{x['ratio_ci_high']:.2f}]")
            row[f"auc_{role}"] = round(x["test_auc"], 3)
        rel = exp.get("relative_to_control") or {}
        if rel.get("n"):
            row["shortcut_vs_control"] = (f"{rel['relative']:.2f} [{rel['ci_low']:.2f}, "
                                          f"{rel['ci_high']:.2f}]")
        row["caught"] = exp["caught"]
        row["caught_vs_control"] = exp.get("caught_vs_control")
        row["caught_by_probe"] = exp.get("caught_by_probe")
        pvc = exp.get("probe_vs_control") or {}
        if pvc.get("n"):
            row["probe_vs_control"] = (f"{pvc['diff']:+.3f} [{pvc['ci_low']:+.3f}, "
                                       f"{pvc['ci_high']:+.3f}]")
        row["caught_by_probe_vs_control"] = exp.get("caught_by_probe_vs_control")
    for stage, entry in json.loads((run / "manifest.json").read_text())["stages"].items():
        if entry.get("wall_time_s") is not None:
            row[f"s_{stage}"] = entry["wall_time_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=1, help="runs at the first seed")
    ap.add_argument("--existing", nargs="+", type=Path, metavar="DEMO_FOLDER",
                    help="instead: summarise these finished demo folders (no wall time)")
    ap.add_argument("extra", nargs="*", help="options passed to dermcam demo (after --)")
    args = ap.parse_args()
    if args.existing:
        for out in args.existing:
            seed = json.loads((out / "run" / "manifest.json").read_text())["seed"]
            print(json.dumps(summarise(out, seed, None)), flush=True)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = [seeds[0]] * args.repeats + seeds[1:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in plan:
            rows.append(one(seed, args.extra, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    walls = [r["wall_s"] for r in rows if r["seed"] == seeds[0]]
    print(f"median wall at seed {seeds[0]} over {len(walls)} run(s): "
          f"{statistics.median(walls):.1f} s")


if __name__ == "__main__":
    main()
