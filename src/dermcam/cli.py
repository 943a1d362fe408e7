"""The ``dermcam`` command line: a thin typer app, one command per stage. User errors print
one line and exit 2 (``--debug``: the traceback)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dermcam import options as opt
from dermcam import run as runmod
from dermcam import terminal, views
from dermcam.config import EvaluateConfig, ExplainConfig, ProbeConfig, TrainConfig, parse_lr
from dermcam.device import inference_batch_size, resolve_device
from dermcam.errors import DermcamError
from dermcam.io import read_json
from dermcam.logs import quiet_libraries
from dermcam.models import DEFAULT_MODELS, known_models
from dermcam.run import record_in_run
from dermcam.terminal import answer, console, detail, err, names, numbers, progress_bar, show, state

app = terminal.App(
    name="dermcam", cls=terminal.Group, no_args_is_help=True, add_completion=False,
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
def _main(debug: opt.Debug = False, quiet: opt.Quiet = False, verbose: opt.Verbose = False,
          version: Annotated[bool, typer.Option("--version", is_eager=True,
                                                callback=_version_callback,
                                                help="Print the version and exit.")]
          = False) -> None:
    state["debug"] = debug
    state["verbose"] = verbose
    state["quiet"] = quiet or not sys.stdout.isatty() and os.environ.get("CI") == "true"
    quiet_libraries(debug)


@app.command()
def synth(out: opt.SynthOut, preset: opt.Preset = "clean", n_train: opt.NTrain = 900,
          n_test: opt.NTest = 379, size: opt.SynthSize = 256, prevalence: opt.Prevalence = 0.19,
          seed: opt.Seed = 0, overwrite: opt.Overwrite = False) -> None:
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


@app.command()
def info(data: opt.DataDir, check: opt.Check = False, image_size: opt.ImageSizeCheck = 224) -> None:
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
    from dermcam.data.check import check_dataset

    _check_image_size(image_size)
    with progress_bar("check images" + (" (decode)" if check else "")) as cb:
        report = check_dataset(data, decode=check, image_size=image_size, progress=cb)
    if report.ok:
        _show_data(data, mask_areas=report.mask_areas)
    if report.problems:
        for line in views.problem_lines(report):
            err.print(escape(line), highlight=False, soft_wrap=True)
    else:
        console.print(report.summary(), highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(2)


def _check_image_size(image_size: int) -> None:
    if image_size < 8:
        raise DermcamError(f"--image-size must be at least 8, got {image_size}")


def _show_data(root: Path, mask_areas: dict[str, float] | None = None) -> None:
    from dermcam.data.describe import describe

    d = describe(root, mask_areas=mask_areas)
    for table in views.dataset_tables(d, root):
        show(table)
    for line in views.dataset_lines(d):
        console.print(line)


@app.command()
def models(image_size: opt.ModelsImageSize = 224, run_dir: opt.ModelsRun = None) -> None:
    """List the architectures dermcam knows: the study's Grad-CAM layer, the candidate layers
    the localisation benchmark scores (with their spatial size at the input size), and
    whether ImageNet weights are cached.

    \b
    Examples:
      dermcam models
      dermcam models --image-size 128
      dermcam models --run runs/r1
    """
    if run_dir is not None:
        image_size = runmod.Run.open(run_dir).image_size
    show(views.models_table(image_size, known_models(image_size)))


@app.command()
def train(data: opt.DataDir, out: opt.Out = Path("runs/run"),
          models: opt.Models = ",".join(DEFAULT_MODELS), weights: opt.Weights = "imagenet",
          image_size: opt.ImageSize = 224, epochs: opt.Epochs = 30, batch_size: opt.BatchSize = 16,
          lr: opt.LearningRate = "1e-3", patience: opt.Patience = 5,
          schedule: opt.Schedule = "plateau", monitor: opt.Monitor = "val_auc",
          imbalance: opt.Imbalance = "weighted_loss", calibration: opt.Calibration = "platt",
          val_fraction: opt.ValFraction = 0.2, seed: opt.TrainSeed = 0, augment: opt.Augment = True,
          colour_jitter: opt.ColourJitter = 0.2, accelerator: opt.Accelerator = "auto",
          devices: opt.Devices = "1", strategy: opt.Strategy = "auto",
          precision: opt.TrainPrecision = "auto", num_workers: opt.NumWorkers = None,
          num_nodes: opt.NumNodes = 1, deterministic: opt.Deterministic = False,
          overwrite: opt.Overwrite = False, resume: opt.Resume = False,
          keep_checkpoints: opt.KeepCheckpoints = False) -> None:
    """Fine-tune each model; keep its best checkpoint; choose its threshold on validation.

    \b
    Examples:
      dermcam train data/isic2016 --out runs/r1
      dermcam train data/synth --out runs/r1 --models resnet18 --weights none --epochs 5
      dermcam train data/isic2016 --out runs/r1 --resume
    """
    from dermcam.stages.train import train as do_train

    lr_default, lr_by_model = parse_lr(lr)
    cfg = _config(TrainConfig, locals(), data=str(data), out=str(out), models=names(models),
                  max_epochs=epochs, lr=lr_default, lr_by_model=lr_by_model,
                  progress=not state["quiet"])
    with progress_bar("decode + cache images") as cb:
        manifest = do_train(cfg, overwrite=overwrite, resume=resume, progress=cb)
    if not manifest:  # a worker process of multi-process training: rank 0 reports
        return
    table = views.training_table(runmod.Run(out, manifest).model_records)
    show(table)
    detail(out, "train", [table])
    console.print(f"run folder: {out.resolve()}  (next: dermcam evaluate {out})")


@app.command()
def evaluate(run_dir: opt.RunDir, n_boot: opt.NBoot = 1000, data: opt.ExternalData = None,
             name: opt.ExternalName = None, by: opt.By = None, min_group: opt.EvaluateMinGroup = 20,
             exclude_duplicates: opt.ExcludeDuplicates = False,
             artifact_labels: opt.ArtifactLabels = None, device: opt.Device = "auto") -> None:
    """Test-set metrics with 95 % CIs, baselines, and paired model comparisons.

    \b
    Examples:
      dermcam evaluate runs/r1
      dermcam evaluate runs/r1 --artifact-labels isic_bias.csv
      dermcam evaluate runs/r1 --data data/ph2 --name ph2 --exclude-duplicates
    """
    from dermcam.stages.evaluate import run_evaluate

    cfg = _config(EvaluateConfig, locals())
    audit = _audit_set(run_dir, data, name, artifact_labels)
    with progress_bar("load test images") as cb:
        result = run_evaluate(run_dir, cfg, audit, progress=cb)
    if result.get("artifact_labels"):
        console.print(views.labels_line(result["artifact_labels"]), highlight=False)
    tables = views.metrics_tables(result)
    if ext := result.get("external"):
        internal = runmod.Outputs(run_dir).metrics
        tables.insert(0, views.external_table(read_json(internal) if internal.exists() else None,
                                              [(ext["name"], result)]))
    show(tables[0])
    _finish(run_dir, "evaluate", tables + views.subgroup_tables(result),
            ("discrimination", "calibration", "output range", "external", "subgroups"),
            audit.out.metrics)


def _config(cls, options: dict, **more):
    """The stage's config from the command's options of the same names, ``more`` replacing or
    adding fields."""
    same = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
    return cls(**{**same, **more})


def _audit_set(run_dir: Path, data: Path | None, name: str | None, artifacts: Path | None):
    """The run's test split, or with ``--data`` another set's (``artifacts`` joined)."""
    from dermcam.audit_set import AuditSet

    return AuditSet.open(runmod.Run.open(run_dir), data, name=name, artifacts=artifacts)


def _masked_images(run_dir: Path, data: Path | None, name: str | None, artifacts: Path | None
                   ) -> tuple:
    """explain's and probe's images and output folder: with ``--data`` another set's; else
    None (the run's test split), ``--artifact-labels`` recorded in the run for later stages."""
    if data is not None:
        audit = _audit_set(run_dir, data, name, artifacts)
        return audit, audit.out.root
    if artifacts is not None:
        console.print(record_in_run(run_dir, artifacts))
    return None, Path(run_dir)


def _finish(run_dir: Path, stage: str, tables: list, topics: tuple[str, ...],
            written: Path, external: dict | None = None) -> None:
    """A stage's last words: external set, detail tables, findings on ``topics``, file written."""
    if external:
        console.print(views.external_line(external))
    detail(run_dir, stage, tables)
    answer(run_dir, topics)
    console.print(f"wrote {written.resolve()} (--verbose or dermcam.log: every table)")


@app.command()
def explain(run_dir: opt.RunDir, methods: opt.Methods = "auto", target: opt.Target = "malignant",
            normalize: opt.Normalize = "minmax", limit: opt.Limit = None,
            batch_size: opt.CamBatch = 16, sanity: opt.Sanity = True, n_boot: opt.NBoot = 1000,
            shard: opt.Shard = None, merge: opt.Merge = False, layer: opt.Layer = "auto",
            bench_methods: opt.BenchMethods = None, bench_images: opt.BenchImages = 64,
            cascade: opt.Cascade = True, margin: opt.Margin = 0.02,
            artifact_labels: opt.ArtifactLabels = None, device: opt.CamDevice = "auto",
            data: opt.ExternalData = None, name: opt.ExternalName = None, by: opt.By = None,
            min_group: opt.MinGroup = 20) -> None:
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
    from dermcam.stages.explain import run_explain

    audit, where = _masked_images(run_dir, data, name, artifact_labels)
    cfg = _config(ExplainConfig, locals(), methods=names(methods), bench_methods=(
        None if bench_methods in (None, "all") else names(bench_methods)))
    with progress_bar("Grad-CAM batches") as cb:
        summary = run_explain(run_dir, cfg, audit, progress=cb)
    if shard is not None:
        again = f" --data {data}" + (f" --name {name}" if name else "") if data else ""
        console.print(f"shard {shard}: {summary['batches']} batch(es) written under "
                      f"{summary.get('folder', where)}/attention; when every shard is done: "
                      f"dermcam explain {run_dir}{again} --merge")
        return
    tables = views.attention_sections(summary, runmod.Run.open(run_dir).display_names)
    _finish(run_dir, "explain", tables, ("where it looks", "size confound", "artifact"),
            where / runmod.ATTENTION_SUMMARY, summary.get("external"))


@app.command()
def audit(weights: opt.AuditWeights, data: opt.AuditData, arch: opt.Arch, out: opt.Out,
          image_size: opt.AuditImageSize = 224, malignant_class: opt.MalignantClass = None,
          malignant_classes: opt.MalignantClasses = None, mean: opt.Mean = None,
          std: opt.Std = None, resize: opt.Resize = "squash", threshold: opt.Threshold = None,
          calibration: opt.Calibration = "platt", by: opt.By = None,
          artifact_labels: opt.ArtifactLabels = None, placements: opt.Placements = 2,
          limit: opt.Limit = None, device: opt.Device = "auto",
          precision: opt.ProbePrecision = "auto", overwrite: opt.Overwrite = False,
          debug: opt.Debug = False) -> None:
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


@app.command()
def probe(run_dir: opt.ProbeRun, probes: opt.Probes = None, artifacts: opt.Artifacts = None,
          placements: opt.Placements = 3, seed: opt.ProbeSeed = None, limit: opt.Limit = None,
          batch_size: opt.ProbeBatch = 32, inpaint: opt.Inpaint = "telea", n_boot: opt.NBoot = 1000,
          artifact_labels: opt.ProbeLabels = None, device: opt.Device = "auto",
          data: opt.ExternalData = None, name: opt.ExternalName = None, by: opt.By = None,
          min_group: opt.MinGroup = 20, precision: opt.ProbePrecision = "32-true") -> None:
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
    from dermcam.stages.probe import PROBES, read_summary_object, run_probe

    audit, where = _masked_images(run_dir, data, name, artifact_labels)
    run = runmod.Run.open(run_dir)
    explained = data is None and \
        run.stage_entry("explain").get("status") == runmod.STATUS_COMPLETE
    cfg = _config(ProbeConfig, locals(), artifacts=names(artifacts) or None,
                  device=str(resolve_device(device)),
                  probes=names(probes) or [*PROBES, *["context_swap"] * bool(artifact_labels),
                                           *["hot_spots"] * explained])
    with progress_bar("probe batches") as cb:
        entries = run_probe(run_dir, cfg, audit, progress=cb)
    summary = read_summary_object(where) or {}
    tables = views.probe_sections({**summary, "entries": entries}, run.display_names)
    _finish(run_dir, "probe", tables, ("output range", "lesion reliance", "context",
                                       "marked regions", "artifact"), where / runmod.PROBE_SUMMARY,
            summary.get("external"))


@app.command()
def report(run_dir: opt.ReportRun, out: opt.ReportOut = None) -> None:
    """One self-contained HTML report (opens offline) for reviewers: summary, model comparison
    with CIs and tests, attention analysis, a gallery of leaking images, method notes.

    \b
    Examples:
      dermcam report runs/r1
      dermcam report runs/r1 --out reports/r1.html
    """
    from dermcam.stages.report import run_report

    console.print(f"wrote {run_report(run_dir, out)}")


@app.command()
def demo(out: opt.DemoOut = Path("dermcam-demo"), preset: opt.Preset = "clean",
         n_train: opt.NTrain = 900, n_test: opt.NTest = 379, image_size: opt.ImageSize = 64,
         epochs: opt.Epochs = 10, source_size: opt.SourceSize = 128,
         models: opt.Models = ",".join(DEFAULT_MODELS), seed: opt.DemoSeed = 0,
         overwrite: opt.Overwrite = True, shortcut: opt.Shortcut = True,
         precision: opt.TrainPrecision = "auto", method: opt.DemoMethod = "hirescam") -> None:
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
def download(dataset: opt.Dataset, out: opt.DownloadOut, base_url: opt.BaseUrl = None,
             checksums: opt.Checksums = None, retries: opt.Retries = 2,
             timeout: opt.Timeout = 60.0) -> None:
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


@app.command()
def predict(checkpoint: opt.Checkpoint, images: opt.Images, masks: opt.Masks = None,
            out: opt.PredictOut = Path("predictions"), batch_size: opt.PredictBatch = None,
            skip_bad: opt.SkipBad = False, device: opt.Device = "auto") -> None:
    """Classify new images: malignancy probability, decision and Grad-CAM overlay per image.

    The decision uses the threshold chosen on validation and stored in the checkpoint.
    Research use only: not validated for clinical decisions.

    \b
    Examples:
      dermcam predict runs/r1/models/resnet18/model.pt photos/
      dermcam predict runs/r1/models/resnet18/model.pt a.jpg b.jpg --masks masks/ --out preds
    """
    from dermcam.predict import model_card_lines
    from dermcam.predict import predict as run_predict

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
    show(views.predictions_table(res.table))
    console.print(f"wrote {res.csv_path} and {len(res.table)} overlays in {out / 'overlays'}; "
                  f"{len(res.skipped)} skipped")


def main() -> None:
    """Console entry: user errors become one line and exit code 2."""
    debug = "--debug" in sys.argv
    try:
        app()
    except DermcamError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: finished files are intact; resume with --resume where offered")
        sys.exit(130)
