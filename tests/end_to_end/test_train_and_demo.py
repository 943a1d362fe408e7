"""End to end on tiny generated data: train -> evaluate -> explain, outputs and contracts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import easy_generic, invoke_cli

from dermcam.checkpoints import load_checkpoint
from dermcam.config import EvaluateConfig, ExplainConfig, TrainConfig
from dermcam.data.splits import stratified_split
from dermcam.demo import DEMO_BENCH_METHODS, DEMO_METHOD
from dermcam.errors import DermcamError
from dermcam.inference import predict_proba
from dermcam.stages.train import train

SIZE = 24  # tiny_run's input side


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.explain import run_explain

    base = tmp_path_factory.mktemp("pipe")
    data = easy_generic(base / "data")
    out = base / "run"
    # easy_generic's images are 24 px: the run trains at their own size
    cfg = TrainConfig(data=str(data), out=str(out), models=["resnet18"], weights="none",
                      image_size=SIZE, max_epochs=4, batch_size=8, lr=1e-3, patience=3,
                      seed=1, progress=False, cache_dir=str(base / "cache"))
    train(cfg)
    run_evaluate(out, EvaluateConfig(n_boot=100))
    run_explain(out, ExplainConfig(n_boot=100))
    return out


def test_run_folder_contents(tiny_run):
    for f in ("manifest.json", "predictions.csv", "metrics.json", "metrics.csv",
              "attention.csv", "attention_summary.json", "models/resnet18/model.pt",
              "models/resnet18/history.csv", "figures/model_comparison.png",
              "figures/resnet18_confusion_matrix.png", "figures/leakage_vs_area.png",
              "figures/attention_leakage_analysis_resnet18.png"):
        assert (tiny_run / f).exists(), f
    m = json.loads((tiny_run / "manifest.json").read_text())
    assert m["stages"]["train"]["status"] == "complete"
    assert m["stages"]["evaluate"]["status"] == "complete"
    assert m["stages"]["explain"]["status"] == "complete"
    assert m["models"]["resnet18"]["weights_source"].startswith("none")
    assert 0.0 <= m["models"]["resnet18"]["threshold"] <= 1.0
    assert m["versions"]["torch"] == torch.__version__
    hist = pd.read_csv(tiny_run / "models/resnet18/history.csv")
    assert list(hist["epoch"]) == list(range(1, len(hist) + 1))


def test_learned_model_beats_chance_on_easy_data(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    auc = metrics["models"]["resnet18"]["threshold_free"]["roc_auc"]["value"]
    assert auc > 0.8


def test_best_checkpoint_restored_and_round_trips(tiny_run):
    m = json.loads((tiny_run / "manifest.json").read_text())
    hist = pd.read_csv(tiny_run / "models/resnet18/history.csv")
    best = int(hist["val_auc"].idxmax()) + 1
    # best epoch by val AUC (ties: the first), not the last epoch
    assert m["models"]["resnet18"]["best_epoch"] == hist.loc[hist["val_auc"] == hist["val_auc"]
                                                             .max(), "epoch"].iloc[0] == best
    model, info, payload = load_checkpoint(tiny_run / "models/resnet18/model.pt")
    assert info.name == "resnet18" and payload["image_size"] == SIZE
    preds = pd.read_csv(tiny_run / "predictions.csv")
    from dermcam.data import load_dataset
    from dermcam.data.cache import load_arrays

    ds = load_dataset(m["data"]["root"])
    arrays = load_arrays(ds.split("test"), SIZE)
    prob = predict_proba(model, arrays.images)
    np.testing.assert_allclose(prob, preds["prob_malignant"].to_numpy(), atol=1e-5)
    # everything above came from model.pt: Lightning's checkpoints went once it was saved
    assert not (tiny_run / "models/resnet18/lightning").exists()
    assert [p.name for p in (tiny_run / "models/resnet18").iterdir()
            if p.suffix in (".pt", ".ckpt")] == ["model.pt"]


def test_keep_checkpoints_and_resume_skips_a_finished_model(tiny_run, tmp_path):
    """A run interrupted in its second model: the first, finished and without Lightning
    files, is skipped; the second trains, and keeps its checkpoints when asked to."""
    import shutil

    from dermcam import run as runmod

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    m = runmod.read_manifest(run)
    m["status"] = "training"
    m["stages"] = {"train": {"status": "running"}}
    m["config"].update(models=["resnet18", "mobilenet_v2"], max_epochs=1, keep_checkpoints=True)
    runmod.write_manifest(run, m)
    finished = (run / "models/resnet18/model.pt").read_bytes()
    out = train(TrainConfig(data=m["config"]["data"], out=str(run), progress=False),
                resume=True)
    assert out["stages"]["train"]["status"] == "complete"
    assert set(out["models"]) == {"resnet18", "mobilenet_v2"}
    assert (run / "models/resnet18/model.pt").read_bytes() == finished  # not retrained
    assert not (run / "models/resnet18/lightning").exists()
    kept = run / "models/mobilenet_v2/lightning"
    assert sorted(p.name for p in kept.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert "optimizer_states" in torch.load(kept / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in torch.load(kept / "best.ckpt", weights_only=True)
    _, info, _ = load_checkpoint(run / "models/mobilenet_v2/model.pt")
    assert info.name == "mobilenet_v2"


def test_a_split_held_in_memory_trains_the_weights_a_streamed_one_does(tmp_path,
                                                                        monkeypatch):
    """Held in memory, each training image is read from the cache once; streamed, once per
    epoch (and validation image per validation). Both give the same weights. Without
    ``resumable`` no last.ckpt is written (kept checkpoints show what was written)."""
    from dermcam.data.cache import ImageCache
    from dermcam.stages import train as tr

    data = easy_generic(tmp_path / "data", n=36)
    reads = []
    original = ImageCache.get

    def counting_get(self, sample, size):
        reads.append(sample.image_id)
        return original(self, sample, size)

    monkeypatch.setattr(ImageCache, "get", counting_get)
    weights, n_reads = {}, {}
    for how, budget in (("memory", tr.IN_MEMORY_BYTES), ("stream", -1)):
        monkeypatch.setattr(tr, "IN_MEMORY_BYTES", budget)
        reads.clear()
        out = tmp_path / how
        train(TrainConfig(data=str(data), out=str(out), models=["resnet18"], weights="none",
                          image_size=24, max_epochs=2, batch_size=8, patience=3, seed=0,
                          progress=False, cache_dir=str(tmp_path / "cache"),
                          keep_checkpoints=True, resumable=how == "stream"))
        n_reads[how] = len(reads)
        model, _, _ = load_checkpoint(out / "models/resnet18/model.pt")
        weights[how] = model.state_dict()
        kept = sorted(p.name for p in (out / "models/resnet18/lightning").iterdir())
        assert kept == (["best.ckpt", "last.ckpt"] if how == "stream" else ["best.ckpt"])
    n_train = 24  # 36 images, every third one in the test split
    # held: one read each while loading (threshold and calibration then use the array)
    assert n_reads["memory"] == n_train
    # streamed: warm-up once, then 2 epochs of the training part, 2 validation passes
    # and one pass to choose the threshold
    assert n_reads["stream"] > 3 * n_train
    assert weights["memory"].keys() == weights["stream"].keys()
    for k, v in weights["memory"].items():
        assert torch.equal(v, weights["stream"][k]), k


def test_attention_rows_complete_and_consistent(tiny_run):
    att = pd.read_csv(tiny_run / "attention.csv", keep_default_na=False, na_values=[""])
    preds = pd.read_csv(tiny_run / "predictions.csv")
    assert len(att) == len(preds)  # every test image has a mask: one row each
    assert not att.duplicated(["image_id", "model", "method"]).any()
    valid = att[att["reason"].isna()]
    np.testing.assert_allclose(valid["chance_leakage"], 1 - valid["lesion_area"], atol=1e-6)
    np.testing.assert_allclose(valid["excess_leakage"],
                               valid["leakage"] - valid["chance_leakage"], atol=2e-6)
    merged = att.merge(preds, on=["image_id", "model"], suffixes=("", "_eval"))
    np.testing.assert_allclose(merged["prob_malignant"], merged["prob_malignant_eval"],
                               atol=1e-4)


def test_explain_resumes_and_rescoring_is_identical(tiny_run, tmp_path):
    """Explain again after an interruption before the last heatmap batch: the layer is
    chosen again (the same one), only the missing batch is computed, and the attention
    table is the first one byte for byte. In a copy of the run, so that the module's run
    stays whole; the sanity check and the figures, which come after the table and do not
    enter it, are left out of the second explain."""
    import shutil

    from dermcam.stages.explain import run_explain

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "attention.csv").read_bytes()
    batches = sorted((run / "attention/resnet18/gradcam").glob("*/batch_*.npz"))
    assert len(batches) >= 2  # a finished batch to keep and the last one to redo
    stamps = {b: b.stat().st_mtime_ns for b in batches}
    batches[-1].unlink()  # as if interrupted before the last batch
    run_explain(run, ExplainConfig(n_boot=100, sanity=False, figures=False))
    after = (run / "attention.csv").read_bytes()
    assert after == before
    for b in batches[:-1]:  # finished batches were not recomputed
        assert b.stat().st_mtime_ns == stamps[b]
    assert batches[-1].exists()


def test_stages_refuse_an_incomplete_run(tmp_path):
    from dermcam import run as runmod
    from dermcam.stages.evaluate import run_evaluate

    runmod.prepare_run_dir(tmp_path / "r", overwrite=False)
    runmod.write_manifest(tmp_path / "r", {"stages": {"train": {"status": "running"}}})
    with pytest.raises(DermcamError, match="incomplete"):
        run_evaluate(tmp_path / "r")


def test_output_folder_holding_a_run_is_refused(tiny_run, tmp_path):
    cfg = TrainConfig(data="unused", out=str(tiny_run), models=["resnet18"], weights="none")
    with pytest.raises(DermcamError, match="--overwrite"):
        from dermcam import run as runmod

        runmod.prepare_run_dir(tiny_run, overwrite=False)
    assert cfg.out == str(tiny_run)


def test_stratified_split_errors_and_balance():
    labels = np.array([0] * 40 + [1] * 10)
    tr, va = stratified_split(labels, 0.2, seed=0)
    assert len(va) == 10 and labels[va].sum() == 2
    assert set(tr).isdisjoint(va)
    tr2, va2 = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(va, va2)
    with pytest.raises(DermcamError, match="no malignant"):
        stratified_split(np.zeros(10, int), 0.2, 0)
    with pytest.raises(DermcamError, match="too small"):
        stratified_split(np.array([0, 0, 0, 1]), 0.2, 0)


def test_cli_train_unknown_model_is_one_line(tmp_path, monkeypatch, capsys):
    # the console entry in this process (tests/end_to_end/test_cli_errors.py runs the executable)
    data = easy_generic(tmp_path / "d", n=12)
    code, out, err = invoke_cli(monkeypatch, capsys, "train", data, "--out", tmp_path / "r",
                                "--models", "resnet9000", "--weights", "none")
    assert code == 2
    assert "unknown model 'resnet9000'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_validation_split_keeps_groups_together():
    """HAM10000-style: several images per lesion never straddle train and validation."""
    rng = np.random.default_rng(0)
    groups = [f"L{g}" for g in range(60) for _ in range(int(rng.integers(1, 4)))]
    glabel = {f"L{g}": int(g % 5 == 0) for g in range(60)}
    labels = np.array([glabel[g] for g in groups])
    tr, va = stratified_split(labels, 0.2, seed=0, groups=groups)
    g_tr, g_va = {groups[i] for i in tr}, {groups[i] for i in va}
    assert g_tr.isdisjoint(g_va)
    assert len(tr) + len(va) == len(groups)
    assert set(labels[va]) == {0, 1}
    assert 0.1 < len(va) / len(groups) < 0.3
    tr2, va2 = stratified_split(labels, 0.2, seed=0, groups=groups)
    assert np.array_equal(va, va2)


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, monkeypatch, capsys):
    """`dermcam demo` (the README's first command) at a tiny size: every stage and the report."""
    import torchvision

    from dermcam.models import imagenet_weights_path

    out = tmp_path / "demo"

    def demo(n_train: int, n_test: int, *more: str) -> list[str]:
        # 32 px: the smallest images the synthetic benchmark draws
        return [sys.executable, "-m", "dermcam", "-q", "demo", "--out", str(out), "--n-train",
                str(n_train), "--n-test", str(n_test), "--epochs", "1", "--image-size", "32",
                "--source-size", "32", "--models", "resnet18", *more]

    n_test = 20
    cmd = demo(40, n_test)
    # torchvision's cache (under TORCH_HOME) decides the demo's weights: first an empty one
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-empty"))
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "trains from scratch" in r.stdout and "ImageNet weights from" not in r.stdout
    for f in ("data/metadata.csv", "run/metrics.json", "run/attention.csv",
              "run/report.html", "run/models/resnet18/model.pt", "shortcut/run/attention.csv",
              "run/shortcut_experiment.json", "run/probe.csv", "run/probe_summary.json",
              "shortcut/run/probe_summary.json", "run/figures/probe_auc.png",
              "run/figures/examples.png", "run/figures/shortcut_example.png"):
        assert (out / f).exists(), f
    exp = json.loads((out / "run/shortcut_experiment.json").read_text())
    summ = json.loads((out / "run/attention_summary.json").read_text())
    chosen = {s["model"]: s["layer"] for s in summ["layer_choice"]}
    # the shortcut model is audited at its control's layer, with the same method: the
    # demo's (HiResCAM), whose layer the benchmark chose among its own rows
    assert exp["runs"]["shortcut"]["layer"] == exp["runs"]["control"]["layer"] == chosen["resnet18"]
    assert {s["method"] for s in summ["layer_choice"]} == {DEMO_METHOD} == {exp["method"]}
    assert {r["method"] for r in summ["localisation"]} == set(DEMO_BENCH_METHODS)
    assert summ["localisation"] and {"better_than_uniform", "median_pixel_auroc"} <= \
        set(summ["localisation"][0])
    # the terminal answers: at most 60 lines, the findings last, then the report's path;
    # every finding that is not ok is printed, word for word, from findings.json
    lines = r.stdout.splitlines()
    assert len(lines) <= 60, r.stdout
    assert lines[-1] == f"report: {(out / 'run/report.html').resolve()}"
    told = json.loads((out / "run/findings.json").read_text())["findings"]
    assert {f["model"] for f in told} >= {"resnet18", "resnet18 (shortcut-trained)"}
    for f in told:
        if f["status"] != "ok":
            assert any(line.endswith(f"{f['topic']}: {f['sentence']}") for line in lines), f
    assert any("fine: " in line for line in lines) or all(f["status"] != "ok" for f in told)
    page = (out / "run/report.html").read_text()
    assert "Planted shortcut" in page and f"{DEMO_METHOD} @ {chosen['resnet18']}" in page
    # the detail the terminal leaves out is in the run's log, table by table
    log = (out / "run/dermcam.log").read_text()
    assert f"Test set, n = {n_test}" in log and "Planted shortcut" in log
    assert not (out / "run/models/resnet18/lightning").exists()
    # the shortcut data's test split is the default data's, byte for byte: hard links
    test_dir = "data/ISBI2016_ISIC_Part3B_Test_Data"
    for f in sorted((out / test_dir).iterdir())[:3]:
        twin = out / "shortcut" / test_dir / f.name
        assert twin.stat().st_ino == f.stat().st_ino and twin.read_bytes() == f.read_bytes()
    m = json.loads((out / "run/manifest.json").read_text())
    assert m["config"]["weights"] == "none"
    # both runs were trained with the demo's recipe (demo.demo_train_config)
    for cfg in (m["config"], json.loads((out / "shortcut/run/manifest.json").read_text())
                ["config"]):
        assert (cfg["schedule"], cfg["lr"], cfg["patience"], cfg["batch_size"]) == \
            ("plateau", 1e-3, 4, 32)
        assert cfg["lr_by_model"] == {} and cfg["max_epochs"] == 1
    assert all(m["stages"][s]["status"] == "complete" for s in ("train", "evaluate",
                                                                "explain", "probe", "report"))
    # the shortcut model against its control on the same images, beside the absolute ratio
    # (one epoch: the maps may all be undefined, then n = 0 and nothing is claimed)
    rel = exp["relative_to_control"]
    assert rel["n"] <= min(exp["runs"][r]["n"] for r in ("control", "shortcut"))
    if rel["n"] >= 2:
        assert rel["ci_low"] <= rel["relative"] <= rel["ci_high"]
    assert exp["caught_vs_control"] == (rel["n"] >= 2 and rel["ci_low"] > 1)
    # the demo's words about it are the findings', built from these numbers
    from dermcam.findings import shortcut as shortcut_finding

    told = shortcut_finding(exp, "shortcut")
    assert told.value == exp["runs"]["shortcut"]["ratio"] or told.value is None
    assert told.status in ("alarm", "caution")
    # the behavioural evidence sits beside the heatmap evidence, for both roles
    for role in ("control", "shortcut"):
        ev = exp["runs"][role]["probe"]
        assert ev["insert_n"] == n_test and ev["insert_ci_low"] <= ev["insert_delta"]
    assert "caught_by_probe" in exp
    pvc = exp["probe_vs_control"]  # the same test images and placements in both runs
    assert pvc["n"] == n_test and pvc["ci_low"] <= pvc["diff"] <= pvc["ci_high"]
    assert exp["caught_by_probe_vs_control"] == (pvc["ci_low"] > pvc["margin"])
    assert "Behavioural probes" in (out / "run/report.html").read_text()
    # a second demo into the same folder replaces the first (it is a demo folder); now the
    # cache holds resnet18's weights file (random weights stand in for ImageNet's)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-cached"))
    monkeypatch.setenv("DERMCAM_TRUST_WEIGHTS", "1")  # not torchvision's bytes: skip the hash
    cached = imagenet_weights_path("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cached)
    # (the shortcut experiment is not what this run checks; fewer images than the first;
    # through the console entry in this process, torch's thread count restored after)
    threads = torch.get_num_threads()
    try:
        code, said, err = invoke_cli(monkeypatch, capsys, *demo(24, 12, "--no-shortcut")[4:])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert "ImageNet weights from" in said and "trains from scratch" not in said
    assert json.loads((out / "run/manifest.json").read_text())["config"]["weights"] == "imagenet"
    # replaced, not added to: the first demo's data and shortcut folder are gone
    assert len(pd.read_csv(out / "data/metadata.csv")) == 24 + 12
    assert not (out / "shortcut").exists()


def test_demo_train_config_is_the_demos_recipe():
    from dermcam.demo import DEMO_LR, DEMO_LR_BY_MODEL, demo_train_config

    cfg = demo_train_config("d", "o", ["resnet18", "mobilenet_v2"], seed=3, cache_dir="c",
                            precision="32-true")
    assert isinstance(cfg, TrainConfig)
    assert (cfg.data, cfg.out, cfg.models, cfg.seed, cfg.cache_dir, cfg.precision) == \
        ("d", "o", ["resnet18", "mobilenet_v2"], 3, "c", "32-true")
    assert (cfg.schedule, cfg.lr, cfg.patience, cfg.batch_size, cfg.max_epochs,
            cfg.image_size, cfg.weights) == ("plateau", DEMO_LR, 4, 32, 10, 64, "none")
    # a model's own learning rate only where that model is trained
    assert cfg.lr_by_model == {"mobilenet_v2": DEMO_LR_BY_MODEL["mobilenet_v2"]} != {}
    assert demo_train_config("d", "o", ["resnet18"]).lr_by_model == {}
    with pytest.raises(TypeError):  # an override that is no TrainConfig field
        demo_train_config("d", "o", ["resnet18"], no_such_field=1)


def test_demo_refuses_an_unknown_method_before_any_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    code, _, err = invoke_cli(monkeypatch, capsys, "demo", "--out", out, "--method", "gradkam")
    assert code == 2 and "unknown CAM method 'gradkam'" in err
    assert "Traceback" not in err and not out.exists()


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path, monkeypatch, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    code, _, err = invoke_cli(monkeypatch, capsys, "demo", "--out", tmp_path)
    assert code == 2 and "not a dermcam demo" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]  # nothing added


def test_explain_records_layer_choice_in_attention_manifest_and_checkpoint(tiny_run):
    """The CAM layer is a choice: recorded per row, in the manifest and in the checkpoint."""
    from dermcam.localisation import CHOICE_REASONS
    from dermcam.models import load_state_file

    att = pd.read_csv(tiny_run / "attention.csv", keep_default_na=False, na_values=[""])
    m = json.loads((tiny_run / "manifest.json").read_text())
    sel = m["stages"]["explain"]["layers"]
    assert [s["model"] for s in sel] == ["resnet18"] and sel[0]["reason"] in CHOICE_REASONS
    assert set(att["layer"]) == {sel[0]["layer"]} and set(att["method"]) == {sel[0]["method"]}
    payload = load_state_file(tiny_run / "models/resnet18/model.pt")
    assert payload["cam"]["layer"] == sel[0]["layer"]
    summary = json.loads((tiny_run / "attention_summary.json").read_text())
    rows = summary["localisation"]
    # every method x candidate layer was scored, and the chosen one is among them
    assert {(r["method"], r["layer"]) for r in rows} >= {(sel[0]["method"], sel[0]["layer"])}
    assert all(isinstance(r["better_than_uniform"], bool) for r in rows)
    guard = summary["tests"][f"resnet18/{sel[0]['method']}"]["uniform_guard"]
    assert isinstance(guard["better_than_uniform"], bool)
    assert guard["better_than_uniform"] == (guard["auroc_above_chance"]
                                            and guard["excess_below_zero"])


def test_explain_at_a_named_layer(tiny_run, tmp_path):
    import shutil

    from dermcam.stages.explain import run_explain

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    summary = run_explain(run, ExplainConfig(methods=["gradcam"], layer="layer3", n_boot=50,
                                             sanity=False, figures=False))
    att = pd.read_csv(run / "attention.csv", keep_default_na=False, na_values=[""])
    assert set(att["layer"]) == {"layer3"} and set(att["method"]) == {"gradcam"}
    assert summary["tests"]["resnet18/gradcam"]["layer"] == "layer3"
    assert (run / "attention/resnet18/gradcam/layer3").is_dir()
    with pytest.raises(DermcamError, match="no layer"):
        run_explain(run, ExplainConfig(methods=["gradcam"], layer="layer9", n_boot=50, sanity=False,
                                       figures=False))


def test_lr_spec_gives_each_model_its_rate(tmp_path):
    from dermcam.config import parse_lr

    assert parse_lr("2e-3") == (2e-3, {})
    assert parse_lr(0.01) == (0.01, {})
    assert parse_lr("1e-3,mobilenet_v2=3e-3") == (1e-3, {"mobilenet_v2": 3e-3})
    assert parse_lr("resnet18=5e-4") == (1e-3, {"resnet18": 5e-4})  # default 1e-3
    for bad in ("0", "-1e-3", "fast", "1e-3,=2e-3", "resnet18=x", "1e-3,2e-3", "nan"):
        with pytest.raises(DermcamError, match="--lr entries"):
            parse_lr(bad)
    data = easy_generic(tmp_path / "data", n=30)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"),
                      models=["resnet18", "mobilenet_v2"], weights="none", image_size=24,
                      max_epochs=1, batch_size=8, lr=1e-3, lr_by_model={"mobilenet_v2": 3e-3},
                      seed=0, progress=False, cache_dir=str(tmp_path / "cache"))
    m = train(cfg)
    assert m["models"]["resnet18"]["lr"] == 1e-3
    assert m["models"]["mobilenet_v2"]["lr"] == 3e-3
    with pytest.raises(DermcamError, match="not among --models"):
        train(TrainConfig(**{**cfg.__dict__, "lr_by_model": {"vgg11": 1e-2},
                             "out": str(tmp_path / "run2")}))
