"""The reference study's two scripts (``python skin_lesion_analysis.py``, ``python
gradcam_analysis.py``, in the folder holding the ISIC 2016 Part 3B files), kept working on top
of dermcam: the work is ``train`` -> ``evaluate`` -> ``explain`` in ``results_visualization/run``,
and the study's figure and file names are written as copies of the run's outputs. What differs
from the study (best checkpoint, imbalance handling, validation-chosen threshold, CIs, every
test image) is dermcam's. User errors print one line (``error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dermcam import run as runmod
from dermcam.config import EvaluateConfig, ExplainConfig, TrainConfig
from dermcam.data import detect_layout
from dermcam.errors import DermcamError
from dermcam.io import MANIFEST, write_bytes, write_csv
from dermcam.logs import quiet_libraries
from dermcam.models import DEFAULT_MODELS
from dermcam.views import confound_line, pairwise_table

__all__ = ["main_train", "main_gradcam", "train_study", "gradcam_study", "RESULTS_DIR",
           "RUN_SUBDIR", "STUDY_MODELS", "LEAKAGE_COLUMNS"]

RESULTS_DIR = "results_visualization"
RUN_SUBDIR = "run"
STUDY_MODELS = DEFAULT_MODELS  # the study's three: dermcam's default models
#: The study's own names for its models (its ``--models`` may use them).
STUDY_ALIASES = {"efficientnet": "efficientnet_b0", "mobilenet": "mobilenet_v2"}
#: The model the study's gradcam_analysis.py analysed.
STUDY_GRADCAM_MODEL = "efficientnet_b0"
METHOD = "gradcam"
#: gradcam_leakage_results.csv: the study's columns (in its order), then dermcam's.
STUDY_LEAKAGE_COLUMNS = ("image_id", "true_label", "pred_label", "correct", "inside_score",
                         "outside_score", "leakage")
DERMCAM_LEAKAGE_COLUMNS = ("model", "prob_malignant", "lesion_area", "chance_leakage",
                           "excess_leakage", "localisation_gain", "pixel_auroc",
                           "rank_accuracy", "pointing_game", "reason")
LEAKAGE_COLUMNS = STUDY_LEAKAGE_COLUMNS + DERMCAM_LEAKAGE_COLUMNS

def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _copy(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (a real copy: the run folder may be deleted)."""
    if not src.is_file():
        raise DermcamError("expected output is missing; re-run the stage that writes it", src)
    return write_bytes(dst, src.read_bytes())


def _models(text: str) -> list[str]:
    names = [STUDY_ALIASES.get(m.strip(), m.strip()) for m in text.split(",") if m.strip()]
    if not names:
        raise DermcamError("--models is empty; name at least one model, e.g. resnet18")
    return list(dict.fromkeys(names))


def _plots_saved(paths: list[Path], say) -> None:
    say("\nPlots saved to:")
    for path in paths:
        say(f"  - {path}")


def _text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings (first row the header) as left-aligned plain-text columns."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _run(args: argparse.Namespace, work) -> int:
    """Call ``work(args)``; a :class:`DermcamError` becomes one line on stderr and exit 2."""
    quiet_libraries(args.debug)
    try:
        work(args)
    except DermcamError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are intact; skin_lesion_analysis.py --resume "
              "continues training", file=sys.stderr)
        return 130
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("."),
                   help="folder holding the ISIC 2016 Part 3B files (default: the current "
                        "folder, as in the study)")
    p.add_argument("--results", type=Path, default=Path(RESULTS_DIR),
                   help=f"where the study's figures go (default: {RESULTS_DIR}); dermcam's "
                        f"run folder is RESULTS/{RUN_SUBDIR}")
    p.add_argument("--n-boot", type=int, default=1000,
                   help="bootstrap resamples for the 95%% confidence intervals (default 1000)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skin_lesion_analysis.py",
        description="Train and compare ResNet18, EfficientNet-B0 and MobileNet-V2 on ISIC 2016 "
                    "Part 3B (the reference study's script, now run by dermcam): best "
                    "checkpoint, class-imbalance handling, validation-chosen threshold, test "
                    "metrics with 95 % CIs. Writes results_visualization/model_comparison.png "
                    "and <model>_confusion_matrix.png; dermcam's full run (metrics.json, "
                    "predictions.csv, every figure) is in results_visualization/run. "
                    "Re-running retrains from scratch (use --resume to continue an "
                    "interrupted run). Next: python gradcam_analysis.py")
    _common(p)
    p.add_argument("--models", default=",".join(STUDY_MODELS),
                   help="comma-separated models (default: the study's three; the study's "
                        "names efficientnet and mobilenet also work; 'dermcam models' lists "
                        "more)")
    p.add_argument("--epochs", type=int, default=30,
                   help="maximum epochs per model; early stopping may end sooner (default 30)")
    p.add_argument("--image-size", type=int, default=224,
                   help="model input side in pixels (default 224, as in the study)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (default, as in the study; from torchvision's cache), none "
                        "(from scratch) or a state-dict PATH")
    p.add_argument("--batch-size", type=int, default=16, help="default 16, as in the study")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in results_visualization/run")
    return p


def train_study(data: str | Path = ".", results: str | Path = RESULTS_DIR,
                models: Sequence[str] = STUDY_MODELS, weights: str = "imagenet",
                image_size: int = 224, epochs: int = 30, batch_size: int = 16, seed: int = 42,
                n_boot: int = 1000, resume: bool = False, progress: bool = False,
                say=_say) -> dict[str, Any]:
    """dermcam train + evaluate into ``results/run``, the study's figures under ``results``;
    returns the evaluation result."""
    from dermcam.stages.evaluate import run_evaluate  # torch, at first use: --help stays fast
    from dermcam.stages.train import train

    results = Path(results)
    run = results / RUN_SUBDIR
    try:
        detect_layout(Path(data))
    except DermcamError as exc:
        raise DermcamError(f"{exc} (run this script in the folder holding the ISIC 2016 Part 3B "
                           "files, or pass --data DIR)") from exc
    data = Path(data).resolve()
    cfg = TrainConfig(data=str(data), out=str(run), models=list(models), weights=weights,
                      image_size=image_size, max_epochs=epochs, batch_size=batch_size,
                      seed=seed, progress=progress)
    if weights == "imagenet" and not resume:
        # Fail on missing ImageNet weights before the earlier run's folder is replaced.
        from dermcam.models import build_model, check_model_name, imagenet_available

        for name in cfg.models:
            if not imagenet_available(check_model_name(name)):
                build_model(name, "imagenet")  # downloads into torchvision's cache, or says how
    say(f"Training {', '.join(cfg.models)} on {data} ({image_size} px, up to {epochs} epochs, "
        f"weights {weights}); run folder {run}")
    train(cfg, overwrite=True, resume=resume)
    say("Evaluating on the test set (95% bootstrap CIs)...")
    result = run_evaluate(run, EvaluateConfig(n_boot=n_boot))
    figs = runmod.Outputs(run).figures
    written = [_copy(figs / f, results / f) for f in ["model_comparison.png", *(
        f"{name}_confusion_matrix.png" for name in result["models"])]]
    print_comparison(result, say)
    _plots_saved(written, say)
    say(f"dermcam's run folder: {run} (metrics.json, predictions.csv, figures/); next: "
        "python gradcam_analysis.py")
    return result


def print_comparison(result: dict[str, Any], say=_say) -> None:
    """The study's comparison table, then dermcam's with 95 % CIs and the paired tests."""
    study_cols = (("Accuracy", "accuracy"), ("Benign_Precision", "precision_benign"),
                  ("Malignant_Precision", "precision_malignant"),
                  ("Benign_Recall", "recall_benign"), ("Malignant_Recall", "recall_malignant"),
                  ("Benign_F1", "f1_benign"), ("Malignant_F1", "f1_malignant"))
    rows = [["Model"] + [c for c, _ in study_cols]]
    for name, entry in result["models"].items():
        values = (entry["at_threshold"][key]["value"] for _, key in study_cols)
        rows.append([name] + ["nan" if v is None else f"{v:.4f}" for v in values])
    say("\nComparison of all models (test set, at each model's validation-chosen threshold):")
    say(_text_table(rows))
    say("\nWith 95% confidence intervals, and the predict-all-benign baseline:")
    from dermcam.evaluation import format_comparison  # scikit-learn, at first use

    say(_text_table(format_comparison(result)))
    if pairs := pairwise_table(result):
        say(f"\n{pairs.title}:")
        say(_text_table([pairs.columns, *pairs.rows]))
        say(pairs.note)


def main_train(argv: Sequence[str] | None = None) -> int:
    """``python skin_lesion_analysis.py``: returns the exit code."""
    return _run(train_parser().parse_args(argv), lambda a: train_study(
        data=a.data, results=a.results, models=_models(a.models), weights=a.weights,
        image_size=a.image_size, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed,
        n_boot=a.n_boot, resume=a.resume, progress=sys.stdout.isatty()))


def gradcam_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradcam_analysis.py",
        description="Grad-CAM attention leakage on every test image with a lesion mask (the "
                    "reference study's script, now run by dermcam), for the models that "
                    "skin_lesion_analysis.py trained. Writes results_visualization/"
                    "summary_plots/attention_leakage_analysis.png (EfficientNet-B0 when "
                    "trained, as in the study), summary_plots/leakage_vs_accuracy.png, "
                    "gradcam_plots/ and gradcam_leakage_results.csv (the study's columns, "
                    "then dermcam's size-aware scores). Interrupted runs resume.")
    _common(p)
    p.add_argument("--model", default=None,
                   help="model for the summary figure and the CSV (default: efficientnet_b0 "
                        "when trained, as in the study, else the first trained model)")
    p.add_argument("--batch-size", type=int, default=16, help="images per Grad-CAM batch")
    return p


def gradcam_study(data: str | Path = ".", results: str | Path = RESULTS_DIR,
                  model: str | None = None, batch_size: int = 16, n_boot: int = 1000,
                  progress=None, say=_say) -> dict[str, Any]:
    """dermcam explain (Grad-CAM) on ``results/run``, the study's figures and CSV under
    ``results``; returns the attention summary."""
    import pandas as pd

    from dermcam.stages.explain import run_explain  # torch, at first use: --help stays fast

    results = Path(results)
    run = results / RUN_SUBDIR
    if not (run / MANIFEST).is_file():
        raise DermcamError("no trained models here: run 'python skin_lesion_analysis.py' "
                           "in this folder first", run)
    opened = runmod.Run.open(run, require="train")
    data = Path(data).resolve()
    trained_on = opened.data_root
    if data != trained_on:
        raise DermcamError(f"the models in {run} were trained on {trained_on}, not on "
                           f"{data}; pass --data {trained_on} or re-run "
                           "skin_lesion_analysis.py", data)
    names = opened.trained_models
    if not names:
        raise DermcamError("no model finished training; re-run 'python "
                           "skin_lesion_analysis.py' (--resume continues)", run)
    if model is not None:
        model = STUDY_ALIASES.get(model, model)
        if model not in names:
            raise DermcamError(f"--model {model} was not trained here; trained: "
                               f"{', '.join(names)}")
    chosen = model or (STUDY_GRADCAM_MODEL if STUDY_GRADCAM_MODEL in names else names[0])
    say(f"Running Grad-CAM analysis with attention leakage ({', '.join(names)}; every test "
        "image with a mask)...")
    t_start = time.time()
    # The study's layer (last block) and target (predicted class), to reproduce its numbers;
    # 'dermcam explain' chooses a layer that localises and explains the malignant class.
    summary = run_explain(run, ExplainConfig(methods=[METHOD], batch_size=batch_size, n_boot=n_boot,
                                             layer="last", target="predicted"), progress=progress)
    figs = runmod.Outputs(run).figures
    summary_dir = results / "summary_plots"
    written = [_copy(figs / f"attention_leakage_analysis_{chosen}.png",
                     summary_dir / "attention_leakage_analysis.png"),
               _copy(figs / "leakage_vs_accuracy.png", summary_dir / "leakage_vs_accuracy.png")]
    plots_dir = results / "gradcam_plots"
    n_examples = _copy_examples(figs / "examples", plots_dir, names, since=t_start - 2.0)
    att = pd.read_csv(runmod.Outputs(run).attention, dtype={"image_id": str, "reason": str},
                      keep_default_na=False, na_values=[""])
    table = study_leakage_table(att[(att["model"] == chosen) & (att["method"] == METHOD)])
    csv_path = write_csv(results / "gradcam_leakage_results.csv", table)
    display = opened.model_record(chosen).get("display_name", chosen)
    print_leakage(table, display, summary.get("tests", {}).get(f"{chosen}/{METHOD}", {}), say)
    say(f"Results saved to '{csv_path}'")
    _plots_saved(written, say)
    say(f"  - {plots_dir}/ ({n_examples} individual visualizations: the most and least "
        "leaking images per model)")
    say(f"dermcam's attention.csv, attention_summary.json and figures: {run}")
    return summary


def _copy_examples(src_dir: Path, dst_dir: Path, models: Sequence[str], since: float) -> int:
    """Copy this explain run's Grad-CAM example panels; drop earlier ones of ours."""
    prefixes = tuple(f"{m}_{METHOD}_{kind}_" for m in models for kind in ("most", "least"))
    fresh = sorted(p for p in src_dir.glob("*.png")
                   if p.name.startswith(prefixes) and p.stat().st_mtime >= since)
    for p in fresh:
        _copy(p, dst_dir / p.name)
    keep = {p.name for p in fresh}
    if dst_dir.is_dir():
        for old in dst_dir.glob("*.png"):
            if old.name.startswith(prefixes) and old.name not in keep:
                old.unlink()
    return len(fresh)


def study_leakage_table(att):
    """attention.csv rows of one model and method -> the study's CSV columns, then dermcam's
    (``pred_label``: the decision at the validation-chosen threshold; the study used 0.5)."""
    import pandas as pd

    out = pd.DataFrame({
        "image_id": att["image_id"].astype(str).to_numpy(),
        "true_label": att["label"].astype(int).to_numpy(),
        "pred_label": att["pred"].astype(int).to_numpy(),
        "correct": (att["label"].astype(int) == att["pred"].astype(int)).to_numpy(),
    })
    for col in LEAKAGE_COLUMNS[4:]:
        out[col] = att[col].to_numpy() if col in att else float("nan")
    out["reason"] = out["reason"].fillna("").astype(str)
    return out.reset_index(drop=True)


def print_leakage(table, display: str, tests: dict[str, Any], say=_say) -> None:
    """The study's printed summary, with dermcam's chance and excess leakage beside it."""
    say(f"\nAttention Leakage Analysis Results ({display}, Grad-CAM):")
    say(f"Total samples analyzed: {len(table)}")
    say(f"Overall mean leakage: {table['leakage'].mean():.4f}")
    say(f"Std leakage: {table['leakage'].std():.4f}")
    for label, cls in ((0, "Benign"), (1, "Malignant")):
        g = table[table["true_label"] == label]
        if len(g):
            say(f"{cls} lesions:")
            say(f"  Mean leakage: {g['leakage'].mean():.4f}")
            say(f"  Mean inside attention: {g['inside_score'].mean():.4f}")
            say(f"  Mean outside attention: {g['outside_score'].mean():.4f}")
            say(f"  Mean chance leakage (1 - lesion area): {g['chance_leakage'].mean():.4f}")
            say(f"  Mean excess leakage (leakage - chance): {g['excess_leakage'].mean():+.4f}")
    if size := confound_line(tests.get("size_confound") or {}):
        say(f"Lesion size: {size}")


def main_gradcam(argv: Sequence[str] | None = None) -> int:
    """``python gradcam_analysis.py``: returns the exit code."""
    return _run(gradcam_parser().parse_args(argv), lambda a: gradcam_study(
        data=a.data, results=a.results, model=a.model, batch_size=a.batch_size, n_boot=a.n_boot))
