"""ISIC 2017, HAM10000 and PH2 through the common loader interface.

Each test writes a miniature of the official layout into ``tmp_path`` (tiny
images, masks and label files with known answers) and checks detection,
counts, labels, masks and splits, and for HAM10000 that no lesion's images
straddle the train and test splits.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from dermcam import cli
from dermcam.data import detect_layout, ham10000, isic2017, load_dataset, ph2
from dermcam.data.describe import describe
from dermcam.errors import DermcamError

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---------------------------------------------------------------------------
# ISIC 2017
# ---------------------------------------------------------------------------

# part -> {id: (melanoma, seborrheic_keratosis)}
ISIC17 = {
    "Training": {"ISIC_0000000": (1, 0), "ISIC_0000001": (0, 1), "ISIC_0000002": (0, 0)},
    "Validation": {"ISIC_0001769": (1, 0), "ISIC_0001770": (0, 0)},
    "Test_v2": {"ISIC_0012086": (0, 1), "ISIC_0012087": (1, 0)},
}
NO_MASK_17 = "ISIC_0000002"


def make_isic2017(root: Path, dh, rows=None) -> Path:
    for part, items in (rows or ISIC17).items():
        lines = ["image_id,melanoma,seborrheic_keratosis"]
        for k, (image_id, (mel, sk)) in enumerate(items.items()):
            dh.write_image(root / isic2017.data_dir(part) / f"{image_id}.jpg", mel, seed=k)
            if image_id != NO_MASK_17:
                dh.write_mask(root / isic2017.mask_dir(part) / f"{image_id}_segmentation.png")
            lines.append(f"{image_id},{float(mel)},{float(sk)}")
        # the official training folder also holds superpixel maps: not images to classify
        dh.write_mask(root / isic2017.data_dir(part) / f"{image_id}_superpixels.png")
        (root / isic2017.label_csv(part)).write_text("\n".join(lines) + "\n")
    return root


def test_isic2017_layout(tmp_path, dh):
    root = make_isic2017(tmp_path / "isic2017", dh)
    assert detect_layout(root) == "isic2017"
    ds = load_dataset(root)
    assert ds.layout == "isic2017" and ds.name == "ISIC 2017"
    train = {s.image_id: s.label for s in ds.split("train")}
    test = {s.image_id: s.label for s in ds.split("test")}
    assert train == {i: m for part in ("Training", "Validation")
                     for i, (m, _) in ISIC17[part].items()}
    assert test == {i: m for i, (m, _) in ISIC17["Test_v2"].items()}
    for s in ds.samples:
        assert s.image_path.suffix == ".jpg" and s.image_path.exists()
        assert (s.mask_path is None) == (s.image_id == NO_MASK_17)
        if s.mask_path is not None:
            assert s.mask_path.name == f"{s.image_id}_segmentation.png"
    assert any("differ from the published" in n for n in ds.notes)
    d = describe(root)
    assert d["splits"]["train"]["n"] == 5 and d["splits"]["test"]["malignant"] == 1


def test_isic2017_other_target_and_bad_values(tmp_path, dh):
    root = make_isic2017(tmp_path / "isic2017", dh)
    sk = isic2017.load(root, target="seborrheic_keratosis")
    assert {s.image_id for s in sk.samples if s.label == 1} == {"ISIC_0000001", "ISIC_0012086"}
    with pytest.raises(DermcamError, match="'nevus' columns"):
        isic2017.load(root, target="nevus")
    csv = root / isic2017.label_csv("Validation")
    csv.write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0001769,0.5,0.0\n")
    with pytest.raises(DermcamError, match=r"line 2: melanoma value '0.5' is not 0/1") as exc:
        load_dataset(root)
    assert exc.value.path == str(csv)
    csv.write_text("image_id,melanoma,seborrheic_keratosis\n../ISIC_0001769,1.0,0.0\n")
    with pytest.raises(DermcamError, match="not a plain file name"):
        load_dataset(root)


# ---------------------------------------------------------------------------
# HAM10000
# ---------------------------------------------------------------------------

# (lesion, image, dx): 10 lesions, some with several images
HAM = [
    ("HAM_0000001", "ISIC_0024306", "nv"), ("HAM_0000001", "ISIC_0024307", "nv"),
    ("HAM_0000002", "ISIC_0024308", "mel"), ("HAM_0000002", "ISIC_0024309", "mel"),
    ("HAM_0000002", "ISIC_0024310", "mel"),
    ("HAM_0000003", "ISIC_0024311", "bcc"), ("HAM_0000004", "ISIC_0024312", "akiec"),
    ("HAM_0000005", "ISIC_0024313", "bkl"), ("HAM_0000005", "ISIC_0024314", "bkl"),
    ("HAM_0000006", "ISIC_0024315", "df"), ("HAM_0000007", "ISIC_0024316", "vasc"),
    ("HAM_0000008", "ISIC_0024317", "nv"), ("HAM_0000009", "ISIC_0024318", "nv"),
    ("HAM_0000010", "ISIC_0024319", "mel"),
]
MASKED = {"ISIC_0024306", "ISIC_0024308", "ISIC_0024311"}


def make_ham(root: Path, dh, rows=HAM, images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for k, (lesion, image_id, dx) in enumerate(rows):
        lines.append(f"{lesion},{image_id},{dx},histo,50.0,male,back")
        if images:
            part = "HAM10000_images_part_1" if k % 2 else "HAM10000_images_part_2"
            dh.write_image(root / part / f"{image_id}.jpg", int(dx == "mel"), seed=k)
        if images and image_id in MASKED:
            dh.write_mask(root / "HAM10000_segmentations_lesion_tschandl"
                          / f"{image_id}_segmentation.png")
    (root / ham10000.METADATA).write_text("\n".join(lines) + "\n")
    return root


def test_ham10000_layout(tmp_path, dh):
    root = make_ham(tmp_path / "ham", dh)
    assert detect_layout(root) == "ham10000"
    ds = load_dataset(root)
    assert ds.layout == "ham10000" and len(ds.samples) == len(HAM)
    want = {i: int(dx in ("mel", "bcc", "akiec")) for _, i, dx in HAM}
    assert {s.image_id: s.label for s in ds.samples} == want
    assert {s.image_id for s in ds.samples if s.mask_path is not None} == MASKED
    assert all(s.image_path.exists() for s in ds.samples)
    assert ds.split("train") and ds.split("test")
    lesion = {i: les for les, i, _ in HAM}
    sides = defaultdict(set)
    for s in ds.samples:
        sides[lesion[s.image_id]].add(s.split)
    assert all(len(v) == 1 for v in sides.values())
    assert any("split by lesion_id" in n for n in ds.notes)
    # the mapping is configurable
    mel_only = ham10000.load(root, malignant=("mel",))
    assert {s.image_id for s in mel_only.samples if s.label} == {
        i for _, i, dx in HAM if dx == "mel"}
    with pytest.raises(DermcamError, match="unknown diagnosis code"):
        ham10000.load(root, malignant=("melanoma",))


def test_ham10000_single_folder_and_masks_folder(tmp_path, dh):
    root = tmp_path / "ham"
    rows = HAM[:4]
    make_ham(root, dh, rows=rows, images=False)
    for k, (_, image_id, _dx) in enumerate(rows):
        dh.write_image(root / "HAM10000_images" / f"{image_id}.jpg", 0, seed=k)
    dh.write_mask(root / "masks" / "ISIC_0024307.png")
    ds = load_dataset(root)
    assert {s.image_id for s in ds.samples if s.mask_path} == {"ISIC_0024307"}


def test_ham10000_lesions_never_straddle_splits(tmp_path, dh):
    """300 lesions with 1-4 images each (metadata only): the split is by lesion."""
    import random

    rng = random.Random(3)
    rows = []
    n = 0
    for k in range(300):
        dx = rng.choice(["nv", "nv", "nv", "bkl", "mel", "bcc"])
        for _ in range(rng.randint(1, 4)):
            rows.append((f"HAM_{k:07d}", f"ISIC_{n:07d}", dx))
            n += 1
    root = make_ham(tmp_path / "ham", dh, rows=rows, images=False)
    ds = ham10000.load(root, check_files=False)
    lesion = {i: les for les, i, _ in rows}
    sides = defaultdict(set)
    for s in ds.samples:
        sides[lesion[s.image_id]].add(s.split)
    assert all(len(v) == 1 for v in sides.values())
    # about 20 % of the lesions of each class are held out
    for label in (0, 1):
        les = {lesion[s.image_id] for s in ds.samples if s.label == label}
        test = {lesion[s.image_id] for s in ds.samples if s.label == label and s.split == "test"}
        assert abs(len(test) / len(les) - 0.2) < 0.02
    # deterministic for a seed, different for another
    again = ham10000.load(root, check_files=False)
    assert [s.split for s in again.samples] == [s.split for s in ds.samples]
    other = ham10000.load(root, check_files=False, seed=1)
    assert [s.split for s in other.samples] != [s.split for s in ds.samples]


def test_ham10000_bad_rows(tmp_path, dh):
    root = make_ham(tmp_path / "ham", dh, rows=HAM[:2])
    meta = root / ham10000.METADATA
    meta.write_text(meta.read_text() + "HAM_0000099,ISIC_0099999,xyz,histo,1,male,back\n")
    with pytest.raises(DermcamError, match=r"line 4: diagnosis 'xyz'"):
        load_dataset(root)
    meta.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_0099999,nv\n")
    with pytest.raises(DermcamError, match="no image file for id 'ISIC_0099999'") as exc:
        load_dataset(root)
    assert exc.value.path == str(meta)


# ---------------------------------------------------------------------------
# PH2
# ---------------------------------------------------------------------------

# id -> clinical diagnosis (0 common nevus, 1 atypical nevus, 2 melanoma)
PH2 = {"IMD002": 1, "IMD003": 0, "IMD004": 1, "IMD006": 0, "IMD008": 0, "IMD009": 1,
       "IMD058": 2, "IMD061": 2, "IMD063": 2, "IMD064": 2}
NO_MASK_PH2 = "IMD009"
PH2_HEADER = ("||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry || "
              "Pigment Network || Dots/Globules || Streaks || Regression Areas || "
              "Blue-Whitish Veil ||         Colors        ||")


def ph2_row(image_id: str, code: int, style: str = "double") -> str:
    histo = "Melanoma" if code == 2 else ""
    if style == "double":  # as in the published file
        return (f"|| {image_id} || {histo:>22} || {code:>18} ||         0 |     T |"
                "     A |   A |      A |      A ||      3  4 ||")
    return f"|| {image_id} ||   {histo}  |  {code}  |  0  |  T  |  A  ||"  # single-bar cells


def make_ph2(root: Path, dh, codes=PH2, style: str = "double") -> Path:
    base = root / "PH2Dataset"
    lines = [PH2_HEADER] + [ph2_row(i, c, style) for i, c in codes.items()]
    lines += ["", "|| Clinical Diagnosis: || 0 - Common Nevus; 1 - Atypical Nevus; "
                  "2 - Melanoma ||"]
    base.mkdir(parents=True, exist_ok=True)
    (base / ph2.TABLE).write_text("\n".join(lines) + "\n")
    for k, (image_id, code) in enumerate(codes.items()):
        folder = base / ph2.IMAGES / image_id
        dh.write_image(folder / f"{image_id}_Dermoscopic_Image" / f"{image_id}.bmp",
                       int(code == 2), seed=k)
        if image_id != NO_MASK_PH2:
            dh.write_mask(folder / f"{image_id}_lesion" / f"{image_id}_lesion.bmp")
    return root


def test_ph2_layout(tmp_path, dh):
    root = make_ph2(tmp_path / "ph2", dh)
    assert detect_layout(root) == "ph2"
    assert detect_layout(root / "PH2Dataset") == "ph2"
    ds = load_dataset(root)
    assert ds.layout == "ph2" and len(ds.samples) == len(PH2)
    assert {s.image_id: s.label for s in ds.samples} == {i: int(c == 2) for i, c in PH2.items()}
    assert {s.image_id for s in ds.samples if s.mask_path is None} == {NO_MASK_PH2}
    assert all(s.image_path.suffix == ".bmp" for s in ds.samples)
    # stratified 20 % hold-out: 1 of 6 benign, 1 of 4 malignant; seeded
    test = ds.split("test")
    assert sorted(s.label for s in test) == [0, 1]
    assert [s.split for s in load_dataset(root).samples] == [s.split for s in ds.samples]
    assert any("differ from the published PH2" in n for n in ds.notes)
    d = describe(root)
    assert d["splits"]["test"]["n"] == 2


def test_ph2_table_dialects_and_errors(tmp_path, dh):
    root = make_ph2(tmp_path / "ph2", dh, style="single")
    assert ph2.read_table(root / "PH2Dataset" / ph2.TABLE) == PH2
    table = root / "PH2Dataset" / ph2.TABLE
    table.write_text("\n".join(ph2_row(i, c) for i, c in PH2.items()) + "\n")  # no header
    assert ph2.read_table(table) == PH2
    table.write_text(PH2_HEADER + "\n" + ph2_row("IMD002", 3) + "\n")
    with pytest.raises(DermcamError, match="line 2: clinical diagnosis '3'") as exc:
        load_dataset(root)
    assert exc.value.path == str(table)
    table.unlink()
    (root / "PH2Dataset" / ph2.TABLE_XLSX).write_bytes(b"PK\x03\x04")
    assert detect_layout(root) == "ph2"
    with pytest.raises(DermcamError, match="unreadable spreadsheet") as exc:
        load_dataset(root)
    assert exc.value.path == str(root / "PH2Dataset" / ph2.TABLE_XLSX)


def write_ph2_tab(path: Path, codes=PH2) -> None:
    """A tab-separated PH2_dataset.txt with CRLF line ends, as copies in circulation."""
    lines = ["Name\tHistological Diagnosis\tClinical Diagnosis\tAsymmetry\tColors"]
    lines += [f"{i}\t{'Melanoma' if c == 2 else ''}\t{c}\t0\t3 4" for i, c in codes.items()]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def write_ph2_xlsx(path: Path, codes=PH2) -> None:
    """PH2_dataset.xlsx as distributed: title rows, a two-row header whose second row
    names the three clinical classes, one X per image."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["PH2 dataset: dermoscopic images"])
    ws.append([])
    ws.append(["Image Name", "Histological Diagnosis", "Clinical Diagnosis", None, None,
               "Asymmetry"])
    ws.append([None, None, "Common Nevus", "Atypical Nevus", "Melanoma", None])
    for i, c in codes.items():
        marks = ["X" if k == c else None for k in range(3)]
        ws.append([i, "Melanoma" if c == 2 else None, *marks, 0])
    ws.append([])
    ws.append(["Legend: X marks the clinical diagnosis"])
    wb.save(path)


@pytest.mark.parametrize("form", ["tab_crlf", "xlsx_only", "xlsx_beside_txt"])
def test_ph2_forms_in_circulation(form, tmp_path, dh):
    """The tab-separated CRLF text and the spreadsheet give the published file's labels."""
    root = make_ph2(tmp_path / "ph2", dh)
    base = root / "PH2Dataset"
    published = ph2.read_table(base / ph2.TABLE)
    assert published == PH2
    if form == "tab_crlf":
        write_ph2_tab(base / ph2.TABLE)
        assert b"\r\n" in (base / ph2.TABLE).read_bytes()
    else:
        write_ph2_xlsx(base / ph2.TABLE_XLSX)
        assert ph2.read_table(base / ph2.TABLE_XLSX) == PH2
        if form == "xlsx_only":
            (base / ph2.TABLE).unlink()
    assert detect_layout(root) == "ph2"
    ds = load_dataset(root)
    assert {s.image_id: s.label for s in ds.samples} == {i: int(c == 2) for i, c in PH2.items()}
    assert [s.image_id for s in ds.samples] == list(PH2)  # file order kept


def test_ph2_spreadsheet_and_tab_errors(tmp_path):
    xlsx = tmp_path / ph2.TABLE_XLSX
    write_ph2_xlsx(xlsx, {"IMD002": 1})
    from openpyxl import load_workbook

    wb = load_workbook(xlsx)
    wb.active["E5"] = "X"  # IMD002 now marked atypical and melanoma
    wb.save(xlsx)
    with pytest.raises(DermcamError, match="row 5: IMD002 has 2 of the Common Nevus"):
        ph2.read_table(xlsx)
    tab = tmp_path / ph2.TABLE
    write_ph2_tab(tab, {"IMD002": 1, "IMD003": 0})
    tab.write_bytes(tab.read_bytes().replace(b"IMD003\t\t0", b"IMD003\t\tnevus"))
    with pytest.raises(DermcamError, match="line 3: clinical diagnosis 'nevus' for IMD003"):
        ph2.read_table(tab)
    tab.write_bytes(b"Name\tClinical Diagnosis\r\n")
    with pytest.raises(DermcamError, match="no image rows"):
        ph2.read_table(tab)


# ---------------------------------------------------------------------------
# dermcam info recognises each layout by itself
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["isic2017", "ham10000", "ph2", "ph2_tab", "ph2_xlsx"])
def test_cli_info(layout, tmp_path, dh, monkeypatch, capsys):
    make = {"isic2017": make_isic2017, "ham10000": make_ham}.get(layout, make_ph2)
    root = make(tmp_path / layout, dh)
    if layout == "ph2_tab":  # the copies that stopped 'dermcam info' (#16 item 6)
        write_ph2_tab(root / "PH2Dataset" / ph2.TABLE)
    elif layout == "ph2_xlsx":
        write_ph2_xlsx(root / "PH2Dataset" / ph2.TABLE_XLSX)
        (root / "PH2Dataset" / ph2.TABLE).unlink()
    layout = layout.partition("_")[0]
    monkeypatch.setattr(sys, "argv", ["dermcam", "info", str(root)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = ANSI.sub("", capsys.readouterr().out)
    assert e.value.code in (0, None)
    assert f"({layout} layout)" in out
