import numpy as np
import onnx
import pytest
import torch

from effnet.deploy.calibration import calibration_images, find_images, spread
from effnet.deploy.export import export_model
from effnet.deploy.quantize import (
    OrtRecipe,
    Pt2eRecipe,
    QatSettings,
    lower_for_cpu,
    onnx_nodes_in_groups,
    quantize_aware_train,
    quantize_onnx,
    quantize_pt2e,
    save_pt2e,
)
from effnet.deploy.runtime import onnx_runner
from helpers.deploy import RESOLUTION, tiny_model, write_images

SHAPE = (3, RESOLUTION, RESOLUTION)
pytestmark = pytest.mark.cpu_kinds  # int8 kernels saturate without VNNI: the recipes must choose for the CPU


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    return float(10 * np.log10((reference ** 2).sum() / ((actual - reference) ** 2).sum()))


@pytest.fixture(scope="module")
def model():
    return tiny_model("same")


@pytest.fixture(scope="module")
def images(tmp_path_factory, model):
    folder = write_images(tmp_path_factory.mktemp("calib"), per_class=8)
    return calibration_images(folder, model.preprocessing)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    export_model(model, path, "onnx", fold_bn=True)
    return path


def test_calibration_images_are_preprocessed_and_spread_over_classes(tmp_path, model):
    folder = write_images(tmp_path, classes=3, per_class=5)
    images = calibration_images(folder, model.preprocessing, count=6)
    assert images.shape == (6, *SHAPE)
    assert [p.parent.name for p in spread(find_images(folder), 6)] == ["0", "0", "1", "1", "2", "2"]


def test_an_empty_or_missing_calibration_folder_is_refused(tmp_path, model):
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="holds no images"):
        calibration_images(tmp_path, model.preprocessing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        calibration_images(tmp_path / "missing", model.preprocessing)


def test_ort_static_quantization_writes_a_smaller_int8_model_close_to_fp32(tmp_path, fp32_onnx, images):
    out = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", images)
    proto = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) > 10
    assert out.stat().st_size < 0.5 * fp32_onnx.stat().st_size
    batch = images.numpy()
    assert sqnr_db(onnx_runner(fp32_onnx)(batch), onnx_runner(out)(batch)) > 15
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]


def test_layer_groups_kept_in_float_get_no_quantized_weights(tmp_path, fp32_onnx, images):
    se_nodes = onnx_nodes_in_groups(fp32_onnx, ("se",))
    assert se_nodes and all(n in {x.name for x in onnx.load(str(fp32_onnx)).graph.node} for n in se_nodes)
    out = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", images, OrtRecipe(keep_float=("se", "stem")))
    quantized_weights = {n.output[0] for n in onnx.load(str(out)).graph.node
                         if n.op_type == "DequantizeLinear" and ".weight" in n.input[0]}
    assert any("expand.conv" in w for w in quantized_weights)
    assert not any(".se." in w or w.startswith("stem.") for w in quantized_weights)


def test_unknown_recipe_settings_are_refused():
    with pytest.raises(ValueError, match="unknown layer group"):
        OrtRecipe(keep_float=("se", "attention"))
    with pytest.raises(ValueError, match="unknown calibration method"):
        OrtRecipe(calibrate_method="mse")


@pytest.fixture(scope="module")
def converted(model, images):
    return quantize_pt2e(model, images)


def dequantized_weights(graph_module) -> int:
    return sum("dequantize_per_channel" in str(n.target) for n in graph_module.graph.nodes if n.op == "call_function")


def test_pt2e_quantizes_every_conv_close_to_fp32(model, images, converted):
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert dequantized_weights(converted) == layers  # none silently left in float
    with torch.no_grad():
        assert sqnr_db(model(images).numpy(), converted(images).numpy()) > 15


@pytest.mark.slow
def test_pt2e_runs_on_int8_kernels_and_round_trips_as_pt2(tmp_path, images, converted):
    batch = images[:5]
    with torch.no_grad():
        simulated = converted(batch).numpy()
    lowered = lower_for_cpu(converted)
    assert np.abs(lowered(batch.numpy()) - simulated).max() < 0.05 * np.abs(simulated).max()
    np.testing.assert_allclose(lowered(batch[:2].numpy()), lowered(batch.numpy())[:2], rtol=1e-3, atol=1e-3)
    path = save_pt2e(converted, tmp_path / "int8.pt2", SHAPE)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(str(path)).module()(batch), converted(batch))


@pytest.mark.slow
def test_pt2e_result_saved_as_onnx_runs_in_onnx_runtime(tmp_path, images, converted):
    path = save_pt2e(converted, tmp_path / "int8.onnx", SHAPE, {"quantization": "pt2e-ptq"})
    proto = onnx.load(str(path))
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) > 10
    with torch.no_grad():
        simulated = converted(images).numpy()
    assert sqnr_db(simulated, onnx_runner(path)(images.numpy())) > 20


def test_pt2e_keeps_se_in_float_and_refuses_activations_alone(model, images):
    quantized = quantize_pt2e(model, images, Pt2eRecipe(keep_float=("se",)))
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for name, m in model.named_modules()
                 if ".se." not in name)
    assert dequantized_weights(quantized) == layers
    with pytest.raises(ValueError, match="cannot keep them alone in float"):
        Pt2eRecipe(keep_float=("activations",))


@pytest.mark.slow
def test_quantization_aware_training_trains_the_quantized_network(model, images):
    losses = []
    batches = [images[:12], images[12:]]
    trained = quantize_aware_train(model, batches, QatSettings(epochs=2, lr=1e-2),
                                   progress=lambda epoch, step, loss: losses.append((epoch, step, loss)))
    assert [(e, s) for e, s, _ in losses] == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert np.isfinite([loss for *_, loss in losses]).all()
    untrained = quantize_aware_train(model, batches, QatSettings(epochs=2, lr=1e-12))
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert dequantized_weights(trained) == layers
    with torch.no_grad():
        reference, result = model(images).numpy(), trained(images).numpy()
        assert sqnr_db(reference, result) > 15
        assert not np.allclose(result, untrained(images).numpy())  # the weights were trained
