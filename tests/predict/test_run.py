"""effnet.predict.run: a prediction run over files, interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_sigterm_during_predict_leaves_a_valid_json_file_with_what_was_done(odd_images, tiny_checkpoint, tmp_path):
    out = tmp_path / "p.json"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from effnet import infer
        from effnet.cli import main
        real = infer.Classifier.probabilities
        calls = []
        def probabilities(self, batch):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(self, batch)
        infer.Classifier.probabilities = probabilities
        sys.exit(main(["predict", {str(odd_images)!r}, "--checkpoint", {str(tiny_checkpoint)!r}, "--device", "cpu",
                       "--batch-size", "1", "--no-progress", "--out", {str(out)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "interrupted (SIGTERM)" in done.stderr
    entries = json.loads(out.read_text())
    assert 1 <= len(entries) <= 2 and entries[0]["path"].endswith("a.png")
