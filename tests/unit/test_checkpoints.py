"""dermcam.checkpoints: the model.pt format, and fields set in place after training."""

from __future__ import annotations

import torch

from dermcam.checkpoints import (
    load_checkpoint,
    save_checkpoint,
    update_checkpoint,
    update_model_card,
)
from dermcam.models import build_model, load_state_file


def _saved(tmp_path):
    model, info = build_model("resnet18", weights="none")
    path = save_checkpoint(tmp_path / "model.pt", model, info,
                           {"temperature": 1.5, "model_card": {"trained_on": "synth"}})
    return model, path


def test_update_checkpoint_sets_fields_keeps_weights_and_skips_a_no_op(tmp_path):
    model, path = _saved(tmp_path)
    cam = {"method": "layercam", "layer": "layer2", "reason": "best pixel AUROC"}
    assert update_checkpoint(path, {"cam": cam}) is True
    payload = load_state_file(path)
    assert payload["cam"] == cam and payload["temperature"] == 1.5
    loaded, info, _ = load_checkpoint(path)  # still loads with weights_only=True
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    before = path.read_bytes()
    assert update_checkpoint(path, {"cam": dict(cam)}) is False  # same value: untouched
    assert path.read_bytes() == before
    assert update_checkpoint(path, {"cam": {**cam, "layer": "layer3"}}) is True
    assert load_state_file(path)["cam"]["layer"] == "layer3"


def test_update_model_card_merges_into_the_card(tmp_path):
    _, path = _saved(tmp_path)
    update_model_card(path, {"test_auc": 0.9})
    update_model_card(path, {"test_auc": 0.91, "n_test": 60})
    assert load_state_file(path)["model_card"] == {"trained_on": "synth", "test_auc": 0.91,
                                                   "n_test": 60}
