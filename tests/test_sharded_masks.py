"""MaskedWeights on FSDP2 shards (plain torch, 2 gloo processes): the masks, the hard zeros and the trained weights
equal one process's, for GMP's magnitude selection (uniform and global) and for pattern lock."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kp_lightning.sparsity import MaskedWeights, SparsityPattern

STEPS, GLOBAL_BATCH = 4, 8


def make_model() -> nn.Module:
    """Uneven row counts (23, 7): the shards of 2 ranks differ in size and FSDP2 pads the last one."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 23), nn.Tanh(), nn.Linear(23, 7), nn.Tanh(), nn.Linear(7, 4))


def train(rank: int, world: int, mode: str) -> dict:
    """A few AdamW steps on rank ``rank``'s slice of every global batch; masks made before sharding."""
    model = make_model()
    names = ["0", "2"]
    if mode == "lock":
        with torch.no_grad():
            for name in names:
                weight = model.get_submodule(name).weight
                weight.mul_(torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.6)
        masked = MaskedWeights(model, names)
        masked.lock()
    else:
        masked = MaskedWeights(model, names, SparsityPattern(), mode)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for name in ("0", "2"):
            fully_shard(model.get_submodule(name), mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    data = torch.Generator().manual_seed(2)
    sparsities = []
    for step in range(STEPS):
        x, y = torch.randn(GLOBAL_BATCH, 16, generator=data), torch.randn(GLOBAL_BATCH, 4, generator=data)
        per_rank = GLOBAL_BATCH // world
        x, y = x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]
        if mode != "lock" and step in (0, 2):
            masked.prune_to(0.3 if step == 0 else 0.6)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        masked.mask_gradients()
        optimizer.step()
        optimizer.zero_grad()
        masked.apply()
        sparsities.append(masked.global_sparsity())
    if world > 1:
        from kp_lightning.core.sharding import full_state_dict

        weights = full_state_dict(model, all_ranks=True)
    else:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    from kp_lightning.sparsity.masked_weights import is_sharded_tensor

    sharded = all(is_sharded_tensor(w) for w in masked.weights.values())
    return {"masks": masked.state_dict(), "weights": weights, "sparsity": sparsities,
            "per_weight": masked.sparsity(), "sharded": sharded}  # fmt: skip


def _worker(rank: int, world: int, init_file: str, mode: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(train(rank, world, mode), f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["uniform", "global", "lock"])
def test_two_sharded_processes_keep_the_masks_and_weights_of_one(tmp_path, mode):
    reference = train(0, 1, mode)
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), mode, out), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(f"{out}.rank{rank}")
        assert got["masks"].keys() == reference["masks"].keys() == {"0", "2"}
        for name, mask in reference["masks"].items():
            assert torch.equal(got["masks"][name], mask), (rank, name)  # full, identical on every rank
        for key, value in reference["weights"].items():
            torch.testing.assert_close(got["weights"][key], value, atol=1e-5, rtol=0, msg=key)
        for name, mask in reference["masks"].items():  # the zeros stayed hard through AdamW's weight decay
            assert not got["weights"][f"{name}.weight"][~mask].any()
        assert got["sparsity"] == reference["sparsity"]
        assert got["per_weight"] == reference["per_weight"]
        assert got["sharded"] and not reference["sharded"]
    expected = 0.6 if mode != "lock" else reference["sparsity"][0]
    assert reference["sparsity"][-1] == pytest.approx(expected, abs=0.01) and expected > 0.3
