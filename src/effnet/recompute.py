"""Recomputing activations in backward instead of storing them: training memory for compute.

Each region (the stem, every block, the head) runs under non-reentrant
:func:`torch.utils.checkpoint.checkpoint`, in one of two ways:

- ``selective`` (the model's ``recompute`` memory mode): every convolution's output is kept,
  and BatchNorm-apply, activations, the SE squeeze and gate, stochastic depth and the residual
  add are recomputed from them in backward (selective activation checkpointing). The
  convolutions, the expensive part, never run twice. For B0 this keeps about a third of the
  bytes a plain training step saves at 224 px (0.35x, fp32 or bf16), a quarter at 64 px
  (``tests/test_model.py`` holds that figure); on the CPU a step takes about 1.3x as long.
- full (gradient checkpointing): only each region's input is kept; the whole region runs
  again in backward.

BatchNorm in training mode updates its running statistics as it runs, so a recompute would
update them twice: during a recompute, the region's BatchNorm layers update scratch copies
instead, and the statistics move once per step as without recomputing. Under
``torch.compile`` the compiler plans the recomputation itself (the policy tells it what to
keep) and applies the statistics update once, in the forward graph. That holds for the
backends that trace the backward through AOTAutograd (``inductor``, ``aot_eager``); the
debugging backend ``eager`` runs each region through ``checkpoint`` with the BatchNorm
statistics as inputs that the region modifies, which ``checkpoint`` refuses: both ways stop
there with a :class:`~effnet.errors.ConfigError` that says so. Under the compiler both pass a
policy (full checkpointing one that recomputes everything, what ``checkpoint`` uses when given
none), since Dynamo cannot take ``noop_context_fn`` as a ``context_fn``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from .errors import ConfigError

_Context = contextlib.AbstractContextManager
MEMORY_MODES = ("save", "recompute")
"""``save``: autograd keeps what it needs; ``recompute``: keep convolution outputs only."""


def _keep_convolutions(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    """The selective policy: keep convolution outputs, recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if op is torch.ops.aten.convolution.default \
        else CheckpointPolicy.PREFER_RECOMPUTE


def _recompute_all(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    """Full checkpointing as a policy: recompute everything (what ``checkpoint`` does under
    ``torch.compile`` when given no policy)."""
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def _scratch_running_stats(region: nn.Module) -> Iterator[None]:
    """Point the region's BatchNorm statistics at copies for the duration (same ops, same
    saved tensors as the forward, but the real statistics are left alone)."""
    norms = [m for m in region.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    kept = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in norms]
    for norm in norms:
        norm.running_mean = norm.running_mean.clone()
        norm.running_var = norm.running_var.clone()
        norm.num_batches_tracked = norm.num_batches_tracked.clone()
    try:
        yield
    finally:
        for norm, (mean, var, count) in zip(norms, kept, strict=True):
            norm.running_mean, norm.running_var, norm.num_batches_tracked = mean, var, count


@contextlib.contextmanager
def _stacked(*contexts: _Context) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def _eager_contexts(region: nn.Module, selective: bool) -> tuple[_Context, _Context]:
    forward, recompute = (create_selective_checkpoint_contexts(_keep_convolutions) if selective
                          else (contextlib.nullcontext(), contextlib.nullcontext()))
    # The scratch statistics go in first, so that their copies stay outside the SAC bookkeeping.
    return forward, _stacked(_scratch_running_stats(region), recompute)


def _traced_contexts(policy: Callable[..., CheckpointPolicy]) -> tuple[_Context, _Context]:
    """The contexts under ``torch.compile``, where AOTAutograd calls this while tracing; a
    backend that runs the region eagerly instead (``eager``) calls it at run time."""
    if not torch.compiler.is_compiling():
        raise ConfigError(
            "recomputing activations (the recompute memory mode, or gradient checkpointing) does not run "
            "under torch.compile(backend='eager'): that backend runs each recomputed region with its "
            "BatchNorm statistics as inputs the region updates in place, which torch.utils.checkpoint "
            "refuses. Compile with backend='inductor' or 'aot_eager', or train with set_memory_mode('save') "
            "(run.activation_memory=save) and without gradient checkpointing.")
    return create_selective_checkpoint_contexts(policy)


def run_recomputed(region: nn.Module, x: torch.Tensor, selective: bool) -> torch.Tensor:
    """``region(x)``, keeping for backward only its input and, if ``selective``, its
    convolution outputs; the rest is recomputed in backward (see the module docstring)."""
    if torch.compiler.is_compiling():
        context_fn = partial(_traced_contexts, _keep_convolutions if selective else _recompute_all)
    else:
        context_fn = partial(_eager_contexts, region, selective)
    return checkpoint(region, x, use_reentrant=False, context_fn=context_fn, respect_saved_tensors_hooks=True)
