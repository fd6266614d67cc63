"""Shared by the model tests (V1 and V2)."""

from __future__ import annotations

import torch

import effnet


def assert_checkpointing_keeps_gradients(model: effnet.EfficientNet, x: torch.Tensor) -> None:
    """Gradient checkpointing recomputes activations in backward: the gradients must not change.
    ``model`` must be deterministic in training mode (no dropout, no stochastic depth)."""
    model.train()
    model(x).square().sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for expected, p in zip(reference, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-5)
