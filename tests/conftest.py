import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _plain_cpu_path() -> None:
    """Classifiers on the CPU run the plain model unless a test says otherwise: choosing the CPU
    path measures each architecture (seconds) and caches the answer in the user's cache folder.
    tests/test_cpu_path.py tests the choice itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EFFNET_CPU_PATH", "eager")
        yield


@pytest.fixture(autouse=True)
def _isolated_test() -> None:
    """Each test starts from the same seed and with no compiled code or recompile history
    left by an earlier test (which would turn on dynamic shapes)."""
    torch.manual_seed(0)
    torch._dynamo.reset()
