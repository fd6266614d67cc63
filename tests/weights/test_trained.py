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


@pytest.mark.parametrize("name", ["model.pte", "model.tflite"])
def test_an_edge_file_given_as_a_checkpoint_is_named_for_what_it_is(tmp_path, name) -> None:
    exported = tmp_path / name
    exported.write_bytes(b"\x1c\x00\x00\x00TFL3 or ET12, not a pickle")
    with pytest.raises(ValueError, match=r"exported for a device, not a checkpoint: pass the checkpoint") as error:
        read_training_checkpoint(exported)
    assert "\n" not in str(error.value)
