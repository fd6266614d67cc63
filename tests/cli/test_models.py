import pytest

from effnet.cli import main


@pytest.mark.slow
def test_models_table_lists_params_macs_and_resolution(capsys):
    assert main(["models", "--filter", "lite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "params", "GMACs", "resolution"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert sorted(rows) == [f"efficientnet_lite{i}" for i in range(5)]
    assert rows["efficientnet_lite0"] == ["4,652,008", "0.385", "224"]
    assert rows["efficientnet_lite4"] == ["13,006,568", "3.944", "380"]


def test_models_filter_without_match_is_an_error(capsys):
    assert main(["models", "--filter", "resnet"]) == 2
    assert "no model name contains 'resnet'; known models: efficientnet_b0" in capsys.readouterr().err


def test_scale_shows_formula_network_beside_nearest_published(capsys):
    assert main(["scale", "--phi", "1"]) == 0
    out = capsys.readouterr().out
    assert "alpha*beta^2*gamma^2 = 1.920" in out
    formula = next(line for line in out.splitlines() if line.startswith("formula phi=1"))
    assert formula.split()[2:] == ["1.100", "1.200", "256", "9,109,994", "0.860"]
    assert "nearest published: efficientnet_b2" in out


def test_scale_coefficients_are_overridable(capsys):
    assert main(["scale", "--phi", "2", "--alpha", "1.3", "--beta", "1.0", "--gamma", "1.0"]) == 0
    formula = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("formula"))
    assert formula.split()[2:5] == ["1.000", "1.690", "224"]


def test_scale_requires_phi(capsys):
    with pytest.raises(SystemExit):
        main(["scale"])
    assert "--phi" in capsys.readouterr().err
