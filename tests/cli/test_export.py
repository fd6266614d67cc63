import json

import pytest
from safetensors.torch import save_file

from effnet.cli import main
from effnet.deploy.compare import DeploymentRow, format_rows, measure_speeds
from effnet.deploy.runtime import Runner
from effnet.weights.io import model_metadata, save_model
from helpers.deploy import tiny_model, write_images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_model()
    model.describe(class_names=["0", "1", "2"])
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.mark.slow
def test_export_writes_a_verified_file_beside_the_checkpoint(checkpoint, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "pt2", "--fold-bn"]) == 0
    out = capsys.readouterr().out
    assert (checkpoint.parent / "tiny.pt2").is_file()
    assert "pt2, BatchNorm folded" in out and "max|diff|" in out


def test_export_refuses_an_unsupported_format(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(checkpoint), "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_match_its_architecture_is_a_clear_error(tmp_path, capsys):
    b0, lite0 = tiny_model(), tiny_model(name="efficientnet_lite0")
    path = tmp_path / "mixed.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.state_dict().items()}, str(path),
              metadata={"effnet": json.dumps(model_metadata(b0))})
    assert main(["export", "--checkpoint", str(path), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "effnet export: error: cannot deploy" in err and "another architecture" in err
    assert not (tmp_path / "mixed.onnx").exists()


@pytest.mark.slow
def test_quantize_prints_fp32_against_int8_and_writes_the_int8_file(tmp_path, checkpoint, capsys):
    calib, data = write_images(tmp_path / "calib", per_class=4), write_images(tmp_path / "eval", seed=1)
    out = tmp_path / "tiny.int8.onnx"
    assert main(["quantize", "--checkpoint", str(checkpoint), "--calib", str(calib), "--eval", str(data),
                 "--out", str(out), "--no-speed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["format", "size", "MB", "latency", "b1", "ms", "(p10-p90)", "img/s", "b32",
                                "(p10-p90)", "top-1", "%", "agreement", "%", "SQNR", "dB"]
    assert lines[2].startswith("onnx fp32") and lines[2].split()[-2] == "100.00"
    assert lines[3].startswith("onnx int8 QDQ")
    assert out.is_file() and lines[-1] == f"wrote {out}"


def test_quantize_refuses_a_calibration_folder_without_images(tmp_path, checkpoint, capsys):
    (tmp_path / "calib").mkdir()
    data = write_images(tmp_path / "eval")
    assert main(["quantize", "--checkpoint", str(checkpoint), "--calib", str(tmp_path / "calib"),
                 "--eval", str(data), "--out", str(tmp_path / "int8.onnx")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "int8.onnx").exists()


def test_speed_is_measured_and_tabulated():
    runner = Runner("identity", lambda batch: batch.reshape(len(batch), -1)[:, :3])
    speed = measure_speeds({"identity": runner}, (3, 8, 8), throughput_batch=4, max_seconds=0.5)["identity"]
    assert speed.latency.batch_size == 1 and speed.throughput.batch_size == 4
    assert speed.latency.median_ms > 0 and speed.throughput.throughput > 0
    table = format_rows([DeploymentRow("identity", 2_500_000, speed)])
    assert "img/s b4" in table.splitlines()[0] and "2.50" in table.splitlines()[2]


def test_export_arguments_are_checked_before_the_model_is_loaded(tmp_path, capsys, monkeypatch):
    from effnet.cli import export

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(export, "load_deployable", never)
    for tolerance in ("-1", "0", "nan", "inf"):
        assert main(["export", "--checkpoint", "efficientnet_b0", "--format", "onnx", "--tolerance", tolerance,
                     "--out", str(tmp_path / "m.onnx")]) == 2
        assert "tolerance must be a positive number" in capsys.readouterr().err
    assert main(["export", "--checkpoint", "efficientnet_b0", "--format", "onnx", "--opset", "3",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "unsupported ONNX opset 3" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
