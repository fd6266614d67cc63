"""Shared by the model tests (V1 and V2)."""

from __future__ import annotations

import copy

import torch

import effnet


def saved_bytes(step) -> int:
    """The bytes autograd keeps for backward while ``step()`` runs its forward (unique storages)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def assert_recomputing_keeps_training(model: effnet.EfficientNet, x: torch.Tensor, setup) -> float:
    """Recomputing in backward (``setup(model)`` switches it on) must leave the gradients and the
    BatchNorm running statistics as they are without it (the statistics move once, not twice);
    ``model`` must be deterministic in training mode (no dropout, no stochastic depth). Returns
    the ratio of the bytes saved for backward, recomputing to storing."""
    model.train()
    other = copy.deepcopy(model)
    setup(other)
    results = []
    for net in (model, other):
        loss = []
        results.append(saved_bytes(lambda net=net, loss=loss: loss.append(net(x).square().sum())))
        loss[0].backward()
    for (name, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(model.named_buffers(), other.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    return results[1] / results[0]


def assert_checkpointing_keeps_gradients(model: effnet.EfficientNet, x: torch.Tensor) -> None:
    """Gradient checkpointing recomputes activations in backward: gradients and BatchNorm
    statistics must not change."""
    ratio = assert_recomputing_keeps_training(model, x, lambda net: net.set_grad_checkpointing(True))
    assert ratio < 0.2  # region inputs only
