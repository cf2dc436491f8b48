"""The on-the-fly 2.5D speed levers (NpzDataModule, slices25d): a volume cache, a chunked order."""

from collections import Counter

import numpy as np
import pytest
import torch

from segfm.data import NpzDataModule
from segfm.data.loaders import EpochShuffleSampler
from segfm.data.volume_chunks import VolumeChunkSampler
from segfm.data.volume_lru import VolumeLRU


def module(root, **kwargs):
    args = {"image_size": 32, "batch_size": 4, "num_workers": 0, "val_fraction": 0}
    dm = NpzDataModule(str(root), mode="slices25d", augment=False, **(args | kwargs))
    dm.setup("fit")
    return dm


def arrays(n):
    return [np.zeros(n, dtype=np.uint8)]


def test_lru_drops_the_least_recently_used_within_the_budget():
    cache, loads = VolumeLRU(30), []

    def get(key, n=10):
        return cache.get(key, lambda: loads.append(key) or arrays(n))

    for key in "abc":
        get(key)
    get("a")  # a is now the most recent: d evicts b
    get("d")
    assert loads == ["a", "b", "c", "d"] and cache.nbytes == 30 and len(cache) == 3
    get("a"), get("c"), get("d")
    assert loads == ["a", "b", "c", "d"] and (cache.hits, cache.misses) == (4, 4)
    get("b")
    assert loads[-1] == "b" and cache.nbytes <= 30
    big = get("e", 31)  # over the whole budget: returned, not kept
    assert big[0].nbytes == 31 and "e" not in cache._items and cache.nbytes <= 30
    with pytest.raises(ValueError, match="max_bytes"):
        VolumeLRU(-1)


def test_cached_samples_equal_uncached_and_each_volume_is_decoded_once(npz_root):
    cached = module(npz_root).datasets["train"]
    plain = module(npz_root, cache_volumes_mb=0).datasets["train"]
    for k in range(len(plain)):
        a, b = cached[k], plain[k]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    volumes = len({item.case.case_id for item in plain.items})
    assert cached.cache.misses == volumes and cached.cache.hits == len(plain) - volumes
    assert plain.cache.misses == len(plain) and len(plain.cache) == 0


def groups_of(sizes):
    start, groups = 0, []
    for n in sizes:
        groups.append(list(range(start, start + n)))
        start += n
    return groups


@pytest.mark.parametrize("chunk", [2, 3, 5])
def test_chunk_order_covers_everything_in_chunks_of_one_volume(chunk):
    sizes = [7, 3, 12, 1, 9]
    groups = groups_of(sizes)
    volume_of = {i: v for v, g in enumerate(groups) for i in g}
    sampler = VolumeChunkSampler(range(sum(sizes)), groups, chunk, seed=3)
    order = sampler.order()
    assert sorted(order) == list(range(sum(sizes)))
    runs = []  # lengths of the stretches of one volume
    for k, i in enumerate(order):
        if k and volume_of[i] == volume_of[order[k - 1]]:
            runs[-1] += 1
        else:
            runs.append(1)
    # every volume's slices come as full chunks plus one remainder (neighbouring chunks of
    # the same volume may touch)
    assert sum(runs) == len(order) and len(runs) <= sum(-(-n // chunk) for n in sizes)
    chunks = Counter(volume_of[i] for i in order[:chunk])
    assert len(chunks) == 1 or sizes[volume_of[order[0]]] < chunk
    again = VolumeChunkSampler(range(sum(sizes)), groups, chunk, seed=3)
    assert again.order() == order  # from seed + epoch alone
    sampler.set_epoch(1)
    assert sampler.order() != order


def test_chunk_one_is_the_plain_shuffle_and_ranks_share_the_epoch():
    groups = groups_of([5, 6, 4])
    plain = EpochShuffleSampler(range(15), seed=7)
    assert VolumeChunkSampler(range(15), groups, 1, seed=7).order() == plain.order()
    ranks = [VolumeChunkSampler(range(15), groups, 4, 7, 2, r).order() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 8
    assert set(ranks[0] + ranks[1]) == set(range(15))
    with pytest.raises(ValueError, match="chunk"):
        VolumeChunkSampler(range(15), groups, 0)
    with pytest.raises(ValueError, match="groups"):
        VolumeChunkSampler(range(16), groups, 2)


def test_module_trains_in_volume_chunks(npz_root):
    dm = module(npz_root, volume_chunk=2, datasets=["CT_Abd"])
    loader = dm.train_dataloader()
    assert isinstance(loader.epoch_sampler, VolumeChunkSampler)
    seen = []
    for batch in loader:
        ids = batch["meta"]
        assert len(ids) == 4
        pairs = [ids[i : i + 2] for i in range(0, 4, 2)]
        assert any(a["case_id"] == b["case_id"] for a, b in pairs)
        seen += [(m["case_id"], m["axis"], m["slice_index"]) for m in ids]
    dataset = dm.datasets["train"]
    assert len(set(seen)) == len(dataset) and len(seen) == len(dataset)
    assert module(npz_root).train_dataloader().epoch_sampler.__class__ is EpochShuffleSampler


@pytest.mark.parametrize("name", ["cache_volumes_mb", "volume_chunk"])
def test_bad_speed_arguments(tmp_path, name):
    with pytest.raises(ValueError, match=name):
        NpzDataModule(str(tmp_path), **{name: -1})
