import torch

from microtrain.data.batches import TensorBatches


def batches(**kw):
    x = torch.arange(10.0).reshape(10, 1)
    return TensorBatches(x, x * 2, **{"batch_size": 3, "shuffle": True, "seed": 1, **kw})


def rows(batch):
    return batch[0].reshape(-1).tolist()


def test_epoch_covers_every_row_once_and_targets_follow():
    loader = batches()
    seen = []
    for x, y in loader:
        assert torch.equal(y, 2 * x)
        seen += rows((x, y))
    assert len(loader) == 4 and sorted(seen) == list(range(10))


def epoch(loader, e):
    loader.sampler.set_epoch(e)  # as Lightning does at the start of every epoch
    return [rows(b) for b in loader]


def test_order_depends_on_seed_and_epoch_only():
    first = [rows(b) for b in batches()]
    second = [rows(b) for b in batches()]
    next_epoch = epoch(batches(), 1)
    other_seed = [rows(b) for b in batches(seed=2)]
    assert first == second and first != next_epoch and first != other_seed


def test_unshuffled_full_batch():
    loader = batches(batch_size=None, shuffle=False)
    assert [rows(b) for b in loader] == [list(range(10))]


def test_state_restores_mid_epoch_and_at_epoch_end():
    reference = batches()
    epoch0 = epoch(reference, 0)
    epoch1 = epoch(reference, 1)

    loader = batches()
    iterator = iter(loader)
    next(iterator), next(iterator)
    restored = batches()
    restored.load_state_dict(loader.state_dict())
    assert [rows(b) for b in restored] == epoch0[2:]

    finished = batches()
    list(finished)
    restored = batches()
    restored.load_state_dict(finished.state_dict())
    assert [rows(b) for b in restored] == []  # Lightning moves on to the next epoch itself
    assert epoch(restored, 1) == epoch1


def test_ranks_get_disjoint_equal_shards():
    shards = [[r for b in batches(rank=k, world_size=3) for r in rows(b)] for k in range(3)]
    assert all(len(s) == 3 for s in shards)
    assert len(set(sum(shards, []))) == 9


def test_calls_of_several_steps_cut_the_same_batches_as_one_at_a_time():
    single = [rows(b) for b in batches()]
    grouped = [[rows(b) for b in call] for call in batches(steps_per_call=3)]
    assert [len(call) for call in grouped] == [3, 1]  # 4 batches an epoch, calls never cross it
    assert sum(grouped, []) == single


def test_data_kept_on_the_host_moves_through_pinned_memory(monkeypatch):
    """Data too large for the device stays in host memory; each call's batches are gathered
    once, pinned and copied without blocking (checked on CPU with pinning recorded)."""
    pinned = []

    def pin(tensor):
        pinned.append(tuple(tensor.shape))
        return tensor

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    copied = [[rows(b) for b in call] for call in batches(steps_per_call=3, device=torch.device("cpu"))]
    assert copied == [[rows(b) for b in call] for call in batches(steps_per_call=3)]
    assert pinned == [(9, 1), (9, 1), (1, 1), (1, 1)]  # x and y of 3 batches, then of the last one
