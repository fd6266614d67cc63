"""Reading trained models back: errors that say what to do."""

from __future__ import annotations

import pytest
import torch

from effnet.weights.trained import read_training_checkpoint


def test_unreadable_checkpoints_get_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_training_checkpoint(tmp_path / "nothing.pt")
    truncated = tmp_path / "last.pt"
    truncated.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="truncated or corrupt.*best.pt may still be good"):
        read_training_checkpoint(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not an effnet training checkpoint"):
        read_training_checkpoint(other)
