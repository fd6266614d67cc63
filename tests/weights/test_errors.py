"""effnet.weights.errors: where the checkpoint errors sit among effnet's errors."""

from __future__ import annotations

from effnet.errors import EffnetError
from effnet.weights.errors import CheckpointError, StateDictError


def test_checkpoint_errors_are_effnet_errors():
    assert issubclass(StateDictError, CheckpointError) and issubclass(CheckpointError, EffnetError)
    assert issubclass(CheckpointError, ValueError)
