"""The ``dermcam`` command line: a thin typer app, one command per stage.

User errors (:class:`~dermcam.errors.DermcamError`) print one line and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from dermcam import run as runmod
from dermcam.errors import DermcamError
from dermcam.logs import quiet_libraries
from dermcam.models import DEFAULT_MODELS
from dermcam.terminal import (
    ARTIFACT_LABELS,
    CAM_METHODS,
    DEVICES,
    App,
    ArtifactLabels,
    By,
    Calibration,
    CamBatch,
    DataDir,
    Debug,
    Device,
    Epochs,
    ExternalData,
    ExternalName,
    Group,
    ImageSize,
    Limit,
    MinGroup,
    Models,
    NBoot,
    NTest,
    NTrain,
    Overwrite,
    Placements,
    Preset,
    ProbePrecision,
    RunDir,
    TrainPrecision,
    answer,
    console,
    detail,
    err,
    names,
    numbers,
    progress_bar,
    show,
    state,
)

app = App(
    name="dermcam", cls=Group, no_args_is_help=True, add_completion=False,
    rich_markup_mode="rich", pretty_exceptions_enable=False,
    help="Train, compare and audit dermoscopy classifiers (benign vs malignant): honest "
         "metrics with confidence intervals and size-aware Grad-CAM attention leakage.\n\n"
         "Pipeline: synth/download -> info -> train -> evaluate -> explain -> probe -> report, each "
         "stage reading the previous one's files in a run folder. 'dermcam demo' runs it all "
         "on the synthetic benchmark.")


def _version_callback(value: bool) -> None:
    if value:
        from dermcam import __version__

        typer.echo(f"dermcam {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: Debug = False,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
          = False,
          verbose: Annotated[bool, typer.Option(
              "--verbose", "-v", help="Print every detail table (always written to the run "
                                      "folder's dermcam.log).")] = False,
          version: Annotated[bool, typer.Option("--version", is_eager=True,
                                                callback=_version_callback,
                                                help="Print the version and exit.")]
          = False) -> None:
    state["debug"] = debug
    state["verbose"] = verbose
    state["quiet"] = quiet or not sys.stdout.isatty() and os.environ.get("CI") == "true"
    quiet_libraries(debug)


# ----------------------------------------------------------------------- synth

@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the data set into.")],
    preset: Preset = "clean",
    n_train: NTrain = 900,
    n_test: NTest = 379,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    prevalence: Annotated[float, typer.Option(help="Malignant share.")] = 0.19,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write the synthetic dermoscopy benchmark in the ISIC 2016 Part 3B layout.

    Lesions differ by the ABCD cues (asymmetry, border, colour, diameter; malignant
    larger on average), with exact masks, and background artifacts (ruler, ink, colour
    patch, vignette, hair) recorded per pixel in ISIC_xxx_Artifacts.png and per image in
    metadata.csv, so attention on them can be measured.

    \b
    Examples:
      dermcam synth --out data/synth
      dermcam synth --out data/shortcut --preset shortcut --seed 1
      dermcam synth -o data/tiny --n-train 100 --n-test 40 --size 128
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
    _show_data(out)


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
def info(
    data: DataDir,
    check: Annotated[bool, typer.Option(
        help="Decode every image and mask (in parallel, filling the decode cache at "
             "--image-size), so truncated image data are found too; run it once before training.")]
    = False,
    image_size: Annotated[int, typer.Option(
        help="The model input side 'dermcam train' will use: the size --check caches images at, "
             "and what 'much smaller' means.")] = 224,
) -> None:
    """Describe a data set and check all of it: counts per split and class, masks, image
    sizes, artifacts, then every problem found, one line each.

    Every CSV row and every image, mask and artifact-map header is checked; --check also
    decodes every file. Errors (exit 2) make the data set unusable as it is; warnings are
    odd but usable inputs (16-bit, palette, EXIF-rotated, non-binary masks, small images).

    \b
    Examples:
      dermcam info data/isic2016
      dermcam info data/isic2016 --check
    """
    from rich.markup import escape

    from dermcam.data.check import check_dataset
    from dermcam.views import problem_lines

    _check_image_size(image_size)
    with progress_bar("check images" + (" (decode)" if check else "")) as cb:
        report = check_dataset(data, decode=check, image_size=image_size, progress=cb)
    if report.ok:
        _show_data(data, mask_areas=report.mask_areas)
    if report.problems:
        for line in problem_lines(report):
            err.print(escape(line), highlight=False, soft_wrap=True)
    else:
        console.print(report.summary(), highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(2)


def _check_image_size(image_size: int) -> None:
    if image_size < 8:
        raise DermcamError(f"--image-size must be at least 8, got {image_size}")


def _show_data(root: Path, mask_areas: dict[str, float] | None = None) -> None:
    """The data set's tables and sentences (:func:`dermcam.views.dataset_tables`)."""
    from dermcam.data.describe import describe
    from dermcam.views import dataset_lines, dataset_tables

    d = describe(root, mask_areas=mask_areas)
    for table in dataset_tables(d, root):
        show(table)
    for line in dataset_lines(d):
        console.print(line)


# ----------------------------------------------------------------------- train

@app.command()
def models(
    image_size: Annotated[int, typer.Option(
        help="Input side in pixels at which to show each candidate layer's spatial size.")] = 224,
    run_dir: Annotated[Path | None, typer.Option(
        "--run", help="A run folder: use its input size.")] = None,
) -> None:
    """List the architectures dermcam knows: the study's Grad-CAM layer, the candidate layers
    the localisation benchmark scores (with their spatial size at the input size), and
    whether ImageNet weights are cached.

    \b
    Examples:
      dermcam models
      dermcam models --image-size 128
      dermcam models --run runs/r1
    """
    from dermcam.models import known_models
    from dermcam.views import models_table

    if run_dir is not None:
        image_size = runmod.Run.open(run_dir).image_size
    show(models_table(image_size, known_models(image_size)))


@app.command()
def train(
    data: DataDir,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run folder to create.")] = Path("runs/run"),
    models: Models = ",".join(DEFAULT_MODELS),
    weights: Annotated[str, typer.Option(
        help="'imagenet' (torchvision weights API and TORCH_HOME cache), 'none' (from scratch) or "
             "a state-dict PATH.")] = "imagenet",
    image_size: ImageSize = 224,
    epochs: Epochs = 30,
    batch_size: Annotated[int, typer.Option(help="Images per training batch.")] = 16,
    lr: Annotated[str, typer.Option(
        help="Adam learning rate: one for every model (1e-3), or with per-model rates, e.g. "
             "1e-3,mobilenet_v2=3e-3.")] = "1e-3",
    patience: Annotated[int, typer.Option(help="Early-stopping patience (epochs).")] = 5,
    schedule: Annotated[str, typer.Option(
        help="Learning-rate schedule: plateau (halve on a validation plateau, the study's) or "
             "onecycle (warm-up, then cosine annealing to zero over --epochs; best for short "
             "runs).")] = "plateau",
    monitor: Annotated[str, typer.Option(
        help="Best checkpoint by val_auc or val_loss.")] = "val_auc",
    imbalance: Annotated[str, typer.Option(
        help="weighted_loss, balanced_sampler or none.")] = "weighted_loss",
    calibration: Calibration = "platt",
    val_fraction: Annotated[float, typer.Option(
        help="Stratified validation share of the training split.")] = 0.2,
    seed: Annotated[int, typer.Option(
        help="Random seed (validation split, weights of new layers, augmentation, batch order).")]
    = 0,
    augment: Annotated[bool, typer.Option(help="Flips, rotation, colour jitter.")] = True,
    colour_jitter: Annotated[float, typer.Option(
        help="Colour jitter when augmenting: brightness, contrast and saturation each scaled by a "
             "factor from [1 - J, 1 + J] per image; 0 keeps the colours.")] = 0.2,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu, auto (Lightning).")] = "auto",
    devices: Annotated[str, typer.Option(help="Lightning devices, e.g. 1, 2, auto.")] = "1",
    strategy: Annotated[str, typer.Option(help="Lightning strategy, e.g. auto, ddp.")] = "auto",
    precision: TrainPrecision = "auto",
    num_workers: Annotated[int | None, typer.Option(
        help="DataLoader workers per process (default: from the CPU count on a GPU, 0 on the CPU).")]
    = None,
    num_nodes: Annotated[int, typer.Option(
        help="Machines (Lightning num_nodes), for SLURM or torchrun across nodes.")] = 1,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="Deterministic algorithms (Lightning 'warn' mode, cuDNN without "
                                "benchmark): the same bytes on the same GPU, slower.")] = False,
    overwrite: Overwrite = False,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    keep_checkpoints: Annotated[bool, typer.Option(
        "--keep-checkpoints", help="Keep Lightning's best.ckpt and last.ckpt (with optimizer "
                                   "state) in models/NAME/lightning/, not only model.pt.")] = False,
) -> None:
    """Fine-tune each model; keep its best checkpoint; choose its threshold on validation.

    \b
    Examples:
      dermcam train data/isic2016 --out runs/r1
      dermcam train data/synth --out runs/r1 --models resnet18 --weights none --epochs 5
      dermcam train data/isic2016 --out runs/r1 --resume
    """
    from dermcam.config import TrainConfig, parse_lr
    from dermcam.stages.train import train as do_train

    same = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__}
    lr_default, lr_by_model = parse_lr(lr)
    cfg = TrainConfig(**{**same, "data": str(data), "out": str(out), "models": names(models),
                         "max_epochs": epochs, "lr": lr_default, "lr_by_model": lr_by_model,
                         "progress": not state["quiet"]})
    with progress_bar("decode + cache images") as cb:
        manifest = do_train(cfg, overwrite=overwrite, resume=resume, progress=cb)
    if not manifest:  # a worker process of multi-process training: rank 0 reports
        return
    from dermcam.views import training_table

    table = training_table(runmod.Run(out, manifest).model_records)
    show(table)
    detail(out, "train", [table])
    console.print(f"run folder: {out.resolve()}  (next: dermcam evaluate {out})")


# -------------------------------------------------------------------- evaluate

@app.command()
def evaluate(
    run_dir: RunDir,
    n_boot: NBoot = 1000,
    data: ExternalData = None,
    name: ExternalName = None,
    by: By = None,
    min_group: Annotated[int, typer.Option(
        help="Subgroups with fewer images (or under 5 of a class) are too few to estimate.")] = 20,
    exclude_duplicates: Annotated[bool, typer.Option(
        help="Leave out external images that duplicate the run's own images.")] = False,
    artifact_labels: ArtifactLabels = None,
    device: Device = "auto",
) -> None:
    """Test-set metrics with 95 % CIs, baselines, and paired model comparisons.

    \b
    Examples:
      dermcam evaluate runs/r1
      dermcam evaluate runs/r1 --artifact-labels isic_bias.csv
      dermcam evaluate runs/r1 --data data/ph2 --name ph2 --exclude-duplicates
    """
    from dermcam.config import EvaluateConfig
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.views import external_table, labels_line, metrics_tables, subgroup_tables

    cfg = _config(EvaluateConfig, locals())
    audit = _audit_set(run_dir, data, name, artifact_labels)
    with progress_bar("load test images") as cb:
        result = run_evaluate(run_dir, cfg, audit, progress=cb)
    if result.get("artifact_labels"):
        console.print(labels_line(result["artifact_labels"]), highlight=False)
    tables = metrics_tables(result)
    ext = result.get("external")
    if ext:
        from dermcam.io import read_json

        internal = runmod.Outputs(run_dir).metrics
        tables.insert(0, external_table(read_json(internal) if internal.exists() else None,
                                        [(ext["name"], result)]))
    show(tables[0])
    _finish(run_dir, "evaluate", tables + subgroup_tables(result),
            ("discrimination", "calibration", "external", "subgroups"),
            audit.out.metrics)


def _config(cls, options: dict, **more):
    """The stage's config (:mod:`dermcam.config`) from the command's options of the same
    names; ``--by`` as a tuple of columns."""
    from dermcam.audit_set import by_columns

    same = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
    return cls(**{**same, "by": by_columns(options.get("by")), **more})


def _audit_set(run_dir: Path, data: Path | None, name: str | None, artifacts: Path | None):
    """The run's test split, or with ``--data`` another set's (``artifacts`` joined)."""
    from dermcam.audit_set import AuditSet

    return AuditSet.open(runmod.Run.open(run_dir), data, name=name, artifacts=artifacts)


def _finish(run_dir: Path, stage: str, tables: list, topics: tuple[str, ...],
            written: Path) -> None:
    """A stage's last words: its detail tables (--verbose, dermcam.log), its findings on
    ``topics``, and the summary file it wrote."""
    detail(run_dir, stage, tables)
    answer(run_dir, topics)
    console.print(f"wrote {written.resolve()} (--verbose or dermcam.log: every table)")


# --------------------------------------------------------------------- explain

@app.command()
def explain(
    run_dir: RunDir,
    methods: Annotated[str, typer.Option(
        help=f"Comma-separated CAM methods (pytorch-grad-cam): {CAM_METHODS}; or auto: the "
             "localisation benchmark chooses each model's method with its layer.")] = "auto",
    target: Annotated[str, typer.Option(
        help="Class each heatmap explains: malignant (one question for every image, so classes "
             "compare), predicted (the study's; benign evidence lies mostly off the lesion) or "
             "true.")] = "malignant",
    normalize: Annotated[str, typer.Option(
        help="minmax (ReLU + per-image min-max, the study's) or raw (ReLU only).")] = "minmax",
    limit: Limit = None,
    batch_size: CamBatch = 16,
    sanity: Annotated[bool, typer.Option(
        help="Randomised-weights sanity check (Adebayo et al. 2018).")] = True,
    n_boot: NBoot = 1000,
    shard: Annotated[str | None, typer.Option(
        help="Compute only part i/n of the batches (e.g. 0/4), for several processes or machines; "
             "then run --merge.")] = None,
    merge: Annotated[bool, typer.Option(
        help="Score the batches written by all shards into one attention.csv.")] = False,
    layer: Annotated[str, typer.Option(
        help="CAM layer: auto (the localisation benchmark's best on masked validation images, "
             "sane), last (the study's last block), a layer name, or model=layer,... "
             "('dermcam models' lists them).")] = "auto",
    bench_methods: Annotated[str | None, typer.Option(
        help="Methods the localisation benchmark scores at every candidate layer "
             "(comma-separated, or all; default: all).")] = None,
    bench_images: Annotated[int, typer.Option(
        help="Validation images the localisation benchmark scores.")] = 64,
    cascade: Annotated[bool, typer.Option(
        help="Cascading randomisation in the sanity check (one step per block, from the output "
             "down).")] = True,
    margin: Annotated[float, typer.Option(
        help="Equivalence margin of the lesion-size confound test (TOST), in units of each metric "
             "(leakage, excess leakage, pixel AUROC): an adjusted class gap within +-margin "
             "counts as explained by size.")] = 0.02,
    artifact_labels: ArtifactLabels = None,
    device: Annotated[str, typer.Option(
        help=f"Where the heatmaps are computed: {DEVICES}; with --shard i/n, auto puts each "
             "shard on its own GPU, and on the CPU the shards split the cores.")] = "auto",
    data: ExternalData = None,
    name: ExternalName = None,
    by: By = None,
    min_group: MinGroup = 20,
) -> None:
    """Grad-CAM heatmaps for every model and test image with a mask, scored against the mask.

    Writes attention.csv (per image x model x method: the study's leakage and size-aware
    scores), attention_summary.json (CIs, class tests, the lesion-size confound test,
    sanity check, artifact attention; docs/attention.md) and figures. Interrupted runs
    resume from the saved heatmap batches.

    \b
    Examples:
      dermcam explain runs/r1
      dermcam explain runs/r1 --methods hirescam --layer last --artifact-labels isic_bias.csv
      dermcam explain runs/r1 --data data/ph2 --name ph2
    """
    from dermcam.config import ExplainConfig
    from dermcam.run import record_in_run
    from dermcam.stages.explain import run_explain
    from dermcam.views import attention_sections, external_line

    if artifact_labels is not None and data is None:  # attention summary by artifact presence
        console.print(record_in_run(run_dir, artifact_labels))  # kept for later stages
    cfg = _config(ExplainConfig, locals(), methods=names(methods), bench_methods=(
        None if bench_methods in (None, "all") else names(bench_methods)))
    audit = _audit_set(run_dir, data, name, artifact_labels) if data is not None else None
    with progress_bar("Grad-CAM batches") as cb:
        summary = run_explain(run_dir, cfg, audit, progress=cb)
    ext = summary.get("external") or {}
    where = audit.out.root if audit else Path(run_dir)
    if shard is not None:
        again = f" --data {data}" + (f" --name {name}" if name else "") if data else ""
        console.print(f"shard {shard}: {summary['batches']} batch(es) written under "
                      f"{summary.get('folder', where)}/attention; when every shard is done: "
                      f"dermcam explain {run_dir}{again} --merge")
        return
    if ext:
        console.print(external_line(ext))
    _finish(run_dir, "explain", attention_sections(summary, runmod.Run.open(run_dir).display_names),
            ("where it looks", "size confound", "artifact"), where / runmod.ATTENTION_SUMMARY)


@app.command()
def audit(
    weights: Annotated[Path, typer.Argument(
        help="The model: a state dict (plain, DDP, Lightning checkpoint, torch.compile) or a "
             "TorchScript file. Pickled whole models are refused (no code is ever unpickled).")],
    data: Annotated[Path, typer.Option(
        help="Data folder of any layout dermcam reads: its test split is audited; the "
             "validation part of its training split chooses threshold, calibration and layer.")],
    arch: Annotated[str, typer.Option(
        help="Architecture of the weights: torchvision's (resnet18; 'dermcam models') or "
             "timm's (timm:convnext_tiny), built without pretrained weights.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    image_size: Annotated[int, typer.Option(help="Input side the model was trained at.")] = 224,
    malignant_class: Annotated[int | None, typer.Option(
        help="Two outputs: which one is malignant (default 1).")] = None,
    malignant_classes: Annotated[str | None, typer.Option(
        help="K > 2 outputs: the malignant ones, summed (e.g. 0,1,4 for HAM10000's mel, bcc, "
             "akiec).")] = None,
    mean: Annotated[str | None, typer.Option(
        help="Input mean per RGB channel, e.g. 0.5,0.5,0.5 (default ImageNet's; timm: the "
             "architecture's own).")] = None,
    std: Annotated[str | None, typer.Option(help="Input std per RGB channel, as --mean.")] = None,
    resize: Annotated[str, typer.Option(
        help="squash (to a square) or shorter-side-crop (shorter side, then centre crop).")]
    = "squash",
    threshold: Annotated[float | None, typer.Option(
        help="Decision threshold on P(malignant) (default: Youden's on validation).")] = None,
    calibration: Calibration = "platt",
    by: By = None,
    artifact_labels: ArtifactLabels = None,
    placements: Placements = 2,
    limit: Limit = None,
    device: Device = "auto",
    precision: ProbePrecision = "auto",
    overwrite: Overwrite = False,
    debug: Debug = False,
) -> None:
    """The full audit of a model trained elsewhere, into an ordinary run folder.

    Reads P(malignant) from any head (docs/audit.md), then evaluates, explains (method
    and layer chosen, sanity checked), runs every probe and writes the report; later
    stages work on the run as on a trained one.

    \b
    Examples:
      dermcam audit model.pt --arch resnet18 --data data/isic2016 --out runs/mine
      dermcam audit lightning.ckpt --arch timm:convnext_tiny --data data/isic2016 --out runs/cnx
      dermcam audit ham.pt --arch resnet50 --malignant-classes 0,1,4 --data data/isic2016 --out runs/ham
    """
    from dermcam.audit_set import by_columns
    from dermcam.outside import audit as do_audit

    state["debug"] = state["debug"] or debug
    _check_image_size(image_size)

    picked = numbers(malignant_classes, int) or (
        (malignant_class,) if malignant_class is not None else None)
    run = do_audit(weights, data, out, arch=arch, image_size=image_size, malignant=picked,
                   mean=numbers(mean), std=numbers(std), resize=resize, threshold=threshold,
                   calibration=calibration, by=by_columns(by), artifact_labels=artifact_labels,
                   placements=placements, limit=limit, device=device, precision=precision,
                   overwrite=overwrite, say=lambda *a: console.print(*a, highlight=False),
                   progress_bar=progress_bar)
    answer(run.dir)
    console.print(f"report: {run.report.resolve()}")


# ----------------------------------------------------------------------- probe

@app.command()
def probe(
    run_dir: Annotated[Path, typer.Argument(
        help="Run folder written by 'dermcam train' (explain first to also test whether the "
             "heatmaps track the behaviour).")],
    probes: Annotated[str | None, typer.Option(
        help="Comma-separated probes: lesion_removed, background_removed, artifact_inserted, "
             "artifact_removed (the default), context_swap (default with --artifact-labels), "
             "hot_spots (default once 'dermcam explain' ran).")] = None,
    artifacts: Annotated[str | None, typer.Option(
        help="Artifacts to insert/remove (default: ruler, ink, patch, vignette, hair).")] = None,
    placements: Placements = 3,
    seed: Annotated[int | None, typer.Option(
        help="Seed for placements and bootstrap (default: the run's).")] = None,
    limit: Limit = None,
    batch_size: Annotated[int, typer.Option(
        help="Images perturbed per batch (each makes about 20 variants).")] = 32,
    inpaint: Annotated[str, typer.Option(
        help="OpenCV inpainting: telea or ns (Navier-Stokes).")] = "telea",
    n_boot: NBoot = 1000,
    artifact_labels: Annotated[Path | None, typer.Option(
        "--artifact-labels",
        help=ARTIFACT_LABELS + " Lesion and background removal are then split by each "
             "artifact's presence (--artifacts names artifacts to insert).")] = None,
    device: Device = "auto",
    data: ExternalData = None,
    name: ExternalName = None,
    by: By = None,
    min_group: MinGroup = 20,
    precision: ProbePrecision = "32-true",
) -> None:
    """Behavioural audit: change the image, watch the malignant probability.

    Every masked test image: lesion inpainted, background flattened, painted artifacts in
    or out; with artifact labels each lesion on real surroundings with and without one;
    after explain, what each model's maps mark off the lesion, removed and transplanted.
    Mean change with 95 % CIs, flip rates; probe_summary.json.

    \b
    Examples:
      dermcam probe runs/r1
      dermcam probe runs/r1 --probes artifact_inserted --artifacts ruler,ink --placements 5
      dermcam probe runs/r1 --artifact-labels isic_bias.csv --precision auto
    """
    from dermcam.config import ProbeConfig
    from dermcam.device import resolve_device
    from dermcam.run import record_in_run
    from dermcam.stages.probe import PROBES, read_summary_object, run_probe
    from dermcam.views import external_line, probe_sections

    if artifact_labels is not None and data is None:
        console.print(record_in_run(run_dir, artifact_labels))  # kept for later stages
    st = runmod.Run.open(run_dir).stage_entry("explain").get("status")
    explained = data is None and st == runmod.STATUS_COMPLETE
    cfg = _config(ProbeConfig, locals(), artifacts=names(artifacts) or None,
                  device=str(resolve_device(device)),
                  probes=names(probes) or [*PROBES, *["context_swap"] * bool(artifact_labels),
                                           *["hot_spots"] * explained])
    audit = _audit_set(run_dir, data, name, artifact_labels) if data is not None else None
    with progress_bar("probe batches") as cb:
        entries = run_probe(run_dir, cfg, audit, progress=cb)
    where = audit.out.root if audit else Path(run_dir)
    summary = read_summary_object(where) or {}
    ext = summary.get("external") or {}
    if ext:
        console.print(external_line(ext))
    _finish(run_dir, "probe", probe_sections({**summary, "entries": entries},
                                             runmod.Run.open(run_dir).display_names),
            ("lesion reliance", "context", "marked regions", "artifact"),
            where / runmod.PROBE_SUMMARY)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(
        help="Run folder (after evaluate; explain adds the attention sections).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="HTML file to write, or an existing folder to put report.html in "
                            "(default: RUN_DIR/report.html).")] = None,
) -> None:
    """One self-contained HTML report (opens offline) for reviewers: summary, model comparison
    with CIs and tests, attention analysis, a gallery of leaking images, method notes.

    \b
    Examples:
      dermcam report runs/r1
      dermcam report runs/r1 --out reports/r1.html
    """
    from dermcam.stages.report import run_report

    console.print(f"wrote {run_report(run_dir, out)}")


# ------------------------------------------------------------------------ demo

@app.command()
def demo(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for the data and the run.")] = Path("dermcam-demo"),
    preset: Preset = "clean",
    n_train: NTrain = 900,
    n_test: NTest = 379,
    image_size: ImageSize = 64,
    epochs: Epochs = 10,
    source_size: Annotated[int, typer.Option(help="Side of the generated images in pixels.")] = 128,
    models: Models = ",".join(DEFAULT_MODELS),
    seed: Annotated[int, typer.Option(help="Random seed of the data and the training.")] = 0,
    overwrite: Overwrite = True,
    shortcut: Annotated[bool, typer.Option(
        help="Also train one model where rulers mark malignancy in training only, and audit it "
             "beside its control.")] = True,
    precision: TrainPrecision = "auto",
    method: Annotated[str, typer.Option(
        help="CAM method of the audit (its layer chosen by the localisation benchmark; 'auto' "
             "chooses the method too). HiResCAM credits only where the output is sensitive.")]
    = "hirescam",
) -> None:
    """The whole study on the synthetic benchmark: synth -> train -> evaluate -> explain ->
    probe -> report, plus a planted shortcut that the audit must catch.

    The study's three models train on data whose artifacts are independent of the label;
    then ResNet18 trains with rulers tied to malignancy and is audited beside its control.
    ImageNet weights are used when torchvision's cache has them; otherwise it trains from
    scratch and says so.

    \b
    Examples:
      dermcam demo
      dermcam demo --out demo-s1 --seed 1
      dermcam demo --out demo-quick --models resnet18 --epochs 3 --no-shortcut
    """
    from dermcam.demo import run_demo

    run = run_demo(out, preset=preset, n_train=n_train, n_test=n_test, image_size=image_size,
                   epochs=epochs, source_size=source_size, models=names(models), seed=seed,
                   overwrite=overwrite, say=console.print, progress_bar=progress_bar,
                   quiet=state["quiet"], shortcut=shortcut, precision=precision,
                   method=method, show=detail)
    answer(run)
    console.print(f"report: {runmod.Run.open(run).report.resolve()}")


@app.command()
def download(
    dataset: Annotated[str, typer.Argument(help="Data set to fetch: isic2016 (Part 3B).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to download and unpack into.")],
    base_url: Annotated[str | None, typer.Option(
        help="Where the files live (default: the ISIC challenge bucket, "
             "https://isic-challenge-data.s3.amazonaws.com/2016/); http(s):// or file:// for a "
             "local mirror.")] = None,
    checksums: Annotated[Path | None, typer.Option(
        help="File of 'SHA256  FILENAME' lines to verify against (sha256sum format).")] = None,
    retries: Annotated[int, typer.Option(
        help="Extra attempts after a dropped transfer.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds to wait on the network.")] = 60.0,
) -> None:
    """Fetch, verify and safely unpack a public data set, then check its published counts.

    A re-run fetches only the missing files; each is moved into place once its size (and
    SHA-256, when known) is checked; download.json records what was verified.

    \b
    Examples:
      dermcam download isic2016 --out data/isic2016
      dermcam download isic2016 --out data/isic2016 --base-url file:///mnt/mirror/isic2016/
    """
    from dermcam.data import download as dl

    dl.check_supported(dataset)
    with progress_bar("download") as cb:
        res = dl.download_isic2016(out, base_url=base_url or dl.DEFAULT_BASE_URL,
                                   checksums=checksums, progress=cb, say=console.print,
                                   retries=retries, timeout=timeout)
    for line in res.summary_lines():
        console.print(line, highlight=False)
    _show_data(out)
    console.print(f"wrote {out / dl.RECORD}  (next: dermcam train {out})")


# --------------------------------------------------------------------- predict

@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(
        help="Checkpoint written by 'dermcam train' (RUN/models/<name>/model.pt).")],
    images: Annotated[list[Path], typer.Argument(
        help="Image files and/or folders (scanned for .jpg/.jpeg/.png/.bmp, not recursively).")],
    masks: Annotated[Path | None, typer.Option(
        help="Folder of lesion masks (<stem>_Segmentation.png, <stem>_segmentation.png or "
             "<stem>.png): adds attention leakage scores.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for predictions.csv and overlays/.")] = Path("predictions"),
    batch_size: Annotated[int | None, typer.Option(
        help="Images per batch (default: 16 on the CPU, 64 on a GPU).")] = None,
    skip_bad: Annotated[bool, typer.Option(
        help="Skip unreadable images with a warning instead of stopping.")] = False,
    device: Device = "auto",
) -> None:
    """Classify new images: malignancy probability, decision and Grad-CAM overlay per image.

    The decision uses the threshold chosen on validation and stored in the checkpoint.
    Research use only: not validated for clinical decisions.

    \b
    Examples:
      dermcam predict runs/r1/models/resnet18/model.pt photos/
      dermcam predict runs/r1/models/resnet18/model.pt a.jpg b.jpg --masks masks/ --out preds
    """
    from dermcam.device import inference_batch_size, resolve_device
    from dermcam.predict import model_card_lines
    from dermcam.predict import predict as run_predict
    from dermcam.views import predictions_table

    dev = resolve_device(device)
    with progress_bar("predict") as cb:
        res = run_predict(checkpoint, images, out, masks=masks,
                          batch_size=inference_batch_size(dev, batch_size, cpu=16, gpu=64),
                          skip_bad=skip_bad, device=str(dev), progress=cb,
                          warn=lambda msg: err.print(f"warning: {msg}", highlight=False,
                                                     soft_wrap=True))
    console.print("[bold]model card[/]")
    for line in model_card_lines(res.card):
        console.print(f"  {line}", highlight=False)
    show(predictions_table(res.table))
    console.print(f"wrote {res.csv_path} and {len(res.table)} overlays in {out / 'overlays'}; "
                  f"{len(res.skipped)} skipped")


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
