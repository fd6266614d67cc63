"""``effnet bench``'s arguments."""

from __future__ import annotations

import pytest

from effnet.cli import main


@pytest.mark.parametrize(("argv", "message"), [
    (["--models", ""], "argument --models: expected comma-separated names, got '' (nothing to measure)"),
    (["--models", " , "], "nothing to measure"),
    (["--batch", "0"], "batch sizes must be positive integers"),
    (["--batch", ""], "batch sizes must be positive integers"),
])
def test_bench_refuses_an_empty_model_list_or_batch(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        main(["bench", *argv])
    assert exited.value.code == 2 and message in capsys.readouterr().err
