"""Bad input anywhere: one line naming the culprit, nothing half-written, nothing overwritten.

Two matrices. ``DATA_CASES`` damages a copy of a fixture dataset; ``segfm verify-data`` must
name the damaged file (an error, or a warning for the legal-but-suspicious cases), write
nothing, and, where the data module's own loading also stops, its one-line error must name the
file too. ``IO_CASES`` covers checkpoints, the command line and the writers (full disk, folder
that cannot be written, outputs onto inputs).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segfm.checkpoints.io import load_file
from segfm.checkpoints.sam import load_into
from segfm.cli import main
from segfm.data import ClassFolderDataModule, NnUNetDataModule, NpySliceDataModule, NpzDataModule
from segfm.data.io.atomic import TEMP_PREFIX, check_not_input, check_outside_data, save_npz
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.data.io.npy_slices import read_volume
from segfm.data.io.npz_cvpr import write_prediction_npz
from segfm.errors import SegfmError
from segfm.models import sam_tiny

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

# --- damaging files ---------------------------------------------------------------------------


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(300))
    return path


def _resave_npy(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    np.save(path, change(np.load(path)))
    return path


def _resave_npz(path: Path, **changes: np.ndarray | None) -> Path:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _resave_nifti(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    volume = read_nifti(path)
    write_nifti(path, change(volume.array), volume.affine)
    return path


def _set_pixdim_x(path: Path, value: float) -> Path:
    """Overwrite ``pixdim[1]`` of a ``.nii.gz`` header, leaving its sform as it is."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 80, value)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def _first(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))[0]


def _edit_json(path: Path, change: Callable[[dict], None]) -> Path:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))
    return path


# npy slices (root: imgs/, gts/, npz/, labels.json)
def _npy_float_slice_nan(root: Path) -> Path:
    return _resave_npy(
        _first(root / "imgs"), lambda a: np.where(a > 0.5, np.nan, a).astype(np.float32)
    )


def _npy_label_outside(root: Path) -> Path:
    return _resave_npy(_first(root / "gts"), lambda a: np.where(a > 0, 200, a).astype(np.uint8))


def _npy_empty_label(root: Path) -> Path:
    return _resave_npy(_first(root / "gts"), np.zeros_like)


# nnU-Net raw (Dataset001_Synth: imagesTr/synth_00X_0000.nii.gz, labelsTr/synth_00X.nii.gz)
def _image(root: Path, case: int = 0) -> Path:
    return root / "imagesTr" / f"synth_{case:03d}_0000.nii.gz"


def _label(root: Path, case: int = 0) -> Path:
    return root / "labelsTr" / f"synth_{case:03d}.nii.gz"


def _nifti_affine_moved(root: Path) -> Path:
    volume = read_nifti(_label(root))
    affine = volume.affine.copy()
    affine[:3, 3] += 5.0
    write_nifti(_label(root), volume.array, affine)
    return _label(root)


def _nifti_pixdim_zero(root: Path) -> Path:
    return _set_pixdim_x(_image(root), 0.0)  # nibabel reads it as 1 mm, the sform says other


def _nifti_nan(root: Path) -> Path:
    return _resave_nifti(
        _image(root), lambda a: np.where(a > a.mean(), np.nan, a).astype(np.float32)
    )


def _nifti_4d(root: Path) -> Path:
    volume = read_nifti(_image(root))
    xyz = volume.array.transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(np.stack([xyz, xyz], axis=-1), volume.affine), _image(root))
    return _image(root)


def _two_channels_declared(root: Path) -> Path:
    _edit_json(root / "dataset.json", lambda d: d.update(channel_names={"0": "CT", "1": "PET"}))
    return root / "imagesTr" / "synth_000_0001.nii.gz"


# class folders (classes/<class>/<dataset>/imagesTr|labelsTr)
def _class_mask(root: Path) -> Path:
    return _first(root / "liver" / "ct_synth" / "labelsTr")


# CVPR npz (cvpr/class_prompts.json, <DATASET>/train/*.npz, test/, test_mask/)
def _npz_train(root: Path, name: str = "CT_Abd_000") -> Path:
    return root / "CT_Abd" / "train" / f"{name}.npz"


def _npz_rgb(root: Path) -> Path:
    path = _npz_train(root)
    with np.load(path) as npz:
        image, label = npz["imgs"][0], npz["gts"][0]
    return _resave_npz(path, imgs=np.repeat(image[..., None], 3, axis=-1), gts=label)


def _unpaired(removed: Path, kept_folder: Path) -> Path:
    """Delete ``removed``; the file of the same name in ``kept_folder`` lost its partner."""
    removed.unlink()
    return kept_folder / removed.name


def _npy_image_without_mask(root: Path) -> Path:
    return _unpaired(_first(root / "gts"), root / "imgs")


def _npy_mask_without_image(root: Path) -> Path:
    return _unpaired(_first(root / "imgs"), root / "gts")


def _nnunet_image_without_label(root: Path) -> Path:
    _label(root, 1).unlink()
    return _image(root, 1)


def _nnunet_label_without_image(root: Path) -> Path:
    _image(root, 2).unlink()
    return _label(root, 2)


def _corrupt_dataset_json(root: Path) -> Path:
    (root / "dataset.json").write_text("{oops")
    return root / "dataset.json"


def _class_mask_without_image(root: Path) -> Path:
    folder = root / "liver" / "ct_synth"
    return _unpaired(_first(folder / "imagesTr"), folder / "labelsTr")


def _dataset_without_prompts(root: Path) -> Path:
    _edit_json(root / "class_prompts.json", lambda d: d.pop("MR_Brain"))
    return root / "MR_Brain"


def _no_class_prompts(root: Path) -> Path:
    (root / "class_prompts.json").unlink()
    return root / "class_prompts.json"


@dataclass(frozen=True)
class DataCase:
    """A damage of a fixture dataset.

    Attributes:
        fixture: Name of the fixture root to copy.
        damage: Damages the copy; returns the file (or folder) at fault.
        fatal: verify-data reports an error (else a warning only).
        loader_fails: The data module's own loading stops too (else verify-data is the guard).
    """

    fixture: str
    damage: Callable[[Path], Path]
    fatal: bool = True
    loader_fails: bool = True


DATA_CASES: dict[str, DataCase] = {
    # MedSAM npy slices
    "npy-truncated-slice": DataCase("npy", lambda r: _truncate(_first(r / "imgs"))),
    "npy-corrupt-case-npz": DataCase("npy", lambda r: _garbage(_first(r / "npz"))),
    "npy-nan-intensities": DataCase("npy", _npy_float_slice_nan),
    "npy-float-label": DataCase(
        "npy", lambda r: _resave_npy(_first(r / "gts"), lambda a: a.astype(np.float32) + 0.5)
    ),
    "npy-shape-mismatch": DataCase(
        "npy", lambda r: _resave_npy(_first(r / "gts"), lambda a: a[:, :-3])
    ),
    "npy-wrong-channel-count": DataCase(
        "npy", lambda r: _resave_npy(_first(r / "imgs"), lambda a: np.concatenate([a, a], -1))
    ),
    "npy-label-outside-classes": DataCase("npy", _npy_label_outside, loader_fails=False),
    "npy-missing-spacing": DataCase("npy", lambda r: _resave_npz(_first(r / "npz"), spacing=None)),
    "npy-zero-spacing": DataCase(
        "npy", lambda r: _resave_npz(_first(r / "npz"), spacing=np.array([0.0, 1.0, 1.0]))
    ),
    "npy-nan-spacing": DataCase(
        "npy", lambda r: _resave_npz(_first(r / "npz"), spacing=np.array([np.nan, 1.0, 1.0]))
    ),
    "npy-image-without-mask": DataCase("npy", _npy_image_without_mask),
    "npy-mask-without-image": DataCase("npy", _npy_mask_without_image),
    "npy-empty-label": DataCase("npy", _npy_empty_label, fatal=False, loader_fails=False),
    # nnU-Net raw volumes
    "nifti-truncated": DataCase("nnunet", lambda r: _truncate(_image(r))),
    "nifti-garbage": DataCase("nnunet", lambda r: _garbage(_label(r))),
    "nifti-shape-mismatch": DataCase(
        "nnunet", lambda r: _resave_nifti(_label(r), lambda a: a[:, :-2])
    ),
    "nifti-affine-mismatch": DataCase("nnunet", _nifti_affine_moved, loader_fails=False),
    "nifti-zero-pixdim": DataCase("nnunet", _nifti_pixdim_zero, loader_fails=False),
    "nifti-nan-spacing": DataCase("nnunet", lambda r: _set_pixdim_x(_image(r), np.nan)),
    "nifti-nan-intensities": DataCase("nnunet", _nifti_nan, loader_fails=False),
    "nifti-float-label": DataCase(
        "nnunet", lambda r: _resave_nifti(_label(r), lambda a: a.astype(np.float32) * 0.5)
    ),
    "nifti-negative-label": DataCase(
        "nnunet", lambda r: _resave_nifti(_label(r), lambda a: a.astype(np.int16) - 1)
    ),
    "nifti-label-outside-classes": DataCase(
        "nnunet", lambda r: _resave_nifti(_label(r), lambda a: a * 9), loader_fails=False
    ),
    "nnunet-image-without-label": DataCase("nnunet", _nnunet_image_without_label),
    "nnunet-label-without-image": DataCase("nnunet", _nnunet_label_without_image),
    "nnunet-missing-channel": DataCase("nnunet", _two_channels_declared, loader_fails=False),
    "nnunet-4d-image": DataCase("nnunet", _nifti_4d),
    "nnunet-corrupt-dataset-json": DataCase("nnunet", _corrupt_dataset_json),
    "nnunet-empty-label": DataCase(
        "nnunet", lambda r: _resave_nifti(_label(r), np.zeros_like), False, False
    ),
    # SAM-Med3D class folders
    "class-mask-not-binary": DataCase(
        "classes", lambda r: _resave_nifti(_class_mask(r), lambda a: a * 2 + 1), loader_fails=False
    ),
    "class-mask-without-image": DataCase("classes", _class_mask_without_image),
    # CVPR 2025 npz
    "npz-truncated": DataCase("npz", lambda r: _truncate(_npz_train(r))),
    "npz-corrupt-test-mask": DataCase(
        "npz", lambda r: _garbage(r / "CT_Abd" / "test_mask" / "CT_Abd_t00.npz")
    ),
    "npz-missing-spacing": DataCase("npz", lambda r: _resave_npz(_npz_train(r), spacing=None)),
    "npz-zero-spacing": DataCase(
        "npz", lambda r: _resave_npz(_npz_train(r), spacing=np.array([2.5, 0.0, 0.8]))
    ),
    "npz-nan-intensities": DataCase(
        "npz", lambda r: _resave_npz(_npz_train(r), imgs=np.full((10, 40, 36), np.nan))
    ),
    "npz-float-label": DataCase(
        "npz", lambda r: _resave_npz(_npz_train(r), gts=np.full((10, 40, 36), 0.5))
    ),
    "npz-label-without-prompts": DataCase(
        "npz", lambda r: _resave_npz(_npz_train(r), gts=np.full((10, 40, 36), 9, np.uint8))
    ),
    "npz-dataset-without-prompts": DataCase("npz", _dataset_without_prompts),
    "npz-instance-dataset-two-classes": DataCase(
        "npz",
        lambda r: _edit_json(
            r / "class_prompts.json", lambda d: d["PET_Lesion"].update({"2": ["Other"]})
        ),
    ),
    "npz-no-class-prompts": DataCase("npz", _no_class_prompts),
    "npz-shape-mismatch": DataCase(
        "npz", lambda r: _resave_npz(_npz_train(r), gts=np.zeros((10, 40, 35), np.uint8))
    ),
    "npz-wrong-channel-count": DataCase("npz", _npz_rgb),
    "npz-empty-volume": DataCase(
        "npz", lambda r: _resave_npz(_npz_train(r), imgs=np.zeros((0, 40, 36), np.uint8))
    ),
    "npz-empty-label": DataCase(
        "npz",
        lambda r: _resave_npz(_npz_train(r), gts=np.zeros((10, 40, 36), np.uint8)),
        False,
        False,
    ),
}

FIXTURES = {
    "npy": "npy_slices_root",
    "nnunet": "nnunet_root",
    "classes": "class_folder_root",
    "npz": "npz_root",
}


def _module(kind: str, root: Path, cache: Path):
    """The data module of a fixture kind, set to read every case for training."""
    volume_args = {"spacing": None, "patch_size": 16, "cache_dir": str(cache), "num_workers": 0}
    return {
        "npy": lambda: NpySliceDataModule(
            str(root), num_workers=0, val_fraction=0, test_fraction=0
        ),
        "nnunet": lambda: NnUNetDataModule(
            str(root), val_fraction=0, test_fraction=0, **volume_args
        ),
        "classes": lambda: ClassFolderDataModule(
            str(root), val_fraction=0, test_fraction=0, **volume_args
        ),
        "npz": lambda: NpzDataModule(str(root), num_workers=0, val_fraction=0, patch_size=16),
    }[kind]()


def _load_everything(kind: str, root: Path, cache: Path) -> None:
    """What training and testing read: ``setup`` and every sample (and every case npz)."""
    module = _module(kind, root, cache)
    stages = ["fit", "test"] if kind == "npz" else ["fit"]
    for stage in stages:
        module.setup(stage)
        dataset = module.datasets["train" if stage == "fit" else stage]
        for i in range(len(dataset)):
            dataset[i]
    if kind == "npy":
        for path in sorted((root / "npz").glob("*.npz")):
            read_volume(path)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f"{TEMP_PREFIX}*")]


@pytest.mark.filterwarnings("ignore:.*has no foreground after resampling")
@pytest.mark.parametrize("name", list(DATA_CASES))
def test_bad_data_is_named(name, request, tmp_path):
    case = DATA_CASES[name]
    source = request.getfixturevalue(FIXTURES[case.fixture])
    root = shutil.copytree(source, tmp_path / "data")
    culprit = str(case.damage(root))
    before = _files(root)
    module = _module(case.fixture, root, tmp_path / "cache")

    report = module.verify()

    severity = "error" if case.fatal else "warning"
    named = [p for p in report.problems if p.file == culprit]
    assert [p.severity for p in named if p.severity == severity], report.text()
    assert all(p.fix for p in report.problems)
    if not case.fatal:
        assert report.errors == [], report.text()
    assert _files(root) == before  # verify-data writes nothing
    if case.loader_fails:
        with pytest.raises(SegfmError) as info:
            _load_everything(case.fixture, root, tmp_path / "cache")
        message = str(info.value)
        assert "\n" not in message and culprit in message, message
    else:
        _load_everything(case.fixture, root, tmp_path / "cache")
    assert _temporaries(tmp_path) == []


def test_the_data_matrix_is_large_enough():
    assert len(DATA_CASES) >= 30
    assert {c.fixture for c in DATA_CASES.values()} == set(FIXTURES)


# --- checkpoints, command line and writers -----------------------------------------------------


class _Payload:
    """Unpickling this runs ``os.system``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return sam_tiny(image_size=32).state_dict()


@dataclass(frozen=True)
class Outcome:
    """What a bad input must give: an error naming ``culprit``, and no damage.

    Attributes:
        culprit: Text the one-line message must contain (the file or the key at fault).
        absent: Paths that must not exist afterwards (no partial output).
        untouched: Files whose bytes must be unchanged afterwards.
    """

    culprit: str
    absent: tuple[Path, ...] = ()
    untouched: tuple[Path, ...] = ()


Case = Callable[[Path, dict, pytest.MonkeyPatch], tuple[Outcome, Callable[[], object]]]


def _full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _ckpt_damaged(damage: Callable[[Path], object]) -> Case:
    def case(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
        path = tmp / "sam.pth"
        torch.save(state, path)
        damage(path)
        return Outcome(str(path)), lambda: load_into(sam_tiny(image_size=32), path)

    return case


def _ckpt_keys(change: Callable[[dict], object], word: str) -> Case:
    def case(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
        changed = dict(state)
        change(changed)
        path = tmp / "sam.pth"
        torch.save(changed, path)
        outcome = Outcome(f"{path} does not fit the Sam network: 1 {word}")
        return outcome, lambda: load_into(sam_tiny(image_size=32), path)

    return case


def _ckpt_malicious(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    marker, path = tmp / "pwned", tmp / "evil.pth"
    torch.save({**state, "payload": _Payload(marker)}, path)
    return Outcome(f"{path}: refused to load", absent=(marker,)), lambda: load_file(path)


def _lightning_ckpt(tmp: Path, state: dict) -> Path:
    path = tmp / "last.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "hyper_parameters": {"_class_path": "segfm.methods.MedSAM"},
        },
        path,
    )
    return path


def _export(ckpt: Path, out: Path) -> Callable[[], object]:
    return lambda: main(["export", "--ckpt_path", str(ckpt), "--output", str(out)])


def _export_disk_full(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    ckpt, out = _lightning_ckpt(tmp, state), tmp / "out" / "medsam.pth"
    out.parent.mkdir()
    out.write_bytes(b"the previous export")
    monkeypatch.setattr(torch, "save", _full)
    return Outcome(f"{out}: could not be written (No space left", untouched=(out,)), _export(
        ckpt, out
    )


def _export_not_writable(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    ckpt, blocker = _lightning_ckpt(tmp, state), tmp / "a_file"
    blocker.write_text("a file where the output folder should be")
    out = blocker / "medsam.pth"
    return Outcome(f"{out}: could not be written", untouched=(blocker,)), _export(ckpt, out)


def _export_plain_state_dict(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    path, out = tmp / "sam.pth", tmp / "out.pth"
    torch.save(state, path)
    return Outcome(f"{path}: not a Lightning checkpoint", absent=(out,)), _export(path, out)


def _export_missing_ckpt(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    path, out = tmp / "nope.ckpt", tmp / "out.pth"
    return Outcome(f"{path}: no such checkpoint file", absent=(out,)), _export(path, out)


def _evaluate_not_writable(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    gt, pred, blocker = tmp / "gt", tmp / "pred", tmp / "a_file"
    gt.mkdir(), pred.mkdir()
    blocker.write_text("a file where the output folder should be")
    labels = np.zeros((2, 6, 6), np.uint8)
    labels[0, 1:3, 1:3] = 1
    np.savez_compressed(gt / "c.npz", gts=labels, spacing=np.ones(3))
    np.savez_compressed(pred / "c.npz", segs=labels)
    out = blocker / "out"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--output", str(out)]
    return Outcome(f"cannot write into {out}", untouched=(blocker,)), lambda: main(args)


def _nifti_disk_full(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    out = tmp / "predictions" / "case.nii.gz"
    write_nifti(out, np.ones((2, 3, 4), np.uint8), np.eye(4))
    monkeypatch.setattr(nib, "save", _full)
    outcome = Outcome(f"cannot write {out} (No space left on device)", untouched=(out,))
    return outcome, lambda: write_nifti(out, np.zeros((2, 3, 4), np.uint8), np.eye(4))


def _npz_prediction_disk_full(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    out = tmp / "predictions" / "case.npz"
    save_npz(out, segs=np.ones((2, 3), np.uint8))
    monkeypatch.setattr(np, "savez_compressed", _full)
    outcome = Outcome(f"cannot write {out} (No space left on device)", untouched=(out,))
    return outcome, lambda: write_prediction_npz(out, np.zeros((2, 3), np.uint8))


def _prediction_onto_input(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    source = tmp / "data" / "test" / "case.npz"
    source.parent.mkdir(parents=True)
    np.savez_compressed(source, imgs=np.ones((2, 3, 3), np.uint8))
    target = tmp / "data" / "test" / ".." / "test" / "case.npz"
    return Outcome(f"{target} is an input file", untouched=(source,)), lambda: check_not_input(
        target, [None, source]
    )


def _predictions_inside_data(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    root = tmp / "data"
    root.mkdir()
    outcome = Outcome(f"output folder {root / 'predictions'} is inside the data folder {root}")
    return outcome, lambda: check_outside_data(root / "predictions", root)


def _cli(args: list[str], culprit: str) -> Case:
    def case(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
        filled = [a.format(tmp=tmp, root=ROOT) for a in args]
        return Outcome(culprit.format(tmp=tmp)), lambda: main(filled)

    return case


def _ckpt_path_corrupt(tmp: Path, state: dict, monkeypatch: pytest.MonkeyPatch):
    bad = tmp / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    args = [
        "predict",
        "--config",
        str(ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"),
        "--data.init_args.root",
        str(tmp),
        "--ckpt_path",
        str(bad),
    ]
    outcome = Outcome(f"--ckpt_path {bad} is not a readable PyTorch checkpoint", untouched=(bad,))
    return outcome, lambda: main(args)


IO_CASES: dict[str, Case] = {
    "ckpt-truncated": _ckpt_damaged(_truncate),
    "ckpt-garbage": _ckpt_damaged(_garbage),
    "ckpt-empty-file": _ckpt_damaged(lambda p: p.write_bytes(b"")),
    "ckpt-malicious-pickle": _ckpt_malicious,
    "ckpt-missing-key": _ckpt_keys(lambda s: s.pop("mask_decoder.iou_token.weight"), "missing"),
    "ckpt-extra-key": _ckpt_keys(lambda s: s.update({"mask_decoder.x": torch.zeros(1)}), "unexp"),
    "ckpt-misshaped-key": _ckpt_keys(
        lambda s: s.update({"mask_decoder.iou_token.weight": torch.zeros(3, 3)}), "misshaped"
    ),
    "export-disk-full": _export_disk_full,
    "export-output-not-writable": _export_not_writable,
    "export-not-a-lightning-checkpoint": _export_plain_state_dict,
    "export-missing-checkpoint": _export_missing_ckpt,
    "evaluate-output-not-writable": _evaluate_not_writable,
    "prediction-nifti-disk-full": _nifti_disk_full,
    "prediction-npz-disk-full": _npz_prediction_disk_full,
    "prediction-onto-its-input": _prediction_onto_input,
    "predictions-inside-the-data-folder": _predictions_inside_data,
    "test-ckpt-path-does-not-exist": _cli(
        [
            "test",
            "--config",
            "{root}/tests/conf/medsam_npy_slices.yaml",
            "--data.init_args.root",
            "{tmp}",
            "--ckpt_path",
            "{tmp}/nowhere.ckpt",
        ],
        "--ckpt_path {tmp}/nowhere.ckpt does not exist",
    ),
    "predict-ckpt-path-corrupt": _ckpt_path_corrupt,
    "verify-data-config-does-not-exist": _cli(
        ["verify-data", "--config", "{tmp}/nowhere.yaml"], "--config {tmp}/nowhere.yaml"
    ),
    "verify-data-root-does-not-exist": _cli(
        [
            "verify-data",
            "--data",
            "{root}/configs/data/npz.yaml",
            "--data.init_args.root",
            "{tmp}/nowhere",
        ],
        "{tmp}/nowhere has 1 error",
    ),
}


@pytest.mark.parametrize("name", list(IO_CASES))
def test_bad_input_is_one_line_naming_the_culprit(name, tiny_state, tmp_path, monkeypatch, capsys):
    outcome, action = IO_CASES[name](tmp_path, tiny_state, monkeypatch)
    before = {path: path.read_bytes() for path in outcome.untouched}
    with pytest.raises(SegfmError) as info:
        action()
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and outcome.culprit in message, message
    assert {path: path.read_bytes() for path in outcome.untouched} == before
    assert not [path for path in outcome.absent if path.exists()]
    assert _temporaries(tmp_path) == []
    if name.startswith(("export", "evaluate", "verify", "test-", "predict-")):  # segfm's main
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-2] == f"segfm: error: {message}" and "--debug" in err[-1]


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["fit", "--config", "{tmp}/nowhere.yaml"], "nowhere.yaml"),
        (["fit", "--config", "{conf}", "--trainer.no_such_option", "1"], "no_such_option"),
        (["fit", "--config", "{conf}", "--model.init_args.no_such_arg", "1"], "no_such_arg"),
        (
            [
                "verify-data",
                "--data",
                "{root}/configs/data/npz.yaml",
                "--data.init_args.bogus",
                "1",
            ],
            "bogus",
        ),
        (["verify-data", "--max_cases", "many"], "max_cases"),
    ],
    ids=[
        "config-missing",
        "unknown-trainer-key",
        "unknown-model-key",
        "unknown-data-key",
        "wrong-type",
    ],
)
def test_bad_command_lines_name_the_key_without_traceback(args, culprit, tmp_path, capsys):
    conf = ROOT / "tests" / "conf" / "medsam_npy_slices.yaml"
    with pytest.raises(SystemExit) as info:
        main([a.format(tmp=tmp_path, root=ROOT, conf=conf) for a in args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err, err


def test_checkpoint_loading_runs_no_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, path)
    with pytest.raises(SegfmError, match=r"refused to load: it holds pickled objects \(posix"):
        main(["export", "--ckpt_path", str(path), "--output", str(tmp_path / "out.pth")])
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_interrupted_converter_resumes_and_skips_finished_cases(tmp_path, monkeypatch):
    from data_tools import pre_ct_mr
    from data_tools.synthetic import make_dataset

    raw = make_dataset(tmp_path / "raw", 3, 0, size_range=(32, 36), slices_range=(6, 7))
    out = tmp_path / "out"
    opts = {"image_size": 16, "min_size_3d": 10, "min_size_2d": 5, "workers": 1, "progress": False}
    real, calls = pre_ct_mr.save_npz, []

    def full_on_second_case(path: Path, **arrays: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, **arrays)

    monkeypatch.setattr(pre_ct_mr, "save_npz", full_on_second_case)
    with pytest.raises(OSError, match="No space left"):
        pre_ct_mr.preprocess(out, nnunet=raw, **opts)
    monkeypatch.undo()
    finished = out / "npz" / "CT_synth_000.npz"
    stamp = finished.stat().st_mtime_ns
    assert sorted(p.name for p in (out / "npz").iterdir()) == ["CT_synth_000.npz"]
    assert _temporaries(out) == []

    summary = pre_ct_mr.preprocess(out, nnunet=raw, **opts)

    assert summary.skipped == ["CT_synth_000"]
    assert summary.written == ["CT_synth_001", "CT_synth_002"]
    assert finished.stat().st_mtime_ns == stamp
    assert NpySliceDataModule(str(out)).verify().errors == []
