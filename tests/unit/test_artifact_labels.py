"""Per-image artifact labels (#16 item 5): Bissoto et al.'s isic_bias.csv read, joined to a
layout by image id, and results split by artifact presence with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dermcam.data import load_dataset
from dermcam.data.artifact_labels import read_artifact_labels, split_by_presence
from dermcam.data.metadata import metadata_table
from dermcam.errors import DermcamError
from dermcam.run import record_in_run

HEADER = "image;dark_corner;hair;gel_border;gel_bubble;ruler;ink;patches;label;label_string"


def bias_csv(path, rows) -> str:
    """``rows``: (image, hair, ruler) -> a ';'-separated isic_bias.csv, other flags 0."""
    lines = [HEADER] + [f"{img};0;{h};0;0;{r};0;0;0;benign" for img, h, r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_bias_csv(tmp_path):
    t = read_artifact_labels(bias_csv(tmp_path / "isic_bias.csv",
                                      [("ISIC_0000001.jpg", 1, 0), ("ISIC_0000002", 0, 1)]))
    assert t["image_id"].tolist() == ["ISIC_0000001", "ISIC_0000002"]  # extension dropped
    assert [c for c in t.columns if c != "image_id"] == [
        "artifact_dark_corner", "artifact_hair", "artifact_gel_border", "artifact_gel_bubble",
        "artifact_ruler", "artifact_ink", "artifact_patches"]  # label, label_string: not flags
    assert t["artifact_hair"].tolist() == [1, 0] and t["artifact_ruler"].tolist() == [0, 1]


@pytest.mark.parametrize("rows, msg", [
    ([("a.jpg", 1, 0), ("b.jpg", "yes", 0)], r"line 3: image b: hair is 'yes', expected 0 or 1"),
    ([("a.jpg", 1, 0), ("a.png", 0, 0)], r"line 3: image a is listed twice \(first on line 2\)"),
])
def test_bad_rows_one_line(tmp_path, rows, msg):
    path = bias_csv(tmp_path / "isic_bias.csv", rows)
    with pytest.raises(DermcamError, match=msg) as exc:
        read_artifact_labels(path)
    assert exc.value.path == str(path) and "\n" not in str(exc.value)


def test_joined_to_a_layout_and_stratified(make_generic, dh, tmp_path):
    labels = dh.generic_labels(6, 4)
    split = {i: ("test" if k in (0, 1, 6, 7) else "train") for k, i in enumerate(labels)}
    root = make_generic(labels, split=split, masks=True)
    ids = list(labels)
    rows = [(f"{i}.jpg", int(k % 2 == 0), int(k < 3)) for k, i in enumerate(ids[:8])]
    rows.append(("ISIC_9999999.jpg", 1, 1))  # not in the data set
    path = bias_csv(tmp_path / "isic_bias.csv", rows)
    ds = load_dataset(root, artifacts=path)
    note = ds.notes[-1]
    assert "8 of 10 images" in note and "ISIC_9999999" in note and "2 image(s) have no row" in note
    meta = metadata_table(ds)  # what 'evaluate --by artifact_hair' groups on
    assert meta.loc[ids[0], "artifact_hair"] == 1 and meta.loc[ids[1], "artifact_hair"] == 0
    assert meta.loc[ids[2], "artifact_ruler"] == 1 and meta.loc[ids[3], "artifact_ruler"] == 0
    assert set(ds.artifact_labels["image_id"]) == set(ids[:8])  # unknown id dropped
    with pytest.raises(DermcamError, match="none of the 1 image ids"):
        load_dataset(root, artifacts=bias_csv(tmp_path / "other.csv", [("X_1.jpg", 1, 0)]))


def test_split_by_presence_known_answer():
    df = pd.DataFrame({"artifact_hair": [1, 1, 0, 0, 0, None],
                       "leakage": [0.8, 0.6, 0.2, 0.4, float("nan"), 0.9]})
    (row,) = split_by_presence(df, ["artifact_hair"], ["leakage"])
    assert (row["n_with"], row["n_without"]) == (2, 2)  # NaN value and missing flag left out
    assert row["mean_with"] == pytest.approx(0.7) and row["mean_without"] == pytest.approx(0.3)
    assert row["diff"] == pytest.approx(0.4)
    assert row["p"] == pytest.approx(1 / 3)  # exact Mann-Whitney, complete separation, 2 v 2
    (none,) = split_by_presence(df.assign(artifact_hair=0), ["artifact_hair"], ["leakage"])
    assert none["n_with"] == 0 and math.isnan(none["diff"]) and math.isnan(none["p"])


def test_record_in_run(make_generic, dh, tmp_path):
    from dermcam import run as runmod

    labels = dh.generic_labels(6, 4)
    root = make_generic(labels, masks=True)
    run = tmp_path / "run"
    run.mkdir()
    runmod.write_manifest(run, {"schema_version": runmod.SCHEMA_VERSION, "kind": "dermcam-run",
                                "data": {"root": str(root)}, "stages": {}})
    path = bias_csv(tmp_path / "isic_bias.csv", [(f"{i}.jpg", 1, 0) for i in labels])
    assert "10 of 10 images" in record_in_run(run, path)
    assert runmod.read_manifest(run)["data"]["artifacts"] == str(path.resolve())
    # the same file again (an evaluate re-run joins the recorded labels): nothing rewritten
    written = (run / runmod.MANIFEST).stat()
    assert "10 of 10 images" in record_in_run(run, path)
    now = (run / runmod.MANIFEST).stat()
    assert (now.st_ino, now.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
