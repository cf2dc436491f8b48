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


class _Noisy(torch.utils.data.Dataset):
    """Each sample is its index plus a random draw from the global torch generator."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), torch.rand(()).item()])


def _draws(loader: DataLoader[torch.Tensor], epoch: int) -> dict[int, float]:
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    return {int(i): float(x) for batch in loader for i, x in batch.tolist()}


def test_a_samples_random_draws_depend_on_the_sample_not_the_process():
    main = _draws(ResumableDataLoader(_Noisy(), seed=3, batch_size=BATCH), 1)
    assert sorted(main) == list(range(N))
    assert len(set(main.values())) == N  # the draws differ between samples
    # two workers split the samples between them: the draws stay those of each sample
    workers = ResumableDataLoader(_Noisy(), seed=3, batch_size=BATCH, num_workers=2)
    assert _draws(workers, 1) == main
    # the main process's generator is neither drawn from nor reseeded
    torch.manual_seed(5)
    before = torch.get_rng_state()
    again = _draws(ResumableDataLoader(_Noisy(), seed=3, batch_size=BATCH), 1)
    assert again == main
    assert torch.equal(torch.get_rng_state(), before)
    other_epoch = _draws(ResumableDataLoader(_Noisy(), seed=3, batch_size=BATCH), 2)
    assert all(other_epoch[i] != main[i] for i in range(N))


def test_a_resumed_epoch_in_workers_draws_as_the_uninterrupted_one():
    kwargs = {"seed": 3, "batch_size": BATCH, "num_workers": 2, "persistent_workers": True}
    whole = [batch.tolist() for batch in _epoch_loader(ResumableDataLoader(_Noisy(), **kwargs))]
    cut = ResumableDataLoader(_Noisy(), **kwargs)
    cut.sampler.set_epoch(1)
    it = iter(cut)
    seen = [next(it).tolist()]
    fresh = ResumableDataLoader(_Noisy(), **kwargs)
    fresh.load_state_dict(cut.state_dict())
    fresh.sampler.set_epoch(1)
    assert seen + [batch.tolist() for batch in fresh] == whole


def _epoch_loader(loader: ResumableDataLoader[torch.Tensor]) -> ResumableDataLoader[torch.Tensor]:
    loader.sampler.set_epoch(1)
    return loader


@pytest.mark.parametrize("size", [N, N + 1])
def test_ranks_share_an_epoch_without_gaps_and_in_equal_parts(size):
    parts = [EpochShuffleSampler(range(size), seed=4, num_replicas=3, rank=r) for r in range(3)]
    orders = []
    for sampler in parts:
        sampler.set_epoch(2)
        orders.append([index for index, epoch in sampler])
        assert all(epoch == 2 for _, epoch in sampler)
    assert len({len(o) for o in orders}) == 1 == len({len(p) for p in parts})
    assert len(orders[0]) == len(parts[0]) == -(-size // 3)
    assert set().union(*map(set, orders)) == set(range(size))
    whole = EpochShuffleSampler(range(size), seed=4)
    whole.set_epoch(2)
    # the ranks interleave the single-process order
    assert [i for i, _ in whole] == [orders[k % 3][k // 3] for k in range(size)]
    assert isinstance(parts[0], torch.utils.data.DistributedSampler)  # Lightning keeps it
    with pytest.raises(ValueError, match="rank 3 of 3"):
        EpochShuffleSampler(range(size), num_replicas=3, rank=3)
