"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for encoders: shard each layer and the whole model, and gather
the full weights back into an ordinary, unsharded model (for pruning, exports and reports). Plain torch."""

from __future__ import annotations

import torch
from torch import nn

from kp_lightning.core.adapter import EncoderAdapter


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return FSDPModule, fully_shard


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or one of its submodules) was sharded with ``fully_shard``."""
    fsdp_module, _ = _fsdp()
    return any(isinstance(m, fsdp_module) for m in model.modules())


def shard_encoder(model: nn.Module, mesh) -> nn.Module:
    """``fully_shard`` every encoder layer, then the whole model (embeddings, pooler, head), over ``mesh``
    (a 1-D data-parallel device mesh). In place; returns ``model``. A model already sharded is left alone."""
    if is_sharded(model):
        return model
    _, fully_shard = _fsdp()
    for layer in EncoderAdapter(model).encoder_modules():
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: nn.Module, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``model`` on CPU. A collective call: every rank must take part.

    With ``all_ranks=False`` only rank 0 gets the tensors (the others an empty dict), as writers need;
    with ``all_ranks=True`` every rank gets them (to prune the same full model everywhere).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if all_ranks:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().cpu() for k, v in state.items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _plain_class(model: nn.Module) -> type:
    fsdp_module, _ = _fsdp()
    return next(c for c in type(model).__mro__ if not issubclass(c, fsdp_module))


def unsharded_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """An ordinary (unsharded, CPU) copy of the transformers ``model`` holding the full weights ``state``
    (from :func:`full_state_dict`). Buffers (replicated, never sharded) and ``kp_*`` attributes are copied."""
    with torch.device("meta"):
        copy = _plain_class(model)(model.config)
    copy.load_state_dict(state, strict=False, assign=True)
    buffers = dict(model.named_buffers())
    for name, buffer in copy.named_buffers():
        owner, _, leaf = name.rpartition(".")
        module = copy.get_submodule(owner) if owner else copy
        module._buffers[leaf] = buffers[name].detach().cpu().clone()
    if hasattr(copy, "tie_weights"):
        copy.tie_weights()
    missing = [n for n, t in [*copy.named_parameters(), *copy.named_buffers()] if t.is_meta]
    if missing:
        raise RuntimeError(f"unsharded_copy: no values for {missing[:5]}")
    for key, value in vars(model).items():
        if key.startswith("kp_"):
            setattr(copy, key, value)
    copy.train(model.training)
    for param, source in zip(copy.parameters(), model.parameters(), strict=True):
        param.requires_grad_(source.requires_grad)
    return copy


def gathered_model(model: nn.Module, all_ranks: bool = False) -> nn.Module | None:
    """``model`` itself when it is not sharded; else an unsharded copy with the full weights on rank 0 (every
    rank with ``all_ranks=True``) and ``None`` on the other ranks. Collective when sharded."""
    if not is_sharded(model):
        return model
    state = full_state_dict(model, all_ranks=all_ranks)
    if not state:
        return None
    return unsharded_copy(model, state)


def _is_dtensor(tensor: torch.Tensor | None) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def replicated_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of ``module`` that every rank holds in full (not sharded ``DTensor``\\ s): under FSDP2
    these are the ones outside the sharded model, e.g. CoFi's gates and λ's and the layer-distillation transform."""
    return [p for p in module.parameters() if p.requires_grad and not _is_dtensor(p)]


def average_replicated_gradients(params: list[nn.Parameter], group=None) -> None:
    """Average the gradients of ``params`` (replicated on every rank) over the ranks of ``group``, as DDP would.

    FSDP2 averages the gradients of the sharded weights only. A parameter without a gradient on every rank keeps
    none (the optimizer then skips it, as one process would); one with a gradient on some ranks counts zeros for
    the others. A collective call (two all-reduces): every rank passes the same parameters in the same order."""
    import torch.distributed as dist

    if not params or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX, group=group)
    chosen = [p for p, flag in zip(params, present.tolist(), strict=True) if flag]
    if not chosen:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in chosen]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for param, grad in zip(chosen, grads, strict=True):
        param.grad = flat[offset : offset + grad.numel()].view_as(param).to(param.dtype).clone()
        offset += grad.numel()


def clip_mixed_grad_norm_(params: list[nn.Parameter], max_norm: float, group=None) -> torch.Tensor:
    """Clip the total 2-norm of the gradients of ``params`` to ``max_norm``, for sharded (``DTensor``) and
    replicated parameters together (``torch.nn.utils.clip_grad_norm_`` cannot mix them). Returns the total norm
    before clipping; the same scale as one process clipping the full gradients. A collective call."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    local = [g.to_local() if _is_dtensor(g) else g for g in grads]
    device = local[0].device
    sharded = torch.zeros((), dtype=torch.float64, device=device)
    replicated = torch.zeros((), dtype=torch.float64, device=device)
    for grad, tensor in zip(grads, local, strict=True):
        square = tensor.double().pow(2).sum()
        if _is_dtensor(grad):
            sharded += square
        else:
            replicated += square
    if dist.is_initialized():
        dist.all_reduce(sharded, group=group)
    total = (sharded + replicated).sqrt()
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for tensor in local:
        tensor.mul_(scale.to(tensor.dtype))
    return total.float()
