"""Files written before the consolidation of names and modules still work: a run's checkpoints
resume and evaluate, its ``config.yaml`` (with ``progressive.dropout``) reads back, and a
``.safetensors`` model gives the same logits. See tests/fixtures/before_consolidation/README.md."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet.cli import main
from effnet.evaluation import evaluate_checkpoint
from effnet.train.recipes import read_config
from effnet.weights.io import load_model

OLD = Path(__file__).parent / "fixtures" / "before_consolidation"
INPUT = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)


def test_an_old_safetensors_model_gives_the_same_logits() -> None:
    model = load_model(OLD / "model.safetensors").eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(INPUT).numpy(), np.load(OLD / "run_logits.npy"), rtol=1e-5, atol=1e-6)
    assert model.class_names == ["class_0", "class_1", "class_2"] and model.config.drop_rate == 0.2


def test_an_old_config_reads_with_its_renamed_key() -> None:
    with pytest.warns(DeprecationWarning, match="progressive.dropout"):
        config = read_config(OLD / "config.yaml")
    assert config.progressive.drop_rate == (0.1, 0.3) and config.model.overrides == {"width": 0.1, "depth": 0.1}


@pytest.fixture()
def old_run(tmp_path: Path, small_image_folder: Path) -> tuple[Path, Path]:
    """A copy of the old run, and the images it was trained on (conftest's ``small_image_folder``)."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "config.yaml", "model.safetensors"):
        shutil.copy(OLD / name, run / name)
    return run, small_image_folder


def test_an_old_best_checkpoint_evaluates(old_run: tuple[Path, Path]) -> None:
    run, data = old_run
    metrics, class_names, model = evaluate_checkpoint(run / "best.pt", data)
    assert class_names == ["class_0", "class_1", "class_2"] and metrics.count == 6 and 0 <= metrics.top1 <= 100


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_old_run_resumes_for_another_epoch(old_run: tuple[Path, Path]) -> None:
    run, data = old_run
    code = main(["train", "--resume", str(run), "--epochs", "2", "--set", f"data.path={data}"])
    assert code == 0
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
