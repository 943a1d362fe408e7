"""The ``dermcam`` command line's options, each declared once with its help; a command gives
the type and its default (``epochs: Epochs = 30``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from typer import Argument as Arg
from typer import Option as Opt

from dermcam.device import PRECISION_HELP

#: Stands for the CAM registry's method names in a help text, filled in when a command's
#: options are first read: importing the CLI does not import torch with the registry.
CAM_METHODS = "{cam_methods}"
DEVICES = "auto (CUDA when available, else CPU), cpu, cuda or cuda:INDEX"
ARTIFACT_LABELS = ("Per-image artifact labels (e.g. isic_bias.csv of Bissoto et al. 2020, "
                   "';'-separated, image;dark_corner;hair;...), joined by image id as "
                   "artifact_<name> columns and kept for the run's later stages; with --data "
                   "they label that set's images instead.")

# ------------------------------------------------------------------ several commands
RunDir = Annotated[Path, Arg(help="Run folder written by 'dermcam train'.")]
DataDir = Annotated[Path, Arg(help="Data set folder of any layout dermcam reads (ISIC 2016/2017, "
                                   "HAM10000, PH2, a generic labels.csv).")]
Out = Annotated[Path, Opt("--out", "-o", help="Run folder to create.")]
Device = Annotated[str, Opt(help=f"Where the models run: {DEVICES}.")]
ExternalName = Annotated[str | None, Opt(
    help="Name of the external set's folder (default: the data folder's name).")]
By = Annotated[str | None, Opt(
    help="Results per subgroup of these comma-separated columns: any metadata column of the "
         "layout, or 'ita' (skin tone estimated from the image).")]
MinGroup = Annotated[int, Opt(help="Subgroups with fewer images are too few to estimate.")]
EvaluateMinGroup = Annotated[int, Opt("--min-group", help="Subgroups with fewer images (or under "
                                                          "5 of a class) are too few to estimate.")]
NBoot = Annotated[int, Opt(help="Bootstrap resamples for 95 % CIs.")]
ArtifactLabels = Annotated[Path | None, Opt("--artifact-labels", help=ARTIFACT_LABELS)]
Limit = Annotated[int | None, Opt(help="Only the first N masked images.")]
Models = Annotated[str, Opt(help="Comma-separated torchvision model names.")]
ImageSize = Annotated[int, Opt(help="Model input side in pixels (224 on real data).")]
Epochs = Annotated[int, Opt(help="Maximum epochs per model (early stopping may end sooner).")]
TrainPrecision = Annotated[str, Opt(help="Training precision: " + PRECISION_HELP)]
Preset = Annotated[str, Opt(help="Synthetic data: 'clean': artifacts independent of the label; "
                                 "'shortcut': rulers tied to malignancy in training only.")]
NTrain = Annotated[int, Opt(help="Synthetic training images (ISIC 2016: 900).")]
NTest = Annotated[int, Opt(help="Synthetic test images (ISIC 2016: 379).")]
Seed = Annotated[int, Opt(help="Random seed (same seed, same bytes).")]
Overwrite = Annotated[bool, Opt(help="Replace what an earlier run of this command wrote in --out.")]
Calibration = Annotated[str, Opt(
    help="platt: fit p = sigmoid((z1 - z0) / T + b) on the validation split (undoes the shift a "
         "weighted loss puts on the logits); temperature: T only; none: raw softmax. The "
         "threshold is chosen, and the probes measure, on the calibrated probabilities "
         "(a fit that flattens them is reported as 'output range').")]
Debug = Annotated[bool, Opt("--debug", help="Show tracebacks for errors.")]
ExternalData = Annotated[Path | None, Opt(
    help="Audit the run's models on another data set (any layout) instead, at the run's "
         "thresholds and layers: external validation, written to RUN/external/NAME/.")]
Placements = Annotated[int, Opt(help="Seeded placements per image and inserted artifact.")]
ProbePrecision = Annotated[str, Opt(
    help="Probe precision: 32-true (float32, as evaluate scores), bf16-mixed (bfloat16 autocast, "
         "channels-last, BatchNorm folded: about 2x faster where bfloat16 is native, "
         "probabilities about 1e-2 from float32's) or auto (bf16-mixed where training's "
         "--precision auto would choose it).")]
ImageSizeCheck = Annotated[int, Opt(
    "--image-size", help="The model input side 'dermcam train' will use: the size --check "
                         "caches images at, and what 'much smaller' means.")]

# ------------------------------------------------------------------ synth, info, models
SynthOut = Annotated[Path, Opt("--out", "-o", help="Folder to write the data set into.")]
SynthSize = Annotated[int, Opt("--size", help="Image side in pixels.")]
Prevalence = Annotated[float, Opt(help="Malignant share.")]
Check = Annotated[bool, Opt(
    help="Decode every image and mask (in parallel, filling the decode cache at --image-size), "
         "so truncated image data are found too; run it once before training.")]
ModelsImageSize = Annotated[int, Opt("--image-size", help="Input side in pixels at which to show "
                                                          "each candidate layer's spatial size.")]
ModelsRun = Annotated[Path | None, Opt("--run", help="A run folder: use its input size.")]

# ------------------------------------------------------------------ train
Weights = Annotated[str, Opt(help="'imagenet' (torchvision weights API and TORCH_HOME cache), "
                                  "'none' (from scratch) or a state-dict PATH.")]
BatchSize = Annotated[int, Opt(help="Images per training batch.")]
LearningRate = Annotated[str, Opt(
    "--lr", help="Adam learning rate: one for every model (1e-3), or with per-model rates, e.g. "
                 "1e-3,mobilenet_v2=3e-3.")]
Patience = Annotated[int, Opt(help="Early-stopping patience (epochs).")]
Schedule = Annotated[str, Opt(
    help="Learning-rate schedule: plateau (halve on a validation plateau, the study's) or "
         "onecycle (warm-up, then cosine annealing to zero over --epochs; best for short runs).")]
Monitor = Annotated[str, Opt(help="Best checkpoint by val_auc or val_loss.")]
Imbalance = Annotated[str, Opt(help="weighted_loss, balanced_sampler or none.")]
ValFraction = Annotated[float, Opt(help="Stratified validation share of the training split.")]
TrainSeed = Annotated[int, Opt("--seed", help="Random seed (validation split, weights of new "
                                              "layers, augmentation, batch order).")]
Augment = Annotated[bool, Opt(help="Flips, rotation, colour jitter.")]
ColourJitter = Annotated[float, Opt(
    help="Colour jitter when augmenting: brightness, contrast and saturation each scaled by a "
         "factor from [1 - J, 1 + J] per image; 0 keeps the colours.")]
Accelerator = Annotated[str, Opt(help="cpu, gpu, auto (Lightning).")]
Devices = Annotated[str, Opt(help="Lightning devices, e.g. 1, 2, auto.")]
Strategy = Annotated[str, Opt(help="Lightning strategy, e.g. auto, ddp.")]
NumWorkers = Annotated[int | None, Opt(
    help="DataLoader workers per process (default: from the CPU count on a GPU, 0 on the CPU).")]
NumNodes = Annotated[int, Opt(help="Machines (Lightning num_nodes), for SLURM or torchrun across "
                                   "nodes.")]
Deterministic = Annotated[bool, Opt(
    "--deterministic", help="Deterministic algorithms (Lightning 'warn' mode, cuDNN without "
                            "benchmark): the same bytes on the same GPU, slower.")]
Resume = Annotated[bool, Opt(help="Continue the interrupted run in --out.")]
KeepCheckpoints = Annotated[bool, Opt(
    "--keep-checkpoints", help="Keep Lightning's best.ckpt and last.ckpt (with optimizer state) "
                               "in models/NAME/lightning/, not only model.pt.")]

# ------------------------------------------------------------------ evaluate
ExcludeDuplicates = Annotated[bool, Opt(
    help="Leave out external images that duplicate the run's own images.")]

# ------------------------------------------------------------------ explain
Methods = Annotated[str, Opt(
    help=f"Comma-separated CAM methods (pytorch-grad-cam): {CAM_METHODS}; or auto: the "
         "localisation benchmark chooses each model's method with its layer.")]
Target = Annotated[str, Opt(help="Class each heatmap explains: malignant (one question for every "
                                 "image, so classes compare), predicted (the study's; benign "
                                 "evidence lies mostly off the lesion) or true.")]
Normalize = Annotated[str, Opt(help="minmax (ReLU + per-image min-max, the study's) or raw "
                                    "(ReLU only).")]
CamBatch = Annotated[int, Opt("--batch-size", help="Images per Grad-CAM batch.")]
Sanity = Annotated[bool, Opt(help="Randomised-weights sanity check (Adebayo et al. 2018).")]
Shard = Annotated[str | None, Opt(help="Compute only part i/n of the batches (e.g. 0/4), for "
                                       "several processes or machines; then run --merge.")]
Merge = Annotated[bool, Opt(help="Score the batches written by all shards into one attention.csv.")]
Layer = Annotated[str, Opt(help="CAM layer: auto (the localisation benchmark's best on masked "
                                "validation images, sane), last (the study's last block), a "
                                "layer name, or model=layer,... ('dermcam models' lists them).")]
BenchMethods = Annotated[str | None, Opt(
    help="Methods the localisation benchmark scores at every candidate layer (comma-separated, "
         "or all; default: all).")]
BenchImages = Annotated[int, Opt(help="Validation images the localisation benchmark scores.")]
Cascade = Annotated[bool, Opt(help="Cascading randomisation in the sanity check (one step per "
                                   "block, from the output down).")]
Margin = Annotated[float, Opt(
    help="Equivalence margin of the lesion-size confound test (TOST), in units of each metric "
         "(leakage, excess leakage, pixel AUROC): an adjusted class gap within +-margin counts "
         "as explained by size.")]
CamDevice = Annotated[str, Opt(
    "--device", help=f"Where the heatmaps are computed: {DEVICES}; with --shard i/n, auto puts "
                     "each shard on its own GPU, and on the CPU the shards split the cores.")]

# ------------------------------------------------------------------ probe
ProbeRun = Annotated[Path, Arg(help="Run folder written by 'dermcam train' (explain first to "
                                    "also test whether the heatmaps track the behaviour).")]
Probes = Annotated[str | None, Opt(
    help="Comma-separated probes: lesion_removed, background_removed, artifact_inserted, "
         "artifact_removed (the default), context_swap (default with --artifact-labels), "
         "hot_spots (default once 'dermcam explain' ran).")]
Artifacts = Annotated[str | None, Opt(
    help="Artifacts to insert/remove (default: ruler, ink, patch, vignette, hair).")]
ProbeSeed = Annotated[int | None, Opt(
    "--seed", help="Seed for placements and bootstrap (default: the run's).")]
ProbeBatch = Annotated[int, Opt(
    "--batch-size", help="Images perturbed per batch (each makes about 20 variants).")]
Inpaint = Annotated[str, Opt(help="OpenCV inpainting: telea or ns (Navier-Stokes).")]
ProbeLabels = Annotated[Path | None, Opt(
    "--artifact-labels", help=ARTIFACT_LABELS + " Lesion and background removal are then split "
                              "by each artifact's presence (--artifacts names artifacts to "
                              "insert).")]

# ------------------------------------------------------------------ audit
AuditWeights = Annotated[Path, Arg(
    help="The model: a state dict (plain, DDP, Lightning checkpoint, torch.compile) or a "
         "TorchScript file. Pickled whole models are refused (no code is ever unpickled).")]
AuditData = Annotated[Path, Opt(
    "--data", help="Data folder of any layout dermcam reads: its test split is audited; the "
                   "validation part of its training split chooses threshold, calibration and "
                   "layer.")]
Arch = Annotated[str, Opt(
    help="Architecture of the weights: torchvision's (resnet18; 'dermcam models') or timm's "
         "(timm:convnext_tiny), built without pretrained weights.")]
AuditImageSize = Annotated[int, Opt("--image-size", help="Input side the model was trained at.")]
MalignantClass = Annotated[int | None, Opt(help="Two outputs: which one is malignant (default 1).")]
MalignantClasses = Annotated[str | None, Opt(help="K > 2 outputs: the malignant ones, summed "
                                                  "(e.g. 0,1,4 for HAM10000's mel, bcc, akiec).")]
Mean = Annotated[str | None, Opt(help="Input mean per RGB channel, e.g. 0.5,0.5,0.5 (default "
                                      "ImageNet's; timm: the architecture's own).")]
Std = Annotated[str | None, Opt(help="Input std per RGB channel, as --mean.")]
Resize = Annotated[str, Opt(
    help="squash (to a square) or shorter-side-crop (shorter side, then centre crop).")]
Threshold = Annotated[float | None, Opt(
    help="Decision threshold on P(malignant) (default: Youden's on validation).")]

# ------------------------------------------------------------------ report, demo
ReportRun = Annotated[Path, Arg(
    help="Run folder (after evaluate; explain adds the attention sections).")]
ReportOut = Annotated[Path | None, Opt(
    "--out", "-o", help="HTML file to write, or an existing folder to put report.html in "
                        "(default: RUN_DIR/report.html).")]
DemoOut = Annotated[Path, Opt("--out", "-o", help="Folder for the data and the run.")]
SourceSize = Annotated[int, Opt(help="Side of the generated images in pixels.")]
DemoSeed = Annotated[int, Opt("--seed", help="Random seed of the data and the training.")]
Shortcut = Annotated[bool, Opt(help="Also train one model where rulers mark malignancy in "
                                    "training only, and audit it beside its control.")]
DemoMethod = Annotated[str, Opt(
    "--method", help="CAM method of the audit (its layer chosen by the localisation benchmark; "
                     "'auto' chooses the method too). HiResCAM credits only where the output is "
                     "sensitive.")]

# ------------------------------------------------------------------ download, predict
Dataset = Annotated[str, Arg(help="Data set to fetch: isic2016 (Part 3B).")]
DownloadOut = Annotated[Path, Opt("--out", "-o", help="Folder to download and unpack into.")]
BaseUrl = Annotated[str | None, Opt(
    help="Where the files live (default: the ISIC challenge bucket, "
         "https://isic-challenge-data.s3.amazonaws.com/2016/); http(s):// or file:// for a local "
         "mirror.")]
Checksums = Annotated[Path | None, Opt(
    help="File of 'SHA256  FILENAME' lines to verify against (sha256sum format).")]
Retries = Annotated[int, Opt(help="Extra attempts after a dropped transfer.")]
Timeout = Annotated[float, Opt(help="Seconds to wait on the network.")]
Checkpoint = Annotated[Path, Arg(
    help="Checkpoint written by 'dermcam train' (RUN/models/<name>/model.pt).")]
Images = Annotated[list[Path], Arg(
    help="Image files and/or folders (scanned for .jpg/.jpeg/.png/.bmp, not recursively).")]
Masks = Annotated[Path | None, Opt(
    help="Folder of lesion masks (<stem>_Segmentation.png, <stem>_segmentation.png or "
         "<stem>.png): adds attention leakage scores.")]
PredictOut = Annotated[Path, Opt("--out", "-o", help="Folder for predictions.csv and overlays/.")]
PredictBatch = Annotated[int | None, Opt(
    "--batch-size", help="Images per batch (default: 16 on the CPU, 64 on a GPU).")]
SkipBad = Annotated[bool, Opt(help="Skip unreadable images with a warning instead of stopping.")]

# ------------------------------------------------------------------ the app
Quiet = Annotated[bool, Opt("--quiet", "-q", help="No progress bars.")]
Verbose = Annotated[bool, Opt("--verbose", "-v", help="Print every detail table (always written "
                                                      "to the run folder's dermcam.log).")]
