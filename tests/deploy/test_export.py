import onnx
import pytest
import torch

import effnet
from effnet.deploy.export import ExportVerificationError, export_model, read_artifact_metadata
from effnet.deploy.runtime import load_runner
from helpers.deploy import RESOLUTION, tiny_model

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}


@pytest.fixture(scope="module")
def same_model():
    model = tiny_model("same")
    model.describe(class_names=["cat", "dog", "fox"])
    return model


def eager_logits(model, batch):
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "torchscript", "pt2"])
def test_export_is_verified_and_runs_with_another_batch_size(tmp_path, same_model, format):
    path = tmp_path / f"model{SUFFIX[format]}"
    result = export_model(same_model, path, format, fold_bn=True)
    assert path.is_file() and result.file_bytes == path.stat().st_size
    assert result.verification.passed and result.verification.max_abs_diff <= 1e-4
    assert set(result.verification.batch_sizes) >= {1, 2, 3}
    batch = torch.randn(5, 3, RESOLUTION, RESOLUTION).numpy()
    runner = load_runner(path, format)
    assert abs(runner(batch) - eager_logits(same_model, batch)).max() <= 1e-4
    metadata = read_artifact_metadata(path, format)
    assert metadata["class_names"] == ["cat", "dog", "fox"]
    assert metadata["preprocessing"]["resolution"] == RESOLUTION
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


@pytest.mark.slow
@pytest.mark.parametrize("opset", [17, 20])
def test_onnx_is_written_with_the_chosen_opset_and_a_dynamic_batch(tmp_path, opset):
    path = tmp_path / "model.onnx"
    result = export_model(tiny_model(), path, "onnx", opset=opset)
    proto = onnx.load(str(path))
    assert result.opset == opset
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value


def test_an_export_beyond_tolerance_fails_and_leaves_nothing(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportVerificationError, match=r"max\|diff\|.*nothing was written"):
        export_model(tiny_model(), path, "torchscript", fold_bn=True, tolerance=1e-12)
    assert path.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_unsupported_format_and_opset_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unsupported format 'tflite'; choose one of onnx, torchscript, pt2"):
        export_model(tiny_model(), tmp_path / "model.tflite", "tflite")
    with pytest.raises(ValueError, match="unsupported ONNX opset 9"):
        export_model(tiny_model(), tmp_path / "model.onnx", "onnx", opset=9)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(tiny_model(), tmp_path / "missing" / "model.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_full_b0_exports_to_onnx_within_tolerance(tmp_path):
    model = effnet.create_model("efficientnet_b0").eval()
    result = export_model(model, tmp_path / "b0.onnx", "onnx", fold_bn=True)
    assert result.verification.max_abs_diff <= 1e-4
