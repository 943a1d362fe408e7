"""A real-image shortcut experiment: does the audit find an artifact a model was taught to
rely on, on real dermoscopy, and leave its control alone?

From a folder of real images with lesion masks and Bissoto et al.'s artifact labels
(e.g. ``../shared/isic2017-dev``: ``labels.csv``, ``images/``, ``masks/``,
``isic_bias_dev.csv``), for each artifact and seed it builds two data sets in dermcam's
generic layout that share one test split (the artifact on half of each class, so it is
independent of the label there):

* ``shortcut``: training images chosen so the artifact marks malignancy (on 80 % of
  malignant and 10 % of benign training images);
* ``control``: the artifact on half of each class in training too.

Then, as a user would, with the artifact labels given::

    dermcam train DATA --out RUN --models resnet18 --weights none --image-size 128 --epochs 20 --seed S
    dermcam evaluate RUN --artifact-labels LABELS
    dermcam explain RUN --artifact-labels LABELS --methods hirescam --bench-methods hirescam
    dermcam probe RUN --artifact-labels LABELS --probes lesion_removed,background_removed,context_swap,hot_spots
    dermcam report RUN

and prints one row per run: test ROC AUC, the context swap (change in P(malignant) when the
lesion sits on surroundings with vs without the real artifact, 95 % CI, and its control
swap), and the artifact's finding (status and sentence).

    python benchmarks/bench_real_shortcut.py --data ../shared/isic2017-dev \\
        --labels ../shared/isic2017-dev/isic_bias_dev.csv --artifacts ruler,dark_corner \\
        --seeds 0,1 --out /tmp/real-shortcut
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

TEST_PER_SIDE = {"malignant": 25, "benign": 100}
PROBES = "lesion_removed,background_removed,context_swap,hot_spots"


def read_labels(data: Path, labels: Path) -> pd.DataFrame:
    lab = pd.read_csv(data / "labels.csv", dtype={"image_id": str})
    bias = pd.read_csv(labels, sep=";")
    bias["image_id"] = bias["image"].astype(str).str.replace(r"\.(png|jpg)$", "", regex=True)
    return lab.merge(bias.drop(columns=["label"], errors="ignore"), on="image_id")


def splits(df: pd.DataFrame, artifact: str, seed: int) -> dict[str, pd.DataFrame]:
    """``{"shortcut": rows, "control": rows}``, each with a ``split`` column; both share the
    test rows."""
    rng = np.random.default_rng(seed)
    parts = {}
    for cls in ("malignant", "benign"):
        for has in (1, 0):
            ids = df[(df["label"] == cls) & (df[artifact] == has)]["image_id"].to_numpy()
            parts[cls, has] = list(rng.permutation(ids))
    test, rest = [], {}
    for (cls, has), ids in parts.items():
        n = TEST_PER_SIDE[cls]
        test += ids[:n]
        rest[cls, has] = ids[n:]
    m_x, m_o = rest["malignant", 1], rest["malignant", 0]
    b_x, b_o = rest["benign", 1], rest["benign", 0]
    n_mx = min(len(m_x), 4 * len(m_o))  # 80 % of malignant training images carry it
    n_bo = min(len(b_o), 9 * len(b_x), 300)  # 10 % of benign ones
    shortcut = m_x[:n_mx] + m_o[:round(n_mx / 4)] + b_o[:n_bo] + b_x[:round(n_bo / 9)]
    m = min(len(m_x), len(m_o))
    b = min(len(b_x), len(b_o), 166)
    control = m_x[:m] + m_o[:m] + b_x[:b] + b_o[:b]
    out = {}
    for role, train in (("shortcut", shortcut), ("control", control)):
        rows = df[df["image_id"].isin(set(train) | set(test))][["image_id", "label"]].copy()
        rows["split"] = np.where(rows["image_id"].isin(set(test)), "test", "train")
        out[role] = rows.sort_values("image_id").reset_index(drop=True)
    return out


def write_layout(rows: pd.DataFrame, data: Path, folder: Path) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for i in rows["image_id"]:
        for sub, ext in (("images", ".jpg"), ("masks", ".png")):
            dst = folder / sub / f"{i}{ext}"
            if not dst.exists():
                shutil.copyfile(data / sub / f"{i}{ext}", dst)
    rows.to_csv(folder / "labels.csv", index=False)


def dermcam(*args: str) -> float:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "dermcam", "-q", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def summarise(run: Path, artifact: str) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())["models"]["resnet18"]
    auc = metrics["threshold_free"]["roc_auc"]
    probes = json.loads((run / "probe_summary.json").read_text())["entries"]
    swap = next((e for e in probes if e["probe"] == "context_swap"
                 and e["artifact"] == artifact), {})
    found = json.loads((run / "findings.json").read_text())["findings"]
    fnd = next((f for f in found if f["topic"] == f"artifact: {artifact}"), {})
    hot = next((e for e in probes if e["probe"] == "hot_transplanted"), {})
    return {"auc": auc, "swap": swap, "finding": fnd, "hot": hot, "findings": found,
            "probes": probes}


def unplanted_alarms(found: list[dict], probes: list[dict], split: pd.DataFrame,
                     df: pd.DataFrame, planted: str) -> list[tuple]:
    """The alarms a run raises on artifacts that were not planted (``found``: its findings,
    ``probes``: its probe entries, as :func:`summarise` read them), each beside what its own
    training set offered: P(malignant) among training images with and without the artifact.
    A model can only have learned an association its training data holds, so an alarm whose
    direction the training set does not share is suspect."""
    train = df[df["image_id"].isin(split.loc[split["split"] == "train", "image_id"])]
    malignant = train["label"] == "malignant"
    rows = []
    for f in found:
        name = f["topic"].removeprefix("artifact: ")
        if not f["topic"].startswith("artifact: ") or name == planted or f["status"] != "alarm":
            continue
        swap = next(e for e in probes if e["probe"] == "context_swap" and e["artifact"] == name)
        has = train[name] == 1
        p_with, p_without = malignant[has].mean(), malignant[~has].mean()
        agrees = np.sign(swap["delta_mean"]) == np.sign(p_with - p_without)
        rows.append((name, swap["images_with"], f"{swap['delta_mean']:+.3f} "
                     f"[{swap['delta_ci_low']:+.3f}, {swap['delta_ci_high']:+.3f}]",
                     int(has.sum()), f"{p_with:.2f} vs {p_without:.2f}",
                     "yes" if agrees else "no"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--artifacts", default="ruler,dark_corner")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--reprobe", action="store_true",
                    help="probe and report again the runs already made (after a probe change)")
    args = ap.parse_args()
    df = read_labels(args.data, args.labels)
    rows, sentences, unplanted = [], [], []
    for artifact in args.artifacts.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for role, split in splits(df, artifact, seed).items():
                folder = args.out / f"{artifact}-s{seed}-{role}"
                data, run = folder / "data", folder / "run"
                write_layout(split, args.data, data)
                times = {}
                fresh = not (run / "report.html").exists()
                if fresh:
                    times["train"] = dermcam("train", data, "--out", run, "--models",
                                             "resnet18", "--weights", "none", "--image-size",
                                             args.image_size, "--epochs", args.epochs,
                                             "--seed", seed, "--overwrite")
                    times["evaluate"] = dermcam("evaluate", run, "--artifact-labels",
                                                args.labels)
                    times["explain"] = dermcam("explain", run, "--artifact-labels", args.labels,
                                               "--methods", "hirescam", "--bench-methods",
                                               "hirescam")
                if fresh or args.reprobe:
                    times["probe"] = dermcam("probe", run, "--artifact-labels", args.labels,
                                             "--probes", PROBES)
                    times["report"] = dermcam("report", run)
                s = summarise(run, artifact)
                sw, f, auc = s["swap"], s["finding"], s["auc"]
                n_train = int((split["split"] == "train").sum())
                rows.append((artifact, seed, role, n_train, int((split["split"] == "test").sum()),
                             f"{auc['value']:.3f} [{auc['lo']:.3f}, {auc['hi']:.3f}]",
                             f"{sw.get('delta_mean', float('nan')):+.3f} "
                             f"[{sw.get('delta_ci_low', float('nan')):+.3f}, "
                             f"{sw.get('delta_ci_high', float('nan')):+.3f}]",
                             f"{sw.get('control_mean', float('nan')):+.3f} "
                             f"[{sw.get('control_ci_low', float('nan')):+.3f}, "
                             f"{sw.get('control_ci_high', float('nan')):+.3f}]",
                             f"{s['hot'].get('delta_mean', float('nan')):+.3f} "
                             f"[{s['hot'].get('delta_ci_low', float('nan')):+.3f}, "
                             f"{s['hot'].get('delta_ci_high', float('nan')):+.3f}]",
                             f.get("status", "-"), times.get("probe")))
                sentences.append(f"{artifact} s{seed} {role}: {f.get('sentence', '-')}")
                unplanted += [(artifact, seed, role, *u)
                              for u in unplanted_alarms(s["findings"], s["probes"], split,
                                                        df, artifact)]
                print(" | ".join(map(str, rows[-1])), flush=True)
    print("\n| artifact | seed | role | n train | n test | test ROC AUC | context swap ΔP "
          "[95 % CI] | control swap | marked regions transplanted | finding | probe s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join("-" if v is None else (f"{v:.0f}" if isinstance(v, float)
                                                     else str(v)) for v in r) + " |")
    print("\nAlarms on artifacts that were not planted, beside what the training set offered:")
    print("| planted | seed | role | alarm on | test images with it | context swap ΔP [95 % CI] "
          "| training images with it | training P(malignant) with vs without | same direction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in unplanted:
        print("| " + " | ".join(map(str, r)) + " |")
    print("\n" + "\n".join(sentences))


if __name__ == "__main__":
    main()
