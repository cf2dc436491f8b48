"""Data module of SAM-Med3D's class-folder layout (``<class>/<dataset>/imagesTr``)."""

from __future__ import annotations

from segfm.data.datamodules.volumes import Splits, VolumeDataModule
from segfm.data.io.checks import Report
from segfm.data.io.class_folders import find_items
from segfm.data.io.class_folders_checks import check_class_folders_root
from segfm.data.splits import read_split_file, split_cases
from segfm.data.volume_cache import VolumeItem
from segfm.sample import ClassInfo


class ClassFolderDataModule(VolumeDataModule):
    """SAM-Med3D's training layout: ``<root>/<class>/<dataset>/{imagesTr,labelsTr}/<case>``.

    Samples and preprocessing as in :class:`~segfm.data.VolumeDataModule`, with the
    same arguments. Class ids are 1-based indices of the sorted class folder names; each item
    (one binary mask, see :mod:`segfm.data.io.class_folders`) has its mask's foreground set to
    its class id, and ``classes`` names every class. Datasets whose folder name starts with
    ``ct_`` are clamped as CT. Case ids (in ``meta`` and split files) are
    ``<class>/<dataset>/<case>``; test and predict cases are the held-out test split.
    """

    def find_splits(self) -> tuple[Splits, dict[int, ClassInfo]]:
        """The items of each split and the classes of the folder names."""
        names, found = find_items(self.root)
        ids = {name: i for i, name in enumerate(names, start=1)}
        items = {
            f.item_id: VolumeItem(
                f.item_id,
                f.dataset,
                f.image,
                f.label,
                self.value_range(f.dataset.lower().startswith("ct_")),
                label_value=ids[f.class_name],
            )
            for f in found
        }
        if self.split_file is not None:
            split = read_split_file(self.split_file, list(items))
        else:
            split = split_cases(list(items), self.val_fraction, self.test_fraction, self.split_seed)
        splits = {s: [items[i] for i in split[s]] for s in ("train", "val", "test")}
        splits["predict"] = splits["test"]
        classes = {i: ClassInfo(name) for name, i in ids.items()}
        return splits, classes

    def check_files(self, report: Report, max_cases: int | None) -> None:
        """Check every binary mask and its image: pairing, grids, values."""
        check_class_folders_root(report, self.root, max_cases)
