import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_test() -> None:
    """Each test starts from the same seed and with no compiled code or recompile history
    left by an earlier test (which would turn on dynamic shapes)."""
    torch.manual_seed(0)
    torch._dynamo.reset()
