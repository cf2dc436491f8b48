"""The resumable training loader: per-epoch orders from the seed, and a place kept mid-epoch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler

from segfm.data import NpySliceDataModule
from segfm.data.loaders import EpochShuffleSampler, ResumableDataLoader

N = 10
BATCH = 3  # 4 batches an epoch, the last one short


def _loader(seed: int = 7, **kwargs: object) -> ResumableDataLoader[torch.Tensor]:
    return ResumableDataLoader(list(range(N)), seed=seed, batch_size=BATCH, **kwargs)


def _epoch(loader: DataLoader[torch.Tensor], epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    return [batch.tolist() for batch in loader]


def test_order_depends_on_seed_and_epoch_only():
    loader = _loader()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = _epoch(loader, 0)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is not drawn from
    torch.manual_seed(123)  # nor decides the order
    assert _epoch(_loader(), 0) == first
    assert sorted(i for batch in first for i in batch) == list(range(N))
    assert _epoch(loader, 1) != first
    assert _epoch(_loader(seed=8), 0) != first


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resumes_in_the_middle_of_an_epoch(num_workers):
    kwargs = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    whole = _epoch(_loader(**kwargs), 2)
    loader = _loader(**kwargs)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    seen = [next(it).tolist(), next(it).tolist()]
    state = loader.state_dict()
    assert state == {"epoch": 2, "seed": 7, "batches": 2}

    fresh = _loader(seed=0, **kwargs)  # the seed comes from the state
    fresh.load_state_dict(state)
    it = iter(fresh)
    rest = [next(it).tolist()]
    # a second interruption in the same epoch counts from the epoch's start
    assert fresh.state_dict() == {"epoch": 2, "seed": 7, "batches": 3}
    rest += [batch.tolist() for batch in it]
    assert seen + rest == whole
    # the next pass of the next epoch is whole again
    assert _epoch(fresh, 3) == _epoch(_loader(**kwargs), 3)


def test_state_written_at_an_epoch_end_starts_the_next_epoch_afresh():
    loader = _loader()
    _epoch(loader, 0)
    state = loader.state_dict()
    assert state["batches"] == 4

    fresh = _loader()
    fresh.load_state_dict(state)
    it = iter(fresh)  # Lightning creates the iterator before it sets the epoch
    fresh.sampler.set_epoch(1)
    assert [batch.tolist() for batch in it] == _epoch(_loader(), 1)


def test_state_after_set_epoch_counts_no_batch_of_the_new_epoch():
    loader = _loader()
    _epoch(loader, 0)
    loader.sampler.set_epoch(1)
    assert loader.state_dict() == {"epoch": 1, "seed": 7, "batches": 0}


def test_seed_defaults_to_the_global_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    loader = ResumableDataLoader(list(range(N)), batch_size=BATCH)
    assert isinstance(loader.sampler, EpochShuffleSampler)
    assert loader.sampler.seed == 42


def test_chooses_its_own_sampler():
    with pytest.raises(ValueError, match="shuffle"):
        ResumableDataLoader(list(range(N)), shuffle=True)


def test_data_module_trains_from_a_resumable_loader(npy_slices_root):
    dm = NpySliceDataModule(str(npy_slices_root), batch_size=2, num_workers=0)
    dm.setup("fit")
    assert isinstance(dm.train_dataloader(), ResumableDataLoader)
    val = dm.val_dataloader()
    assert not isinstance(val, ResumableDataLoader)
    assert not hasattr(val, "state_dict")


def test_a_sampler_of_lightnings_keeps_the_place_by_loading():
    def loader() -> ResumableDataLoader[torch.Tensor]:
        # as Lightning rebuilds it for overfit_batches
        return ResumableDataLoader(
            list(range(N)), sampler=SequentialSampler(range(N)), shuffle=False, batch_size=BATCH
        )

    whole = _epoch(loader(), 1)
    assert whole == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    cut = loader()
    cut.sampler.set_epoch(1)
    it = iter(cut)
    seen = [next(it).tolist()]
    fresh = loader()
    fresh.load_state_dict(cut.state_dict())
    assert seen + [batch.tolist() for batch in fresh] == whole
    # a state written at the end of epoch 1 starts epoch 2 afresh
    fresh.load_state_dict(fresh.state_dict())
    it = iter(fresh)
    fresh.sampler.set_epoch(2)
    assert [batch.tolist() for batch in it] == whole
