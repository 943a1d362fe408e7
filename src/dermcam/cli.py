"""The ``dermcam`` command line: a thin typer app, one command per stage.

User errors (:class:`~dermcam.errors.DermcamError`) print one line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table as _RichTable
from rich.text import Text

from dermcam import run as runmod
from dermcam.device import PRECISION_HELP
from dermcam.errors import DermcamError
from dermcam.formatting import fmt_ci, fmt_num, fmt_pct, is_number, metric_label
from dermcam.logs import quiet_libraries
from dermcam.models import DEFAULT_MODELS


class Table(_RichTable):
    """A rich Table whose title, headers and cells are plain text, never markup: a CI
    cell such as ``0.03 [n/a, 0.06]`` or a data set named ``[ISIC]`` prints as written
    (rich would read ``[n/a, 0.06]`` as a style tag and drop it)."""

    def __init__(self, *args, title=None, **kwargs):
        super().__init__(*args, title=Text(title) if isinstance(title, str) else title,
                         **kwargs)

    def add_column(self, header="", *args, **kwargs):
        super().add_column(Text(header) if isinstance(header, str) else header, *args,
                           **kwargs)

    def add_row(self, *cells, **kwargs):
        super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)


def _paragraphs(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line, for the help formatter to wrap.

    Typer's rich help keeps a docstring's hard line breaks, so text wrapped at 88
    columns in the source breaks mid-sentence in a wider terminal. Paragraphs are
    separated by blank lines; one that starts with ``\\b`` keeps its breaks (click's
    convention for verbatim blocks).
    """
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(s.strip() for s in p.splitlines())
                       for p in paragraphs)


class _App(typer.Typer):
    """A Typer app whose commands' docstrings are rewrapped by the help formatter."""

    def command(self, name: str | None = None, **kwargs):
        register = super().command

        def decorator(f):
            if kwargs.get("help") is None:
                kwargs["help"] = _paragraphs(f.__doc__)
            return register(name, **kwargs)(f)

        return decorator


app = _App(
    name="dermcam", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help="Train, compare and audit dermoscopy classifiers (benign vs malignant): honest "
         "metrics with confidence intervals and size-aware Grad-CAM attention leakage.\n\n"
         "Pipeline: synth/download -> info -> train -> evaluate -> explain -> probe -> report, each "
         "stage reading the previous one's files in a run folder. 'dermcam demo' runs it all "
         "on the synthetic benchmark.")
# Wide enough for the comparison tables when output goes to a file or CI log.
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
_state = {"debug": False, "quiet": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
          = False,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
          = False) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet or not sys.stdout.isatty() and os.environ.get("CI") == "true"
    quiet_libraries(debug)


@contextlib.contextmanager
def progress_bar(description: str):
    """Yield a ``callback(done, total)`` that drives a rich progress bar."""
    if _state["quiet"]:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  transient=False) as prog:
        task = prog.add_task(description, total=None)

        def cb(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield cb


# ----------------------------------------------------------------------- synth

@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set into.")],
    preset: Annotated[str, typer.Option(help="'clean': artifacts independent of the label; "
                                              "'shortcut': rulers tied to malignancy in "
                                              "training only.")] = "clean",
    n_train: Annotated[int, typer.Option(help="Training images (ISIC 2016: 900).")] = 900,
    n_test: Annotated[int, typer.Option(help="Test images (ISIC 2016: 379).")] = 379,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    prevalence: Annotated[float, typer.Option(help="Malignant share.")] = 0.19,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing data set.")] = False,
) -> None:
    """Write the synthetic dermoscopy benchmark in the ISIC 2016 Part 3B layout.

    Lesions differ by the ABCD cues (asymmetry, border, colour, diameter; malignant
    larger on average), with exact masks, and background artifacts (ruler, ink, colour
    patch, vignette, hair) recorded per pixel in ISIC_xxx_Artifacts.png and per image in
    metadata.csv, so attention on them can be measured.
    """
    from dermcam.data.synth import SynthConfig, generate

    _guard_out(out, overwrite, marker="synth.json")
    try:
        cfg = SynthConfig.from_preset(preset, n_train=n_train, n_test=n_test,
                                      image_size=size, prevalence=prevalence, seed=seed)
    except ValueError as exc:
        raise DermcamError(str(exc)) from exc
    t0 = time.perf_counter()
    with progress_bar("synth") as cb:
        generate(out, cfg, progress=cb)
    console.print(f"wrote {n_train + n_test} images ({preset} preset) to {out} "
                  f"in {time.perf_counter() - t0:.1f} s")
    _print_info(out)


def _guard_out(out: Path, overwrite: bool, marker: str) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DermcamError("folder is not empty; choose a new folder or pass --overwrite",
                               out)
        if not (out / marker).exists():
            raise DermcamError(f"--overwrite only replaces folders dermcam wrote (no {marker})",
                               out)
        import shutil

        shutil.rmtree(out)


# ------------------------------------------------------------------------ info

@app.command()
def info(data: Annotated[Path, typer.Argument(help="Data set folder (ISIC 2016 layout or "
                                                   "generic labels.csv).")],
         check: Annotated[bool, typer.Option(help="Decode every image and mask (in parallel, "
                                                   "filling the decode cache at "
                                                   "--image-size), so truncated image data "
                                                   "are found too; run it once before "
                                                   "training.")] = False,
         image_size: Annotated[int, typer.Option(help="The model input side 'dermcam train' "
                                                      "will use: the size --check caches "
                                                      "images at, and what 'much smaller' "
                                                      "means.")] = 224) -> None:
    """Describe a data set and check all of it: counts per split and class, masks, image
    sizes, artifacts, then every problem found, one line each.

    Every CSV row and every image, mask and artifact-map header is checked; --check also
    decodes every file. Errors (exit 2) make the data set unusable as it is; warnings are
    odd but usable inputs (16-bit, palette, EXIF-rotated, non-binary masks, small images).
    """
    report = _check_data(data, decode=check, image_size=image_size)
    if report.ok:
        _print_info(data, mask_areas=report.mask_areas)
    _print_problems(report)
    if not report.ok:
        raise typer.Exit(2)


def _check_data(root: Path, decode: bool, image_size: int):
    from dermcam.data.check import check_dataset

    if image_size < 8:
        raise DermcamError(f"--image-size must be at least 8, got {image_size}")
    with progress_bar("check images" + (" (decode)" if decode else "")) as cb:
        return check_dataset(root, decode=decode, image_size=image_size, progress=cb)


#: At most this many lines of one kind of warning; the rest are counted.
_WARNINGS_SHOWN = 10


def _print_problems(report) -> None:
    """Every error, one line each, then the warnings (a few per kind), then the count."""
    import re
    from collections import defaultdict

    from rich.markup import escape

    def say(line: str) -> None:
        err.print(escape(line), highlight=False, soft_wrap=True)

    if not report.problems:
        console.print(report.summary(), highlight=False, soft_wrap=True)
        return
    for p in report.errors:
        say(f"error: {p}")
    kinds = defaultdict(list)
    for p in report.warnings:  # one kind: the same message but for its numbers
        kinds[re.sub(r"\d+", "#", p.message)].append(p)
    for group in kinds.values():
        for p in group[:_WARNINGS_SHOWN]:
            say(f"warning: {p}")
        if len(group) > _WARNINGS_SHOWN:
            say(f"warning: ... and {len(group) - _WARNINGS_SHOWN} more like the above")
    say(report.summary())


def _print_info(root: Path, check: bool = False,
                mask_areas: dict[str, float] | None = None) -> None:
    from dermcam.data.describe import describe

    d = describe(root, check=check, mask_areas=mask_areas)
    t = Table(title=f"{d['name']} ({d['layout']} layout) — {root}")
    for col in ("split", "images", "benign", "malignant", "malignant %", "with mask",
                "mean lesion area"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, s in d["splits"].items():
        area = s.get("mean_lesion_area")
        t.add_row(split, str(s["n"]), str(s["benign"]), str(s["malignant"]),
                  f"{100 * s['malignant'] / max(s['n'], 1):.1f}", str(s["with_mask"]),
                  "-" if area is None else f"{area:.3f}")
    console.print(t)
    if d.get("image_sizes"):
        console.print(f"image sizes (sampled): {d['image_sizes']}")
    if d.get("artifacts"):
        at = Table(title="background artifacts: share of images carrying each")
        at.add_column("artifact")
        cols = list(next(iter(d["artifacts"].values())).keys())
        for c in cols:
            at.add_column(c, justify="right")
        for art, rates in d["artifacts"].items():
            at.add_row(art, *[f"{100 * rates[c]:.0f} %" for c in cols])
        console.print(at)
    if d.get("official_check"):
        console.print(d["official_check"])
    for note in d.get("notes", []):
        console.print(f"note: {note}")


# ----------------------------------------------------------------------- train

@app.command()
def models(
    image_size: Annotated[int, typer.Option(help="Input side in pixels at which to show each "
                                                 "candidate layer's spatial size.")] = 224,
    run_dir: Annotated[Path | None, typer.Option("--run", help="A run folder: use its input "
                                                               "size.")] = None,
) -> None:
    """List the architectures dermcam knows: the study's Grad-CAM layer, the candidate layers
    the localisation benchmark scores (with their spatial size at the input size), and
    whether ImageNet weights are cached."""
    from dermcam.models import REGISTRY, build_model, imagenet_available, imagenet_weights_path

    if run_dir is not None:
        image_size = runmod.Run.open(run_dir).image_size
    t = Table(title=f"models at {image_size} px input (any other torchvision classifier also "
                    "works by name)")
    for c in ("name", "architecture", "study's CAM layer", "candidate layers (h x w)",
              "ImageNet weights"):
        t.add_column(c)
    from dermcam.models import layer_grid

    for name, spec in REGISTRY.items():
        model, _ = build_model(name, weights="none")
        grid = layer_grid(model, spec.candidate_layers, image_size)
        layers = ", ".join(f"{ly} ({grid[ly][0]}x{grid[ly][1]})" for ly in spec.candidate_layers)
        cached = "cached" if imagenet_available(name) else f"not cached ({imagenet_weights_path(name)})"
        t.add_row(name, spec.display_name, spec.cam_layer, layers, cached)
    console.print(t)


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Data set folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")]
    = Path("runs/run"),
    models: Annotated[str, typer.Option(help="Comma-separated torchvision model names.")]
    = ",".join(DEFAULT_MODELS),
    weights: Annotated[str, typer.Option(help="'imagenet' (torchvision weights API and "
                                               "TORCH_HOME cache), 'none' (from scratch) or a "
                                               "state-dict PATH.")] = "imagenet",
    image_size: Annotated[int, typer.Option(help="Input side in pixels (224 on real data).")]
    = 224,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping may end "
                                              "sooner).")] = 30,
    batch_size: Annotated[int, typer.Option()] = 16,
    lr: Annotated[str, typer.Option(help="Adam learning rate: one for every model (1e-3), or "
                                         "with per-model rates, e.g. "
                                         "1e-3,mobilenet_v2=3e-3.")] = "1e-3",
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 5,
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule: plateau (halve on a "
                                               "validation plateau, the study's) or onecycle "
                                               "(warm-up, then cosine annealing to zero over "
                                               "--epochs; best for short runs).")]
    = "plateau",
    monitor: Annotated[str, typer.Option(help="Best checkpoint by val_auc or val_loss.")]
    = "val_auc",
    imbalance: Annotated[str, typer.Option(help="weighted_loss, balanced_sampler or none.")]
    = "weighted_loss",
    calibration: Annotated[str, typer.Option(help="platt: fit p = sigmoid((z1 - z0) / T + b) "
                                                  "on the validation split after training "
                                                  "(undoes the shift a weighted loss puts on "
                                                  "the logits); temperature: T only; none: "
                                                  "raw softmax. The threshold is chosen on "
                                                  "the calibrated probabilities.")]
    = "platt",
    val_fraction: Annotated[float, typer.Option(help="Stratified validation share of the "
                                                     "training split.")] = 0.2,
    seed: Annotated[int, typer.Option()] = 42,
    augment: Annotated[bool, typer.Option(help="Flips, rotation, colour jitter.")] = True,
    colour_jitter: Annotated[float, typer.Option(
        help="Colour jitter when augmenting: brightness, contrast and saturation each "
             "scaled by a factor from [1 - J, 1 + J] per image; 0 keeps the colours.")]
    = 0.2,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu, auto (Lightning).")] = "auto",
    devices: Annotated[str, typer.Option(help="Lightning devices, e.g. 1, 2, auto.")] = "1",
    strategy: Annotated[str, typer.Option(help="Lightning strategy, e.g. auto, ddp.")] = "auto",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    num_workers: Annotated[int | None, typer.Option(
        help="DataLoader workers per process (default: from the CPU count on a GPU, 0 on "
             "the CPU).")] = None,
    num_nodes: Annotated[int, typer.Option(help="Machines (Lightning num_nodes), for "
                                                "SLURM or torchrun across nodes.")] = 1,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="Deterministic algorithms (Lightning 'warn' mode, cuDNN "
                                "without benchmark): the same bytes on the same GPU, "
                                "slower.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")]
    = False,
    keep_checkpoints: Annotated[bool, typer.Option(
        "--keep-checkpoints", help="Keep Lightning's best.ckpt (weights) and last.ckpt "
                                   "(weights and optimizer state) in models/NAME/lightning/ "
                                   "after a model finishes; by default only model.pt is "
                                   "kept.")] = False,
) -> None:
    """Fine-tune each model; keep its best checkpoint; choose its threshold on validation."""
    from dermcam.stages.train import TrainConfig, parse_lr
    from dermcam.stages.train import train as do_train

    lr_default, lr_by_model = parse_lr(lr)
    cfg = TrainConfig(
        data=str(data), out=str(out), models=[m.strip() for m in models.split(",") if m.strip()],
        weights=weights, image_size=image_size, max_epochs=epochs, batch_size=batch_size,
        lr=lr_default, lr_by_model=lr_by_model,
        patience=patience, schedule=schedule, monitor=monitor, imbalance=imbalance,
        calibration=calibration, val_fraction=val_fraction,
        seed=seed, augment=augment, colour_jitter=colour_jitter, accelerator=accelerator,
        devices=devices,
        strategy=strategy, precision=precision, num_workers=num_workers,
        num_nodes=num_nodes, deterministic=deterministic,
        progress=not _state["quiet"], keep_checkpoints=keep_checkpoints)
    with progress_bar("decode + cache images") as cb:
        manifest = do_train(cfg, overwrite=overwrite, resume=resume, progress=cb)
    if not manifest:  # a worker process of multi-process training: rank 0 reports
        return
    _print_training(runmod.Run(out, manifest))
    console.print(f"run folder: {out}  (next: dermcam evaluate {out})")


def _print_training(run: runmod.Run) -> None:
    t = Table(title="training")
    for c in ("model", "weights", "best epoch", f"val {metric_label('roc_auc', short=True)}",
              "T, b", f"val {metric_label('ece', short=True)}", "threshold", "time"):
        t.add_column(c)
    for name, m in run.model_records.items():
        cal = m.get("calibration") or {}
        ece = "" if not cal else (f"{cal['before']['ece']:.3f} -> {cal['after']['ece']:.3f}"
                                  if cal.get("method") in ("platt", "temperature")
                                  else f"{cal['before']['ece']:.3f}")
        t.add_row(m.get("display_name", name), m.get("weights_source", "?"),
                  str(m.get("best_epoch")), f"{m.get('val_auc', float('nan')):.3f}",
                  f"{m.get('temperature', 1.0):.2f}, {m.get('calibration_bias', 0.0):+.2f}",
                  ece,
                  f"{m.get('threshold', float('nan')):.3f}", f"{m.get('wall_time_s', 0):.0f} s")
    console.print(t)


# -------------------------------------------------------------------- evaluate

@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by 'dermcam train'.")],
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for 95 % CIs.")] = 1000,
    data: Annotated[Path | None, typer.Option(
        help="Score the run's models on another data set (any layout) instead: external "
             "validation, written to RUN/external/NAME/.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Name of the external set's folder (default: the data folder's name).")] = None,
    by: Annotated[str | None, typer.Option(
        help="Metrics per subgroup of these comma-separated columns: any metadata column "
             "of the layout, or 'ita' (skin tone estimated from the image).")] = None,
    min_group: Annotated[int, typer.Option(
        help="Subgroups with fewer images (or under 5 of a class) are too few to "
             "estimate.")] = 20,
    exclude_duplicates: Annotated[bool, typer.Option(
        help="Leave out external images that duplicate the run's own images.")] = False,
    artifact_labels: Annotated[Path | None, typer.Option(
        "--artifacts", "--artifact-labels",
        help="Per-image artifact labels (e.g. isic_bias.csv of Bissoto et al. 2020, "
             "';'-separated, image;dark_corner;hair;...), joined by image id as "
             "artifact_<name> columns and kept for the run's later stages; with --data "
             "they label that set's images instead.")] = None,
    device: Annotated[str, typer.Option(help="Where the models run: auto (CUDA when "
                                             "available, else CPU), cpu, cuda or "
                                             "cuda:INDEX.")] = "auto",
) -> None:
    """Test-set metrics with 95 % CIs, baselines, and paired model comparisons."""
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.external import by_columns

    if artifact_labels is not None:  # and split the metrics by each artifact's presence
        from dermcam.data.artifact_labels import artifact_columns, read_artifact_labels

        by = ",".join([*by_columns(by), *artifact_columns(read_artifact_labels(artifact_labels))])
    with progress_bar("load test images") as cb:
        # the labels join the set scored (--data's, or the run's, recorded once checked)
        result = run_evaluate(run_dir, n_boot=n_boot, progress=cb, data=data, name=name,
                              by=by_columns(by), min_group=min_group,
                              exclude_duplicates=exclude_duplicates, device=device,
                              artifacts=artifact_labels)
    if result.get("artifact_labels"):
        console.print(result["artifact_labels"]["note"])
    _print_metrics(result)
    _print_calibration(result)
    _print_external(run_dir, result)
    _print_subgroups(result)
    where = (f"{run_dir}/external/{result['external']['name']}" if "external" in result
             else str(run_dir))
    console.print(f"wrote {where}/metrics.json, metrics.csv, predictions.csv, figures/")


def _use_artifact_labels(run_dir: Path, path: Path) -> list[str]:
    """Record per-image artifact labels in the run (#16); prints the join, returns the
    artifact_<name> columns."""
    from dermcam.data.artifact_labels import artifact_columns, read_artifact_labels, record_in_run

    console.print(record_in_run(run_dir, path))
    return artifact_columns(read_artifact_labels(path))


def _print_metrics(result) -> None:
    from dermcam.evaluation import format_comparison

    rows = format_comparison(result)
    t = Table(title="test set: point estimate [95 % CI]")
    for c in rows[0]:
        t.add_column(str(c))
    for r in rows[1:]:
        t.add_row(*[str(c) for c in r])
    console.print(t)
    for p in result.get("pairwise", []):
        console.print("  " + p.get("sentence", ""))


def _print_calibration(result) -> None:
    """ECE and Brier before and after calibration (#16)."""
    calib = result.get("calibration") or {}
    if not calib:
        return
    t = Table(title="calibration on the test set: before -> after scaling")
    cells = [(k, when) for k in ("ece", "brier") for when in ("before", "after")]
    for c in ("model", "T, b", *[f"{metric_label(k, short=True)} {when}" for k, when in cells]):
        t.add_column(c)
    names = result.get("display_names") or {}
    for name, c in calib.items():
        t.add_row(names.get(name, name),
                  f"{c.get('temperature', float('nan')):.2f}, {c.get('bias', 0.0):+.2f}",
                  *[_ci_text(c[when][k]) for k, when in cells])
    console.print(t)


def _ci_text(d) -> str:
    """A metric's ``{"value", "lo", "hi"}`` as ``0.82 [0.75, 0.88]`` (2 decimals, ``n/a``
    for each undefined part); ``n/a`` alone when there is no value."""
    if not isinstance(d, dict) or d.get("value") is None:
        return "n/a"
    return fmt_ci(d["value"], d.get("lo"), d.get("hi"), 2, collapse=False)


def _print_external(run_dir: Path, result) -> None:
    """Internal versus external, side by side, and the duplicates found."""
    ext = result.get("external")
    if not ext:
        return
    from dermcam.io import read_json
    from dermcam.stages.external import SIDE_BY_SIDE, side_by_side

    internal = None
    with contextlib.suppress(DermcamError):
        internal = read_json(runmod.Outputs(run_dir).metrics)
    t = Table(title=f"internal test vs external {ext['name']} ({ext['data']}, "
                    f"{ext['images']}): point estimate [95 % CI]")
    for c in ["model", "test set", "n (malignant)"] + [c for _, _, c in SIDE_BY_SIDE]:
        t.add_column(c)
    for r in side_by_side(internal, [(ext["name"], result)]):
        t.add_row(result.get("display_names", {}).get(r["model"], r["model"]), r["set"],
                  f"{r['n']} ({r['n_malignant']})",
                  *[_ci_text(r[k]) for _, k, _ in SIDE_BY_SIDE])
    console.print(t)
    d = ext["duplicates"]
    ids = ", ".join((d["exact"] + d["near"])[:8])
    console.print(f"  {d['n_exact']} exact and {d['n_near']} near-duplicate image(s) of "
                  f"{d['against']}" + (f": {ids}" if ids else "") + (
                      "; left out" if d["excluded"] else
                      "; kept (--exclude-duplicates leaves them out)" if ids else ""))
    console.print(f"  thresholds: {ext['thresholds']}")


def _print_subgroups(result) -> None:
    from dermcam.subgroups import heterogeneity_sentence, subgroup_table

    for col, analysis in (result.get("subgroups") or {}).items():
        for model in analysis["models"]:
            rows = subgroup_table(analysis, model)
            disp = result.get("display_names", {}).get(model, model)
            t = Table(title=f"{disp} by {col} ({analysis['binning']}): point estimate "
                            "[95 % CI]")
            for c in rows[0]:
                t.add_column(c)
            for r in rows[1:]:
                t.add_row(*r)
            console.print(t)
            console.print("  " + heterogeneity_sentence(analysis, model))


# --------------------------------------------------------------------- explain

def _method_help() -> str:
    from dermcam.attribution import METHODS

    return "Comma-separated CAM methods: " + ", ".join(METHODS) + "."


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by 'dermcam train'.")],
    methods: Annotated[str, typer.Option(help="Comma-separated CAM methods (pytorch-grad-cam):"
                                              " gradcam, gradcam++, hirescam, layercam, "
                                              "eigencam, xgradcam; or auto: the localisation "
                                              "benchmark chooses each model's method with "
                                              "its layer.")] = "auto",
    target: Annotated[str, typer.Option(help="Class each heatmap explains: malignant (where "
                                             "the evidence for malignancy lies, for every "
                                             "image: one fixed target, so benign and "
                                             "malignant lesions are compared on the same "
                                             "question), predicted (the study's: "
                                             "benign-predicted images are explained for "
                                             "the benign class, whose evidence is largely "
                                             "wherever the lesion is not) or true.")]
    = "malignant",
    normalize: Annotated[str, typer.Option(help="minmax (ReLU + per-image min-max, the study's) "
                                                "or raw (ReLU only).")] = "minmax",
    limit: Annotated[int | None, typer.Option(help="Only the first N test images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per Grad-CAM batch.")] = 16,
    sanity: Annotated[bool, typer.Option(help="Randomised-weights sanity check "
                                              "(Adebayo et al. 2018).")] = True,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for CIs.")] = 1000,
    shard: Annotated[str | None, typer.Option(help="Compute only part i/n of the batches "
                                                   "(e.g. 0/4), for several processes or "
                                                   "machines; then run --merge.")] = None,
    merge: Annotated[bool, typer.Option(help="Score the batches written by all shards "
                                             "into one attention.csv.")] = False,
    layer: Annotated[str, typer.Option(help="CAM layer: auto (the localisation benchmark "
                                            "picks, per model and method, the layer whose maps "
                                            "localise best on masked validation images and "
                                            "pass the sanity check), last (the study's: the "
                                            "last convolutional block), a layer name for "
                                            "every model, or model=layer,model=layer. "
                                            "'dermcam models' lists the candidates.")]
    = "auto",
    bench_methods: Annotated[str | None, typer.Option(
        help="Methods the localisation benchmark scores at every candidate layer "
             "(comma-separated, or all; default: all).")] = None,
    bench_images: Annotated[int, typer.Option(help="Validation images the localisation "
                                                   "benchmark scores.")] = 64,
    cascade: Annotated[bool, typer.Option(help="Cascading randomisation in the sanity check "
                                               "(one step per block, from the output down).")]
    = True,
    margin: Annotated[float, typer.Option(help="Equivalence margin of the lesion-size "
                                               "confound test (TOST), in units of each metric "
                                               "(leakage, excess leakage, pixel AUROC): an "
                                               "adjusted class gap within +-margin counts as "
                                               "explained by size.")] = 0.02,
    artifact_labels: Annotated[Path | None, typer.Option(
        "--artifacts", "--artifact-labels",
        help="Per-image artifact labels (e.g. isic_bias.csv of Bissoto et al. 2020, "
             "';'-separated, image;dark_corner;hair;...), joined by image id as "
             "artifact_<name> columns and kept for the run's later stages.")] = None,
    device: Annotated[str, typer.Option(help="Where the heatmaps are computed: auto (CUDA "
                                             "when available), cpu, cuda or cuda:INDEX; "
                                             "with --shard i/n, auto puts each shard on its "
                                             "own GPU, and on the CPU the shards split the "
                                             "cores.")] = "auto",
    data: Annotated[Path | None, typer.Option(
        help="Audit the run's models on another data set's masked images (any layout) "
             "instead, into RUN/external/NAME/ (as evaluate --data); layers and thresholds "
             "are the run's. --artifacts then labels that set's images.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Name of the external set's folder (default: the data folder's name).")] = None,
    by: Annotated[str | None, typer.Option(
        help="Attention summary per subgroup of these comma-separated columns: any "
             "metadata column of the layout, or 'ita' (skin tone estimated from the "
             "image).")] = None,
    min_group: Annotated[int, typer.Option(
        help="Subgroups with fewer images are too few to estimate.")] = 20,
) -> None:
    """Grad-CAM heatmaps for every model and test image with a mask, scored against the mask.

    Writes attention.csv (one row per image x model x method: the study's leakage,
    inside and outside scores, and size-aware scores: chance and excess leakage,
    localisation gain, pixel AUROC, rank accuracy, pointing game), attention_summary.json
    (CIs, class tests pooled and by explained class with adjusted p-values, the lesion-size
    confound test, undefined heatmaps scored at chance, sanity check, artifact attention)
    and figures. Interrupted runs resume from the saved heatmap batches.
    """
    from dermcam.stages.explain import run_explain
    from dermcam.stages.external import by_columns

    if artifact_labels is not None and data is None:  # attention summary by artifact presence
        _use_artifact_labels(run_dir, artifact_labels)
    shard_t = None
    if shard is not None:
        try:
            i, n = (int(v) for v in shard.split("/"))
            shard_t = (i, n)
        except ValueError as exc:
            raise DermcamError(f"--shard must look like 0/4, got {shard!r}") from exc
    with progress_bar("Grad-CAM batches") as cb:
        summary = run_explain(run_dir, methods=[m.strip() for m in methods.split(",")],
                              target=target, normalize=normalize, limit=limit,
                              batch_size=batch_size, sanity=sanity, n_boot=n_boot, progress=cb,
                              shard=shard_t, merge=merge, layer=layer,
                              bench_methods=(None if bench_methods in (None, "all") else
                                             [m.strip() for m in bench_methods.split(",")]),
                              bench_images=bench_images, cascade=cascade, margin=margin,
                              device=device, data=data, name=name, by=by_columns(by),
                              min_group=min_group,
                              artifacts=artifact_labels if data is not None else None)
    ext = summary.get("external") or {}
    where = f"{run_dir}/external/{ext['name']}" if ext else str(run_dir)
    if shard_t is not None:
        again = f" --data {data}" + (f" --name {name}" if name else "") if data else ""
        console.print(f"shard {shard}: {summary['batches']} batch(es) written under "
                      f"{summary.get('folder', where)}/attention; when every shard is done: dermcam explain "
                      f"{run_dir}{again} --merge")
        return
    if ext:
        console.print(f"external set {ext['name']} ({ext['data']}, {ext['layout']} layout): "
                      f"{ext['images']}; {ext['thresholds']}; layers {ext['layers']}")
    _print_attention(summary)
    console.print(f"wrote {where}/attention.csv, attention_summary.json, figures/")


def _num(v, digits: int = 2) -> str:
    """A number for a table cell with ``digits`` decimals; '-' for a missing or undefined
    one (None, NaN)."""
    return fmt_num(v, digits, missing="-")


def _ci(v, lo, hi, digits: int = 2) -> str:
    """``v [lo, hi]`` for a table cell, each part as :func:`_num`."""
    return fmt_ci(v, lo, hi, digits, collapse=False, missing="-")


def _print_localisation(rows) -> None:
    if not rows:
        return
    t = Table(title=f"localisation benchmark ({rows[0]['n']} {rows[0]['images']} images): "
                    "median pixel AUROC [95 % CI], 0.5 = uniform")
    for c in ("model", "method", "layer", "grid", "pixel AUROC", "undefined", "sanity |rho|",
              "ms/image"):
        t.add_column(c)
    for r in rows:
        verdict = {True: "passed", False: "FAILED", None: "inconclusive"}[r.get("sanity_passed")]
        t.add_row(r["model"], r["method"], r["layer"], "x".join(map(str, r["grid"])),
                  _ci(r["median_pixel_auroc"], r["ci_low"], r["ci_high"]),
                  fmt_pct(r["undefined_share"], 0, missing="-"),
                  f"{_num(r.get('sanity_median_abs_rho'))} {verdict}",
                  _num(r["ms_per_image"], 1))
    console.print(t)


def _print_attention(summary) -> None:
    _print_localisation(summary.get("localisation"))
    for sel in summary.get("layer_choice") or []:
        console.print(f"  layer for {sel['model']}/{sel['method']}: {sel['reason']}")
    t = Table(title="attention: mean [95 % CI] by class; n (undefined, left out of the mean); "
                    f"resampling: {summary.get('resampling', 'images')}")
    for c in ("model/method", "layer", "class", "n (undefined)", "leakage", "chance leakage",
              "excess leakage", "pixel AUROC"):
        t.add_column(c)
    rows = {}
    for r in summary["by_class"]:
        key = (r["model"], r["method"], r["label"])
        rows.setdefault(key, {})[r["metric"]] = r
    tests = summary.get("tests", {})
    for (model, method, label), ms in sorted(rows.items()):
        def cell(m, ms=ms):
            r = ms.get(m)
            if not r or r.get("mean") is None:
                return "-"
            return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        t.add_row(f"{model}/{method}", tests.get(f"{model}/{method}", {}).get("layer", ""),
                  "malignant" if label == 1 else "benign",
                  f"{ms['leakage']['n']} ({ms['leakage'].get('n_nan', 0)})",
                  cell("leakage"), cell("chance_leakage"),
                  cell("excess_leakage"), cell("pixel_auroc"))
    console.print(t)
    for key, entry in tests.items():
        guard = entry.get("uniform_guard") or {}
        if guard.get("sentence"):
            console.print(f"  {key}: {guard['sentence']}")
        for cmp in (entry.get("class_comparison") or {}).values():
            if cmp.get("sentence"):
                console.print(f"  {key}: {cmp['sentence']}")
        confounds = entry.get("size_confounds") or {"leakage": entry.get("size_confound", {})}
        for sc in confounds.values():
            if sc.get("summary"):
                console.print(f"  {key}: {sc['summary']}")
        for miss in (entry.get("missingness") or {}).values():
            if isinstance(miss, dict) and miss.get("sentence"):
                console.print(f"  {key}: {miss['sentence']}")
        san = entry.get("sanity")
        if san:
            console.print(f"  {key}: {_sanity_line(san)}")
    _print_artifacts(summary.get("artifacts"))
    if summary.get("resampling_note"):
        console.print(f"  {summary['resampling_note']}")
    fams = summary.get("multiplicity") or {}
    if fams:
        console.print("  p-values adjusted within families: " + "; ".join(
            f"{name} ({f['k']} tests, {f['method']})" for name, f in fams.items())
            + "; raw p beside each in attention_summary.json")
    from dermcam.stages.explain import SUBGROUP_TITLES

    _print_summary_subgroups(summary.get("subgroups"), SUBGROUP_TITLES,
                             lambda e: f"{e['model']}/{e['method']}", "attention")


def _print_summary_subgroups(subgroups, titles: dict[str, str], label, what: str) -> None:
    """One table per --by column and entry of an attention or probe summary, each with
    its Kruskal-Wallis sentence."""
    from dermcam.subgroups import kruskal_sentence, summary_table

    for col, analysis in (subgroups or {}).items():
        for entry in analysis["entries"]:
            rows = summary_table(analysis, entry, list(titles), list(titles.values()))
            t = Table(title=f"{what}, {label(entry)}, by {col} ({analysis['binning']}): "
                            "mean [95 % CI]")
            for c in rows[0]:
                t.add_column(c)
            for r in rows[1:]:
                t.add_row(*r)
            console.print(t)
            console.print("  " + kruskal_sentence(analysis, entry, titles))


def _sanity_line(san) -> str:
    full = san.get("full", san)
    return full.get("summary") or "sanity check: no summary"


def _print_artifacts(rows) -> None:
    rows = [r for r in rows or [] if r.get("n", 0) >= 2]
    if not rows:
        return
    t = Table(title="heatmap mass on artifacts relative to their area (1 = uniform), "
                    "on images that carry them")
    for c in ("model/method", "layer", "artifact", "n", "mass share", "area share",
              "ratio [95 % CI]", "attends"):
        t.add_column(c)
    for r in rows:
        t.add_row(f"{r['model']}/{r['method']}", r["layer"], r["artifact"], str(r["n"]),
                  _num(r["mass_share"], 3), _num(r["area_share"], 3),
                  _ci(r["ratio"], r["ratio_ci_low"], r["ratio_ci_high"]),
                  "YES" if r["attends"] else "no")
    console.print(t)


# ----------------------------------------------------------------------- audit

@app.command()
def audit(
    weights: Annotated[Path, typer.Argument(help="The model: a state dict saved with "
                                                 "torch.save(model.state_dict(), path), or a "
                                                 "TorchScript file (torch.jit.save).")],
    data: Annotated[Path, typer.Option(help="Data folder of any layout dermcam reads (ISIC "
                                            "2016/2017, HAM10000, PH2, a generic labels.csv); "
                                            "its images with lesion masks are audited.")],
    arch: Annotated[str | None, typer.Option(help="The torchvision architecture the weights "
                                                  "belong to, with a 2-class head (e.g. "
                                                  "resnet18; 'dermcam models' lists them). "
                                                  "Needed for TorchScript files too.")] = None,
    layer: Annotated[str | None, typer.Option(help="Module name of the layer to hook (e.g. "
                                                   "layer3); default: the architecture's CAM "
                                                   "layer, its last convolutional block.")]
    = None,
    method: Annotated[str, typer.Option(help="CAM method (pytorch-grad-cam): gradcam, "
                                             "gradcam++, hirescam, layercam, eigencam, "
                                             "xgradcam.")] = "gradcam",
    target: Annotated[str, typer.Option(help="Class each heatmap explains: malignant (the "
                                             "same question for every image), predicted or "
                                             "true.")] = "malignant",
    split: Annotated[str, typer.Option(help="Which images: test, train or all.")] = "test",
    image_size: Annotated[int, typer.Option(help="Side the images are resized to, as the "
                                                 "model was trained.")] = 224,
    limit: Annotated[int | None, typer.Option(help="Only the first N masked images.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the results "
                                                                 "(default: audit-<weights "
                                                                 "file name>).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per Grad-CAM batch.")] = 32,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for CIs.")] = 1000,
    device: Annotated[str, typer.Option(help="Where the heatmaps are computed: cpu, cuda, "
                                             "cuda:INDEX or auto.")] = "cpu",
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
    = False,
) -> None:
    """Audit the attention of a two-class model trained outside dermcam, without a run.

    The model must output two logits per image, \\[benign, malignant] (a one-logit model
    can be wrapped as torch.cat(\\[-z, z], 1) / 2 before saving). A state dict is loaded
    safely (weights_only=True: no code runs) into the torchvision architecture named by
    --arch. A TorchScript model takes no Python hooks, so its weights are loaded into
    --arch as well, and both must give the same outputs. Images are normalised with the
    ImageNet mean and standard deviation, as dermcam normalises its own inputs.

    Writes attention.csv (one row per image: leakage, chance and excess leakage, pixel
    AUROC and the other scores of 'dermcam explain'), attention_summary.json (means with
    95 % CIs per class, whether the maps beat uniform attention, the lesion-size confound
    test) and manifest.json into --out, and prints a short summary.
    """
    from dermcam.audit import audit_folder, audit_summary, load_model, write_audit

    _state["debug"] = _state["debug"] or debug
    if image_size < 8:
        raise DermcamError(f"--image-size must be at least 8, got {image_size}")
    if split not in ("test", "train", "all"):
        raise DermcamError(f"--split must be test, train or all, got {split!r}")
    if target not in ("malignant", "predicted", "true"):
        raise DermcamError(f"--target must be malignant, predicted or true, got {target!r}")
    model, layer, kind = load_model(weights, arch, layer, image_size=image_size)
    table = audit_folder(model, layer, data, image_size=image_size, split=split, limit=limit,
                         method=method, target=target, batch_size=batch_size, device=device)
    summary = audit_summary(table, n_boot=n_boot)
    out = out if out is not None else Path(f"audit-{weights.stem}")
    write_audit(out, table, summary, config={
        "weights": str(weights.resolve()), "format": kind, "arch": arch, "layer": layer,
        "method": method, "target": target, "data": str(data.resolve()), "split": split,
        "image_size": image_size, "limit": limit, "n_boot": n_boot})
    _print_audit(table, summary, f"{weights.name} ({kind}, {arch}) {method} at {layer}")
    console.print(f"wrote {out}/attention.csv, attention_summary.json, manifest.json")


def _print_audit(table, summary, what: str) -> None:
    guard = summary["guard"]
    lo, hi = guard["pixel_auroc_ci"]
    counts = table["label"].value_counts()
    console.print(f"{what}: {len(table)} images ({counts.get(0, 0)} benign, "
                  f"{counts.get(1, 0)} malignant); median pixel AUROC "
                  f"{_ci(guard['median_pixel_auroc'], lo, hi)} (0.5 = uniform)",
                  highlight=False)
    t = Table(title="attention: mean [95 % CI] by class; n (undefined, left out of the mean)")
    for c in ("class", "n (undefined)", "leakage", "excess leakage", "pixel AUROC"):
        t.add_column(c)
    rows = {}
    for r in summary["by_class"].to_dict(orient="records"):
        rows.setdefault(int(r["label"]), {})[r["metric"]] = r

    def cell(r) -> str:
        return "-" if r is None or r["mean"] != r["mean"] else \
            _ci(r["mean"], r["ci_low"], r["ci_high"], 3)

    for label, ms in sorted(rows.items()):
        leak = ms["leakage"]
        t.add_row("malignant" if label == 1 else "benign",
                  f"{leak['n']} ({leak.get('n_nan', 0)})", cell(leak),
                  cell(ms.get("excess_leakage")), cell(ms.get("pixel_auroc")))
    console.print(t)
    console.print(f"  {guard['sentence']}", highlight=False)
    sc = summary.get("size_confound") or {}
    if sc.get("summary"):
        console.print(f"  {sc['summary']}", highlight=False)


# ----------------------------------------------------------------------- probe

@app.command()
def probe(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by 'dermcam train' "
                                                 "(explain first to also test whether the "
                                                 "heatmaps track the behaviour).")],
    probes: Annotated[str, typer.Option(help="Comma-separated probes: lesion_removed, "
                                             "background_removed, artifact_inserted, "
                                             "artifact_removed (default: all).")]
    = "lesion_removed,background_removed,artifact_inserted,artifact_removed",
    artifacts: Annotated[str | None, typer.Option(help="Artifacts to insert/remove "
                                                       "(default: ruler, ink, patch, "
                                                       "vignette, hair).")] = None,
    placements: Annotated[int, typer.Option(help="Seeded placements per image and inserted "
                                                 "artifact.")] = 3,
    seed: Annotated[int | None, typer.Option(help="Seed for placements and bootstrap "
                                                  "(default: the run's).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N test images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images perturbed per batch (each makes "
                                                 "about 20 variants).")] = 32,
    inpaint: Annotated[str, typer.Option(help="OpenCV inpainting: telea or ns "
                                              "(Navier-Stokes).")] = "telea",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for 95 % CIs.")] = 1000,
    artifact_labels: Annotated[Path | None, typer.Option(
        "--artifact-labels",
        help="Per-image artifact labels (e.g. isic_bias.csv), joined by image id and kept "
             "for the run's later stages (--artifacts here names artifacts to "
             "insert); lesion and background removal are then split by each artifact's "
             "presence. With --data they label that set's images.")] = None,
    device: Annotated[str, typer.Option(help="Where the models run: auto (CUDA when "
                                             "available, else CPU), cpu, cuda or "
                                             "cuda:INDEX.")] = "auto",
    data: Annotated[Path | None, typer.Option(
        help="Probe the run's models on another data set's masked images (any layout) "
             "instead, into RUN/external/NAME/ (as evaluate --data), at the run's "
             "thresholds.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Name of the external set's folder (default: the data folder's name).")] = None,
    by: Annotated[str | None, typer.Option(
        help="Probe summary per subgroup of these comma-separated columns: any metadata "
             "column of the layout, or 'ita' (skin tone estimated from the image).")] = None,
    min_group: Annotated[int, typer.Option(
        help="Subgroups with fewer images are too few to estimate.")] = 20,
    precision: Annotated[str, typer.Option(
        help="Inference precision: 32-true (float32, as evaluate scores), bf16-mixed "
             "(bfloat16 autocast, channels-last, BatchNorm folded into the convolutions: "
             "about 2x faster where bfloat16 is native, probabilities about 1e-2 away from "
             "float32's) or auto (bf16-mixed per model "
             "where training's --precision auto would choose it).")] = "32-true",
) -> None:
    """Behavioural audit: change the image, watch the malignant probability.

    For every trained model and every test image with a lesion mask: the lesion inpainted
    away, the background replaced by flat skin, artifacts (ruler, ink, colour patch, dark
    corners, hair) pasted outside the lesion, and, where the data carry artifact maps, each
    artifact inpainted away. Prints the mean change in malignant probability with 95 % CIs,
    decision flip rates at the run's threshold, AUC without the lesion or the background, and
    whether the CAM leakage predicts the change. Writes probe.csv, probe_summary.json and
    figures/probe_*.png; resumes per batch.

    Inpainting leaves traces a model may react to; a changed prediction shows reliance, an
    unchanged one does not prove its absence.
    """
    from dermcam.device import resolve_device
    from dermcam.stages.external import by_columns
    from dermcam.stages.probe import SUBGROUP_TITLES, read_summary_object, run_probe

    if artifact_labels is not None and data is None:
        _use_artifact_labels(run_dir, artifact_labels)
    names = [p.strip() for p in probes.split(",") if p.strip()]
    arts = [a.strip() for a in artifacts.split(",") if a.strip()] if artifacts else None
    with progress_bar("probe batches") as cb:
        entries = run_probe(run_dir, probes=names, artifacts=arts, placements=placements,
                            seed=seed, limit=limit, batch_size=batch_size,
                            inpaint_method=inpaint, n_boot=n_boot, progress=cb,
                            device=str(resolve_device(device)), data=data, name=name,
                            by=by_columns(by), min_group=min_group,
                            artifact_labels=artifact_labels if data is not None else None,
                            precision=precision)
    where = Path(run_dir)
    if data is not None:
        from dermcam.stages.external import safe_name

        where = where / runmod.EXTERNAL_DIR / safe_name(name or Path(data).resolve().name)
    summary = read_summary_object(where) or {}
    ext = summary.get("external") or {}
    if ext:
        console.print(f"external set {ext['name']} ({ext['data']}, {ext['layout']} layout): "
                      f"{ext['thresholds']}")
    _print_probe(entries, run_dir)
    _print_summary_subgroups(summary.get("subgroups"), SUBGROUP_TITLES,
                             lambda e: " ".join(filter(None, [e["model"], e.get("artifact"),
                                                              _probe_title(e["probe"])])),
                             "probe")
    _print_probe_presence(summary.get("artifact_presence"))
    console.print(f"wrote {where}/probe.csv, probe_summary.json, figures/probe_*.png")


def _probe_title(probe: str) -> str:
    from dermcam.stages.probe import PROBE_TITLES as titles

    return titles.get(probe, probe)


def _print_probe_presence(rows) -> None:
    """Lesion and background removal on images with vs without each labelled artifact."""
    if not rows:
        return
    t = Table(title="removal probes by artifact presence: Δ P(malignant) mean [95 % CI], "
                    "AUC [95 % CI]; with | without the artifact")
    roc_auc = metric_label("roc_auc", short=True)
    for c in ("model", "probe", "artifact", "n with", "Δ with", f"{roc_auc} with", "n without",
              "Δ without", f"{roc_auc} without", "Δ differs p"):
        t.add_column(c)

    def ci(b, value: str, prefix: str, sign: bool = False) -> str:  # 'n/a' alone: no value
        if not is_number(b.get(value)):
            return "n/a"
        return fmt_ci(b[value], b.get(f"{prefix}_ci_low"), b.get(f"{prefix}_ci_high"), 3,
                      sign=sign, collapse=False)

    def delta(b) -> str:
        return ci(b, "delta_mean", "delta", sign=True)

    def auc(b) -> str:
        return ci(b, "auc", "auc")

    for r in rows:
        w, wo = r["with"], r["without"]
        t.add_row(r["model"], _probe_title(r["probe"]), r["artifact"],
                  f"{w['n']} ({w['n_malignant']} m)", delta(w), auc(w),
                  f"{wo['n']} ({wo['n_malignant']} m)", delta(wo), auc(wo),
                  fmt_num(r.get("delta_p_adjusted", r.get("delta_p")), 3))
    console.print(t)
    console.print("  Δ differs p: two-sided Mann-Whitney of the per-image change, with vs "
                  "without, Holm-adjusted over the rows; p ≥ 0.05 is inconclusive.")


def _print_probe(entries, run_dir=None) -> None:
    from dermcam.stages.probe import CAVEAT, PROBE_TITLES, sentences

    t = Table(title="probes: change in malignant probability, mean [95 % CI]")
    roc_auc = metric_label("roc_auc", short=True)
    for c in ("model", "probe", "n", "Δ P(malignant)", "flips b→m", "flips m→b",
              f"{roc_auc} [95 % CI]", f"{roc_auc} intact"):
        t.add_column(c)
    for e in entries:
        what = PROBE_TITLES[e["probe"]]
        if e.get("artifact"):
            what = f"{e['artifact']} {what}"
        auc = (fmt_ci(e["auc"], e.get("auc_ci_low"), e.get("auc_ci_high"), 3, collapse=False)
               if "auc" in e else "")
        t.add_row(e["model"], what, str(e["n"]),
                  fmt_ci(e["delta_mean"], e["delta_ci_low"], e["delta_ci_high"], 3, sign=True,
                         collapse=False),
                  fmt_pct(e["flip_to_malignant"]), fmt_pct(e["flip_to_benign"]),
                  auc, fmt_num(e.get("auc_intact"), 3) if "auc" in e else "")
    console.print(t)
    for line in sentences(entries):
        console.print("  " + line)
    console.print(f"  {CAVEAT}")


# ---------------------------------------------------------------------- report

@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (after evaluate; explain adds "
                                                 "the attention sections).")],
    out: Annotated[Path | None, typer.Option(help="Where to write (default "
                                                     "RUN_DIR/report.html).")] = None,
) -> None:
    """One self-contained HTML report (opens offline) for reviewers: summary, model comparison
    with CIs and tests, attention analysis, a gallery of leaking images, method notes."""
    from dermcam.stages.report import run_report

    path = run_report(run_dir, out)
    console.print(f"wrote {path}")


# ------------------------------------------------------------------------ demo

@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the data and the run.")]
    = Path("dermcam-demo"),
    preset: Annotated[str, typer.Option(help="Synthetic preset: clean or shortcut.")] = "clean",
    n_train: Annotated[int, typer.Option(help="Synthetic training images.")] = 900,
    n_test: Annotated[int, typer.Option(help="Synthetic test images.")] = 379,
    image_size: Annotated[int, typer.Option(help="Model input side in pixels.")] = 64,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per model.")] = 10,
    source_size: Annotated[int, typer.Option(help="Side of the generated images in pixels.")]
    = 128,
    models: Annotated[str, typer.Option(help="Comma-separated models.")]
    = ",".join(DEFAULT_MODELS),
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in --out.")] = True,
    shortcut: Annotated[bool, typer.Option(help="Also train one model where rulers mark "
                                                "malignancy in training only, and audit it "
                                                "beside its control.")] = True,
    precision: Annotated[str, typer.Option(help="Training precision: " + PRECISION_HELP)]
    = "auto",
    method: Annotated[str, typer.Option(
        help="CAM method of the audit, its layer chosen per model by the localisation "
             "benchmark; 'auto' chooses the method too. HiResCAM credits a location only "
             "where the output is sensitive to it there: on the planted shortcut, "
             "Grad-CAM-style methods at early layers also put the rulers above their "
             "area share for the control, which does not use them.")] = "hirescam",
) -> None:
    """The whole study on the synthetic benchmark: synth -> train -> evaluate -> explain ->
    probe -> report, plus a planted shortcut that the audit must catch.

    The study's three models are trained on data whose artifacts are independent of the
    label; their HiResCAM layer is chosen per model on masked validation images (the
    localisation benchmark, which scores five methods at every candidate layer). Then
    ResNet18 is trained on the same seed's images with rulers tied to malignancy in
    training only; its heatmap mass on the rulers, relative to their
    area, is shown with a 95 % CI beside the control's, with both test AUCs, and the
    behavioural probes show how its malignant probability moves when a ruler is inserted or
    removed.

    Uses ImageNet weights when they are in torchvision's cache for every model; otherwise
    trains from scratch and says so (only the demo makes that choice by itself).
    """
    from dermcam.demo import run_demo

    run_demo(out, preset=preset, n_train=n_train, n_test=n_test, image_size=image_size,
             epochs=epochs, source_size=source_size,
             models=[m.strip() for m in models.split(",")], seed=seed,
             overwrite=overwrite, say=console.print, progress_bar=progress_bar,
             quiet=_state["quiet"], shortcut=shortcut, precision=precision,
             method=method, show=(_print_training, _print_metrics, _print_attention,
                                  _print_shortcut, _print_probe))


def _print_shortcut(exp) -> None:
    maps = f" ({exp['method']} maps)" if exp.get("method") else ""
    t = Table(title=f"planted shortcut{maps}: heatmap mass on the {exp['artifact']} / its "
                    "area (1 = uniform), test images carrying one")
    for c in ("model", "layer", "n", "ratio [95 % CI]", "attends",
              f"test {metric_label('roc_auc', short=True)} [95 % CI]"):
        t.add_column(c)
    for role, r in exp["runs"].items():
        t.add_row(f"{exp['model']} ({role})", r["layer"], str(r["n"]),
                  _ci(r["ratio"], r["ratio_ci_low"], r["ratio_ci_high"]),
                  "YES" if r["flagged"] else "no",
                  _ci(r["test_auc"], r["test_auc_ci_low"], r["test_auc_ci_high"], 3))
    console.print(t)
    console.print(f"  {exp['sentence']}")
    if exp.get("probe_sentence"):
        console.print(f"  {exp['probe_sentence']}")


# -------------------------------------------------------------------- download

@app.command()
def download(
    dataset: Annotated[str, typer.Argument(help="Data set to fetch: isic2016 (Part 3B).")],
    to: Annotated[Path, typer.Option("--to", help="Folder to download and unpack into.")],
    base_url: Annotated[str | None, typer.Option(
        help="Where the files live (default: the ISIC challenge bucket, "
             "https://isic-challenge-data.s3.amazonaws.com/2016/); http(s):// or file:// "
             "for a local mirror.")] = None,
    checksums: Annotated[Path | None, typer.Option(
        help="File of 'SHA256  FILENAME' lines to verify against (sha256sum format).")]
    = None,
    retries: Annotated[int, typer.Option(help="Extra attempts after a dropped transfer "
                                              "(each resumes).")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds to wait on the network.")] = 60.0,
) -> None:
    """Fetch, verify and safely unpack a public data set, then check its published counts.

    Interrupted downloads resume from NAME.part; files are renamed into place only after
    their size (and SHA-256, when known) is checked; download.json records what was
    fetched and whether each file was verified.
    """
    from dermcam.data import download as dl

    if dataset.lower().replace("-", "").replace("_", "") != "isic2016":
        raise DermcamError(f"cannot download {dataset!r}: only isic2016 is supported; fetch "
                           "ISIC 2017, HAM10000 or PH2 by hand and point 'dermcam info' at "
                           "the folder")
    with progress_bar("download") as cb:
        res = dl.download_isic2016(to, base_url=base_url or dl.DEFAULT_BASE_URL,
                                   checksums=checksums, progress=cb, say=console.print,
                                   retries=retries, timeout=timeout)
    for line in res.summary_lines():
        console.print(line, highlight=False)
    _print_info(to)
    console.print(f"wrote {to / dl.RECORD}  (next: dermcam train {to})")


# --------------------------------------------------------------------- predict

@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by 'dermcam train' "
                                                    "(RUN/models/<name>/model.pt).")],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (scanned "
                                                      "for .jpg/.jpeg/.png/.bmp, not "
                                                      "recursively).")],
    masks: Annotated[Path | None, typer.Option(help="Folder of lesion masks "
                                                    "(<stem>_Segmentation.png, "
                                                    "<stem>_segmentation.png or <stem>.png): "
                                                    "adds attention leakage scores.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for predictions.csv and "
                                                          "overlays/.")] = Path("predictions"),
    batch_size: Annotated[int | None, typer.Option(
        help="Images per batch (default: 16 on the CPU, 64 on a GPU).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip unreadable images with a warning "
                                                "instead of stopping.")] = False,
    device: Annotated[str, typer.Option(help="Where the models run: auto (CUDA when "
                                             "available, else CPU), cpu, cuda or "
                                             "cuda:INDEX.")] = "auto",
) -> None:
    """Classify new images: malignancy probability, decision and Grad-CAM overlay per image.

    The decision uses the threshold chosen on validation and stored in the checkpoint.
    Research use only: not validated for clinical decisions.
    """
    from dermcam.device import inference_batch_size, resolve_device
    from dermcam.predict import model_card_lines
    from dermcam.predict import predict as run_predict

    dev = resolve_device(device)
    batch_size = inference_batch_size(dev, batch_size, cpu=16, gpu=64)
    device = str(dev)
    with progress_bar("predict") as cb:
        res = run_predict(checkpoint, images, out, masks=masks, batch_size=batch_size,
                          skip_bad=skip_bad, device=device, progress=cb,
                          warn=lambda msg: err.print(f"warning: {msg}", highlight=False,
                                                     soft_wrap=True))
    console.print("[bold]model card[/]")
    for line in model_card_lines(res.card):
        console.print(f"  {line}", highlight=False)
    t = Table(title=f"predictions (threshold {res.table['threshold'].iloc[0]:.3f})")
    cols = ["image_id", "prob_malignant", "decision"] + (
        ["leakage", "pixel_auroc"] if "leakage" in res.table else [])
    for c in cols:
        t.add_column(c)
    for _, r in res.table.head(20).iterrows():
        t.add_row(*[("-" if r[c] != r[c] else f"{r[c]:.3f}") if isinstance(r[c], float)
                    else str(r[c]) for c in cols])
    console.print(t)
    more = f" (first 20 of {len(res.table)} shown)" if len(res.table) > 20 else ""
    console.print(f"wrote {res.csv_path} and {len(res.table)} overlays in {out / 'overlays'}"
                  f"{more}; {len(res.skipped)} skipped")


# -------------------------------------------------------------- entry point

def main() -> None:
    """Console entry: run the app, turning user errors into one line and exit code 2."""
    debug = "--debug" in sys.argv
    try:
        app()
    except DermcamError as exc:
        if debug:
            raise
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: finished files are intact; resume with --resume where offered")
        sys.exit(130)
