"""``effnet predict --engine ray`` on a real local Ray instance of 2 CPUs: the same predictions as
``effnet predict``, bad files with their error, SIGTERM then --resume, an actor killed mid-run, a
shipped folder and a CSV list as inputs, and what cannot run refused at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from effnet.predict.ray_engine import predict_on_ray  # noqa: E402
from effnet.predict.ray_plan import CannotPlaceError  # noqa: E402
from helpers.ray import (  # noqa: E402
    ACTOR_TITLE,
    assert_matches_effnet_predict,
    kill,
    output_records,
    processes_titled,
    ray_environment,
    shared_inputs,
    short_temp_dir,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the module; yields its address (for the command line)."""
    temp = short_temp_dir()
    with ray_environment():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 2**20, logging_level="warning", _temp_dir=temp)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def _effnet_predict(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "effnet", "predict", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, EFFNET_DEBUG="1", **env))


@pytest.mark.timeout(900)
def test_sigterm_leaves_whole_parts_and_resume_completes_them_as_effnet_predict(local_ray, inputs, tmp_path):
    out = tmp_path / "out"
    command = [inputs["val"], inputs["bad"], "--checkpoint", inputs["checkpoint"], "--engine", "ray",
               "--out", str(out), "--batch-size", "8", "--rows-per-part", "16", "--no-progress"]
    first = _effnet_predict(*command, "--ray-address", local_ray)
    wait_for(lambda: any(out.glob("part-*")) or first.poll() is not None, 600, "the first part")
    first.send_signal(signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "interrupted (SIGTERM)" in stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == []  # no marker, no temp
    before = {part.name: part.read_bytes() for part in out.glob("part-*")}
    done = output_records(out)
    assert 16 <= len(done) < 1003 and len({r["path"] for r in done}) == len(done)

    bad_left = [r for r in inputs["reference"].values() if r["error"] and r["path"] not in {d["path"] for d in done}]

    # No --ray-address: a Ray of its own on this machine's cores, which an address left in the
    # environment (nothing listens there) must not capture.
    second = _effnet_predict(*command, "--resume", RAY_ADDRESS="127.0.0.1:9")
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == (1 if bad_left else 0), stderr  # 1: done, but some inputs failed
    assert f"(1 node(s), {len(os.sched_getaffinity(0))} CPUs)" in stderr
    assert f"{1003 - len(done)} prediction(s) written ({len(bad_left)} failed)" in stdout
    assert f"; {len(done)} already in the output to {out}" in stdout
    for record in bad_left:
        assert f"{record['path']}: {record['error']}" in stderr
    assert {part.name: part.read_bytes() for part in out.glob("part-*") if part.name in before} == before
    assert json.loads((out / "_SUCCESS").read_text())["written"] == 1003 - len(done)
    assert_matches_effnet_predict(output_records(out), inputs["reference"])


def _ship_folder(checkpoint: str, folder: Path) -> Path:
    """A folder as ``effnet ship`` writes it for onnxruntime (the files a shipped model runs from)."""
    from effnet.deploy.export import export_model
    from effnet.weights.io import load_model

    model = load_model(checkpoint)
    folder.mkdir()
    export_model(model, folder / "model.onnx", "onnx", tolerance=1e-3)
    (folder / "manifest.json").write_text(json.dumps({"runtime": "onnxruntime", "model_file": "model.onnx",
                                                      "model_name": "shipped_b0"}))
    (folder / "labels.json").write_text(json.dumps(list(model.description.class_names)))
    (folder / "preprocessing.json").write_text(json.dumps(model.preprocessing.to_dict()))
    return folder


@pytest.mark.timeout(600)
def test_an_actor_killed_mid_run_is_replaced_and_every_input_is_written_once(local_ray, inputs, tmp_path):
    images = sorted(Path(inputs["val"]).rglob("*.png"))[:300]
    listed = tmp_path / "inputs.csv"
    rows = [str(p) for p in images[1:]] + [images[0].as_uri(), str(tmp_path / "missing.png")]
    listed.write_text("label,file\n" + "".join(f"x,{row}\n" for row in rows))
    shipped = _ship_folder(inputs["checkpoint"], tmp_path / "ship")
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_an_actor() -> None:
        wait_for(lambda: any(out.glob("part-*")), 300, "the first part")
        wait_for(lambda: processes_titled(ACTOR_TITLE), 60, "an actor")
        killed.append(processes_titled(ACTOR_TITLE)[0])
        kill(killed[0])

    killer = threading.Thread(target=kill_an_actor, daemon=True)
    killer.start()
    summary = predict_on_ray([listed], out, checkpoint=shipped, actors=2, batch_size=8, rows_per_part=16,
                             path_column="file", progress=False)
    killer.join(timeout=1)
    assert killed and killed[0] not in processes_titled(ACTOR_TITLE)
    assert (summary.written, summary.failed, summary.duplicates_dropped) == (301, 1, 0)
    by_path = {row["path"]: row for row in output_records(out)}
    assert sorted(by_path) == sorted(rows)
    assert by_path[str(tmp_path / "missing.png")]["error"] == "file not found"
    reference = {path: inputs["reference"][path] for path in map(str, images)}
    by_path[str(images[0])] = by_path.pop(images[0].as_uri()) | {"path": str(images[0])}
    del by_path[str(tmp_path / "missing.png")]
    assert_matches_effnet_predict(list(by_path.values()), reference, model="shipped_b0")


@pytest.mark.timeout(120)
def test_what_the_cluster_cannot_run_is_refused_at_once(local_ray, inputs, tmp_path):
    options = {"checkpoint": inputs["checkpoint"], "progress": False}
    with pytest.raises(CannotPlaceError, match="use --actors 6 or fewer"):
        predict_on_ray([inputs["bad"]], tmp_path / "a", actors=7, **options)
    with pytest.raises(CannotPlaceError, match="--gpus-per-actor 1 needs a node with that many GPUs"):
        predict_on_ray([inputs["bad"]], tmp_path / "b", gpus_per_actor=1, **options)
    holder = ray.remote(num_cpus=1)(type("Holder", (), {})).remote()  # other work holding a CPU
    ray.get(holder.__ray_ready__.remote())
    try:
        with pytest.raises(CannotPlaceError, match="has 1 of 2 CPUs free"):
            predict_on_ray([inputs["bad"]], tmp_path / "c", **options)
    finally:
        ray.kill(holder)
