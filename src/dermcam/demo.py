"""``dermcam demo``: the whole study on the synthetic benchmark, end to end."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from dermcam.errors import DermcamError

log = logging.getLogger(__name__)


def run_demo(out: Path, preset: str = "clean", n_train: int = 900, n_test: int = 379,
             image_size: int = 64, epochs: int = 10, source_size: int = 128, models=("resnet18", "efficientnet_b0",
                                                                "mobilenet_v2"),
             seed: int = 0, overwrite: bool = True, say=print, progress_bar=None,
             quiet: bool = False, show=None) -> Path:
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.explain import run_explain
    from dermcam.models import imagenet_available
    from dermcam.pipeline import run_evaluate
    from dermcam.training import TrainConfig, train

    out = Path(out)
    t0 = time.perf_counter()
    data = out / "data"
    run = out / "run"
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DermcamError("demo folder is not empty; pass --overwrite", out)
        if not (out / "demo.json").exists() and not (data / "synth.json").exists():
            raise DermcamError("folder is not a dermcam demo; choose another --out", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text('{"kind": "dermcam-demo"}\n')

    def bar(desc):
        return progress_bar(desc) if progress_bar else _null()

    say(f"[1/5] synthetic benchmark ({preset}): {n_train} train + {n_test} test images")
    cfg = SynthConfig.from_preset(preset, n_train=n_train, n_test=n_test, seed=seed,
                                  image_size=source_size)
    with bar("synth") as cb:
        generate(data, cfg, progress=cb)
    models = list(models)
    if all(imagenet_available(m) for m in models):
        weights = "imagenet"
        say("[2/5] training with ImageNet weights from torchvision's cache")
    else:
        weights = "none"
        say("[2/5] ImageNet weights are not in torchvision's cache, so the demo trains from "
            "scratch (--weights none); 'dermcam train --weights imagenet' uses them when cached")
    tcfg = TrainConfig(data=str(data), out=str(run), models=models, weights=weights,
                       image_size=image_size, max_epochs=epochs, batch_size=32, lr=1e-3,
                       patience=4, seed=seed, progress=not quiet)
    with bar("decode + cache images") as cb:
        manifest = train(tcfg, overwrite=True, progress=cb)
    if show:
        show[0](manifest)
    say("[3/5] evaluation on the test split (bootstrap CIs, paired tests)")
    with bar("evaluate") as cb:
        result = run_evaluate(run, progress=cb)
    if show:
        show[1](result)
    say("[4/5] attention leakage (Grad-CAM on every test image, every model)")
    with bar("Grad-CAM batches") as cb:
        summary = run_explain(run, batch_size=32, progress=cb)
    if show:
        show[2](summary)
    say("[5/5] report")
    try:
        from dermcam.report import build_report

        path = build_report(run)
        say(f"report: {path}")
    except ImportError:
        say("report: not available in this version")
    say(f"demo finished in {time.perf_counter() - t0:.0f} s; run folder: {run}")
    return run


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
