"""Tests for dermcam.pictures and the stages that draw the report's two opening pictures:
the per-model examples (the explain stage's ``figures/examples.png``) and the planted-shortcut
example (the demo's ``figures/shortcut_example.png``, computed by dermcam.demo), and the
gallery's strip.

One tiny real run (synthetic data, ResNet18 from scratch, one epoch, 64 px, HiResCAM at
layer2, probes pasting rulers at one placement) is built once per module in tmp. The
shortcut picture is drawn with that run as both the control and the shortcut run, and
its numbers are checked against the probe stage's own rows and scoring.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermcam import demo
from dermcam import pictures as pic
from dermcam.config import ExplainConfig, ProbeConfig
from dermcam.errors import DermcamError
from dermcam.heatmap_files import load_heatmaps
from dermcam.run import Run
from dermcam.stages.explain import example_rows, write_examples

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

MODEL, METHOD, LAYER = "resnet18", "hirescam", "layer2"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from dermcam.data.synth import SynthConfig, generate
    from dermcam.stages.explain import run_explain
    from dermcam.stages.probe import run_probe
    from dermcam.stages.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("pictures_run")
    data = tmp / "data"
    generate(data, SynthConfig.from_preset("clean", n_train=32, n_test=24, image_size=64,
                                           seed=0))
    run = tmp / "run"
    train(TrainConfig(data=str(data), out=str(run), models=[MODEL], weights="none",
                      image_size=64, max_epochs=1, batch_size=16, progress=False,
                      cache_dir=str(tmp / "cache")))
    run_explain(run, ExplainConfig(methods=[METHOD], layer=LAYER, sanity=False, figures=False,
                                   n_boot=20))
    run_probe(run, ProbeConfig(probes=("artifact_inserted",), artifacts=("ruler",), placements=1,
                               n_boot=20, figures=False))
    return run


def _png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _attention_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "attention.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh)
                if (r["model"], r["method"], r["layer"]) == (MODEL, METHOD, LAYER)]


def _num(v: str) -> float:
    return float(v) if v not in ("", "nan", "NaN") else float("nan")


# ------------------------------------------------------------------ gallery strip


def test_strip_known_answer():
    s = 16
    mask = np.zeros((s, s), bool)
    mask[4:12, 4:12] = True
    image = np.full((s, s, 3), 200, np.uint8)
    arr = _png(pic.render_strip(mask.astype(np.float32), image, mask, panel=s)).astype(int)
    assert arr.shape == (s, 4 * s + 3 * 4, 3)
    leak = arr[:, 3 * (s + 4):]
    r, g, b = leak[7, 7]  # lesion centre, heatmap 1: green
    assert g > 150 and r < 60
    r, g, b = leak[0, 0]  # background, heatmap 0: grey, no red
    assert abs(r - g) < 12 and abs(g - b) < 12
    # all-zero heatmap, no image: one panel
    assert _png(pic.render_strip(np.zeros((s, s)), panel=s)).shape == (s, s, 3)
    with pytest.raises(ValueError, match="cam must be"):
        pic.render_strip(np.zeros((2, s, s)))


# ------------------------------------------------------------------ per-model examples


def test_pick_examples_known_answers():
    att = pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f", "g", "h", "i"],
        "label": [1, 1, 1, 1, 0, 0, 0, 1, 0],
        "pred": [1, 1, 1, 1, 0, 0, 0, 0, 1],
        "pixel_auroc": [0.9, 0.5, 0.7, np.nan, 0.6, 0.6, 0.2, 0.99, 0.1],
        "excess_leakage": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.3]})
    picks = pic.pick_examples(att)
    assert [k for k, _ in picks] == ["malignant", "benign", "misclassified"]
    # malignant correct, defined AUROC: b 0.5, c 0.7, a 0.9 -> median c
    # benign correct: g 0.2, e 0.6, f 0.6 -> median e (tie with f, smaller id)
    # misclassified h and i tie at 0.3 -> smaller id
    assert [r["image_id"] for _, r in picks] == ["c", "e", "h"]
    # an even count takes the lower median; a kind nobody qualifies for is None
    picks = pic.pick_examples(att[att["image_id"].isin(["a", "b", "e"])], n=3)
    assert picks[0][1]["image_id"] == "b" and picks[1][1]["image_id"] == "e"
    assert picks[2] == ("misclassified", None)
    assert len(pic.pick_examples(att, n=1)) == 1
    with pytest.raises(ValueError, match="n must be"):
        pic.pick_examples(att, n=4)


def _expected_ids(rows: list[dict[str, str]]) -> list[str | None]:
    """The docstring's rule, by hand on the csv rows."""
    out: list[str | None] = []
    for cls in (1, 0):
        ok = sorted((_num(r["pixel_auroc"]), r["image_id"]) for r in rows
                    if int(r["label"]) == cls and int(r["pred"]) == cls
                    and np.isfinite(_num(r["pixel_auroc"])))
        out.append(ok[(len(ok) - 1) // 2][1] if ok else None)
    wrong = sorted((-_num(r["excess_leakage"]), r["image_id"]) for r in rows
                   if int(r["label"]) != int(r["pred"])
                   and np.isfinite(_num(r["excess_leakage"])))
    out.append(wrong[0][1] if wrong else None)
    return out


def _att(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "attention.csv", dtype={"image_id": str, "layer": str},
                       keep_default_na=False, na_values=[""])


def test_examples_show_the_picked_images_and_their_saved_heatmaps(run_dir, tmp_path):
    run = Run.open(run_dir)
    selection = json.loads((run_dir / "attention_summary.json").read_text())["layer_choice"]
    assert [(c["model"], c["method"], c["layer"]) for c in selection] == \
        [(MODEL, METHOD, LAYER)]
    expected = _expected_ids(_attention_rows(run_dir))
    assert any(expected)
    samples = run.test_samples(require_masks=True)
    rows = example_rows(run, run.outputs, _att(run_dir), selection, samples)
    ((choice, cells),) = rows
    assert choice == selection[0]
    assert [None if r is None else r["image_id"] for _, r, *_ in cells] == expected
    saved = load_heatmaps(run_dir / "attention" / MODEL / METHOD / LAYER,
                          {i for i in expected if i})
    by_id = {s.image_id: s for s in samples}
    for _, r, image, mask, cam in cells:
        if r is not None:  # the saved heatmap and the cached image and mask, as scored
            item = run.cache.get(by_id[r["image_id"]], run.image_size)
            assert np.array_equal(cam, saved[r["image_id"]])
            assert np.array_equal(image, item["image"]) and np.array_equal(mask, item["mask"])
    arr = _png(pic.examples_png(rows, run.display_names))
    # 2 x 14 margin + 3 pairs of (180 + 4 + 180) + 2 x 24 between pairs; 14 + 26 + 14
    # heading, then one model row of 36 + 20 + 180 + 40
    assert arr.shape == (330, 1168, 3)
    # the heatmap panel of the first pick is drawn from the image, not left blank
    if expected[0] is not None:
        y0, x0 = 14 + 26 + 36 + 20, 14 + 180 + 4
        panel = arr[y0:y0 + 180, x0:x0 + 180].astype(int)
        assert panel.std() > 10 and (panel == 255).all(-1).any()  # the white border line
    # one pair only with n=1; a pick nobody qualifies for is a labelled empty frame
    one = example_rows(run, run.outputs, _att(run_dir), selection, samples, n=1)
    assert _png(pic.examples_png(one)).shape == (330, 2 * 14 + 364, 3)
    empty = [(choice, [(kind, None, None, None, None) for kind, *_ in cells])]
    assert _png(pic.examples_png(empty)).shape == (330, 1168, 3)
    # what the explain stage writes: the same picture, in figures/
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = write_examples(Run.open(copy), Run.open(copy).outputs, selection, samples)
    assert path == copy / "figures" / "examples.png"
    assert path.read_bytes() == pic.examples_png(rows, run.display_names)


def test_examples_refuse_a_missing_heatmap(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "attention")
    selection = [{"model": MODEL, "method": METHOD, "layer": LAYER}]
    with pytest.raises(DermcamError, match="no saved heatmap"):
        write_examples(Run.open(run), Run.open(run).outputs, selection,
                       Run.open(run).test_samples(require_masks=True))


def test_heat_panel_border_and_shape_checks():
    s = 16
    mask = np.zeros((s, s), bool)
    mask[4:12, 4:12] = True
    image = np.full((s, s, 3), 200, np.uint8)
    arr = np.asarray(pic.heat_panel(mask.astype(np.float32), image, mask, 64))
    assert arr.shape == (64, 64, 3)
    assert (arr[16, 20:44] == 255).all()  # the border, traced at panel size
    assert not (arr[18:46, 18:46] == 255).all(-1).any()  # one pixel wide
    assert (arr[20:44, 20:44, 0] > arr[20:44, 20:44, 2]).all()  # inside: heatmap 1, red
    with pytest.raises(ValueError, match="cam must be"):
        pic.heat_panel(np.zeros((s, s)), image[:8], mask, 32)
    with pytest.raises(ValueError, match="mask must be"):
        pic.heat_panel(np.zeros((s, s)), image, mask[:8], 32)


# ------------------------------------------------------------------ planted shortcut


@pytest.fixture(scope="module")
def case(run_dir) -> demo.ShortcutCase:
    """The tiny run as both the control and the shortcut run."""
    return demo.shortcut_case(run_dir, run_dir, MODEL, METHOD, LAYER)


def test_shortcut_case_numbers_are_the_probes(run_dir, case):
    """The picked image follows the rule, the pasted ruler is the probe's placement 0,
    and the probabilities are the probe's."""
    import torch

    from dermcam.attribution import CamExplainer
    from dermcam.augment import preprocess
    from dermcam.data.synth import ARTIFACTS
    from dermcam.perturb import dilate_mask
    from dermcam.stages.probe import PerturbConfig, perturb, score_images

    run = Run.open(run_dir)
    model, _, payload = run.load_model(MODEL)
    threshold = float(payload["threshold"])
    samples = {s.image_id: s for s in run.test_samples(require_masks=True)}
    item = run.cache.get(samples[case.image_id], run.image_size)
    ruler = ARTIFACTS.index("ruler") + 1

    # the picked image: benign, masked, no ruler; the median shortcut reaction among the
    # eligible images, read from the probe stage's own rows
    assert samples[case.image_id].label == 0
    assert not (item["artifacts"] == ruler).any()
    probe = pd.read_csv(run_dir / "probe.csv", dtype={"image_id": str})
    probe = probe[(probe["probe"] == "artifact_inserted") & (probe["placement"] == 0)]
    free = [i for i in probe["image_id"] if samples[i].label == 0 and not (
        run.cache.get(samples[i], run.image_size)["artifacts"] == ruler).any()]
    rows = probe[probe["image_id"].isin(free)]
    if (rows["prob_intact"] < threshold).any():
        rows = rows[rows["prob_intact"] < threshold]
    ranked = sorted(zip(rows["delta"], rows["image_id"]))
    median = ranked[(len(ranked) - 1) // 2]
    # the same image, or (batches round differently) one whose change ties with it
    delta = dict(zip(rows["image_id"], rows["delta"]))
    assert case.image_id == median[1] or \
        delta.get(case.image_id) == pytest.approx(median[0], rel=1e-4)
    assert f"{len(ranked)} images" in case.rule

    # the pasted image is the probe's placement 0, scored as the probe scores it
    cfg = PerturbConfig(probes=("artifact_inserted",), artifacts=("ruler",), placements=1,
                      seed=run.seed)
    (variant,) = perturb(item["image"], item["mask"], item["artifacts"], case.image_id, cfg)
    assert np.array_equal(case.pasted, variant.image)
    p_before, p_after = score_images(model, np.stack([item["image"], variant.image]))
    info = case.info()
    for role in ("control", "shortcut"):
        assert info[role]["p_before"] == p_before and info[role]["p_after"] == p_after
        assert info[role]["threshold"] == threshold
    # the probe stage's rows: equal up to float rounding, which depends on how many images
    # share a batch (a one-epoch model's calibrated probabilities can be ~1e-20, hence a
    # relative tolerance)
    row = probe[probe["image_id"] == case.image_id].iloc[0]
    assert row["prob_intact"] == pytest.approx(p_before, rel=1e-4, abs=1e-12)
    assert row["prob_perturbed"] == pytest.approx(p_after, rel=1e-4, abs=1e-12)

    # the ruler lies outside the dilated lesion, and nothing else changed
    changed = (variant.image != item["image"]).any(-1)
    region = dilate_mask(item["mask"], cfg.dilate)
    assert changed.any() and not (changed & region).any()
    assert np.array_equal(case.changed, changed) and np.array_equal(case.region, region)

    # the heatmap is the explain stage's CAM of the pasted image
    with CamExplainer(model, LAYER, METHOD) as ex:
        cb = ex.compute(preprocess(torch.from_numpy(variant.image[None])), target="malignant",
                        size=run.image_size, threshold=threshold)
    assert np.allclose(case.roles["shortcut"]["cam"], cb.heatmaps[0], atol=1e-6)


def test_shortcut_example_png_and_what_the_demo_writes(run_dir, case, tmp_path,
                                                      monkeypatch):
    """The picture's size and captions' numbers, and the file and info the demo keeps (the
    case computed once, by the fixture; its numbers are checked above)."""
    arr = _png(pic.render_shortcut_example(case))
    # 14 + 330 text column + 220 + 4 + 220 + 14 wide; 14 + 64 heading, two rows of
    # 220 + 16, the rule and the note on scaling in 16 px lines, 14
    assert arr.shape[1:] == (802, 3)
    assert (arr.shape[0] - 564) % 16 == 0 and 2 <= (arr.shape[0] - 564) // 16 <= 4
    seen = []

    def known(*args):
        seen.append(args)
        return case

    monkeypatch.setattr(demo, "shortcut_case", known)
    run = tmp_path / "run"
    run.mkdir()
    written = demo.write_shortcut_example(run, run_dir, MODEL, METHOD, LAYER)
    assert seen == [(run, run_dir, MODEL, METHOD, LAYER, "ruler")]
    assert written == {**case.info(), "figure": "figures/shortcut_example.png"}
    assert written["control"] == written["shortcut"]  # one run in both roles
    assert {"image_id", "rule", "p_before", "p_after"} <= {*written, *written["control"]}
    assert (run / written["figure"]).read_bytes() == pic.render_shortcut_example(case)
    json.dumps(written)  # goes into shortcut_experiment.json as it is


def test_no_defined_score_picks_nothing_rather_than_an_empty_row():
    """pandas 3 grows an empty frame to a Series' index on assign: with every pixel AUROC
    undefined the pick must be None, not a row of NaN."""
    import numpy as np
    import pandas as pd

    from dermcam.pictures import pick_examples

    att = pd.DataFrame({"image_id": ["a", "b", "c"], "label": [0, 1, 1], "pred": [0, 1, 0],
                        "pixel_auroc": [np.nan] * 3, "excess_leakage": [np.nan] * 3})
    assert [r for _, r in pick_examples(att)] == [None, None, None]


def test_the_hot_spot_probe_runs_on_a_run_with_heatmaps(run_dir, tmp_path):
    """The stage reads each model's heatmaps at the chosen layer and writes one entry per
    model and heatmap-guided probe (a copy of the run: the probe outputs are rewritten)."""
    import shutil

    from dermcam.stages.probe import read_summary_object, run_probe

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    run_probe(run, ProbeConfig(probes=("hot_spots",), n_boot=20, figures=False))
    entries = read_summary_object(run)["entries"]
    assert sorted(e["probe"] for e in entries) == ["hot_removed", "hot_transplanted"]
    for e in entries:
        assert e["model"] == MODEL and e["images_with_maps"] == 24 and 0 <= e["n"] <= 24
    stage = json.loads((run / "manifest.json").read_text())["stages"]["probe"]
    assert stage["status"] == "complete" and "hot_spots_seconds" in stage
