"""Training throughput: dermcam's pipeline vs the pure-compute ceiling and the study's loader.

For each model, on the same images (real-size JPEGs written by this script, 2048x1536 like
many ISIC 2016 images):

* ceiling   fwd + bwd + Adam on tensors already in memory (no data work at all);
* study     a torch Dataset that decodes and resizes every JPEG every epoch, torchvision
            transforms (flip, rotation, colour jitter), plain PyTorch loop (the reference
            study's pipeline);
* dermcam   the real ``dermcam train`` path: decode cache warm, uint8 batches, per-sample
            augmentation on the batch, Lightning loop (second epoch timed).

Prints images/s, each as a share of the ceiling, and the data-pipeline overhead.

    python benchmarks/bench_train.py --size 224 --n 64 --batch 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def write_jpegs(root: Path, n: int, seed: int = 0, size=(2048, 1536)) -> Path:
    """An ISIC-layout folder with n real-size JPEGs (synthetic lesions upscaled, with
    sensor grain so they compress and decode like photographs, not like smooth renders)."""
    from PIL import Image

    from dermcam.data.synth import SynthConfig, generate

    small = root / "small"
    generate(small, SynthConfig.from_preset("clean", n_train=n, n_test=8, image_size=256,
                                            seed=seed))
    rng = np.random.default_rng(seed)
    for jpg in small.rglob("*.jpg"):
        big = np.asarray(Image.open(jpg).resize(size, Image.BICUBIC), np.int16)
        big = big + rng.integers(-6, 7, big.shape, dtype=np.int16)
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(jpg, quality=95)
    for png in small.rglob("*_Segmentation.png"):
        Image.open(png).resize(size, Image.NEAREST).save(png)
    for png in small.rglob("*_Artifacts.png"):
        Image.open(png).resize(size, Image.NEAREST).save(png)
    return small


def ceiling(model, size, batch, steps, channels_last=False):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    if channels_last:  # the fastest layout for this model, as dermcam trains it
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    model.train()
    for i in range(steps + 1):
        if i == 1:
            t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def study(model, samples, size, batch):
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.RandomRotation(20),
                    T.ColorJitter(0.2, 0.2, 0.2), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            img = Image.open(samples[i].image_path).convert("RGB")
            return tf(img), samples[i].label

    dl = torch.utils.data.DataLoader(DS(), batch_size=batch, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    t = time.perf_counter()
    n = 0
    for x, y in dl:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - t)


def dermcam_epoch(model, arrays, batch):
    import lightning.pytorch as pl

    from dermcam.stages.train import EpochSampler, make_module

    times = []

    class Timer(pl.Callback):
        def on_train_epoch_start(self, *a):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, *a):
            times.append(time.perf_counter() - self.t)

    module = make_module(model, 1e-4, 0.0, None, True, "train_loss")
    ds = arrays.dataset(np.arange(len(arrays)))  # streamed from the cache, as in train
    dl = torch.utils.data.DataLoader(ds, batch_size=batch,
                                     sampler=EpochSampler(arrays.labels, 0))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         callbacks=[Timer()])
    trainer.fit(module, dl)
    return len(arrays) / times[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--models", default="resnet18,efficientnet_b0,mobilenet_v2")
    args = ap.parse_args()

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from dermcam.data import load_dataset
    from dermcam.data.cache import ImageCache, load_arrays
    from dermcam.data.cached_split import CachedSplit
    from dermcam.inference import use_channels_last
    from dermcam.models import build_model

    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp), args.n)
        samples = load_dataset(root).split("train")
        cache = ImageCache(Path(tmp) / "cache")
        t = time.perf_counter()
        load_arrays(samples, args.size, cache)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        load_arrays(samples, args.size, cache)
        t_warm = time.perf_counter() - t
        arrays = CachedSplit(samples, args.size, cache)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(samples)} "
              f"JPEGs of 2048x1536 -> {args.size} px, batch {args.batch}")
        print(f"decode cache: cold {len(samples) / t_cold:.0f} img/s, warm "
              f"{len(samples) / t_warm:.0f} img/s")
        print(f"{'model':16s} {'ceiling':>10s} {'study':>16s} {'dermcam':>16s} "
              f"{'data overhead':>14s}")
        for name in args.models.split(","):
            torch.manual_seed(0)
            model, _ = build_model(name, weights="none")
            cl = use_channels_last(name)
            c = ceiling(model, args.size, args.batch, steps=max(2, args.n // args.batch),
                        channels_last=cl)
            model = model.to(memory_format=torch.contiguous_format)
            s = study(model, samples, args.size, args.batch)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            d = dermcam_epoch(model, arrays, args.batch)
            print(f"{name:16s} {c:8.1f}/s {s:8.1f}/s {100 * s / c:4.0f}% "
                  f"{d:8.1f}/s {100 * d / c:4.0f}% {100 * max(0.0, 1 - d / c):12.0f}%")


if __name__ == "__main__":
    main()
