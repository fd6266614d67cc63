"""The command line itself: a quick --help and --version, examples in every command's help, one
table of exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from effnet.cli import COMMANDS, build_parser, main
from effnet.errors import ConfigError, EffnetError, ExitCode

PROBE = ("import sys; from effnet.cli import main\n"
         "try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
         "print('TORCH', 'torch' in sys.modules)")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=120, check=True)


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_do_not_import_pytorch(argv: list[str]) -> None:
    result = _run(argv)
    assert result.stdout.strip().endswith("TORCH False")  # importing torch is what made --help take seconds


def test_version_names_effnet_and_the_installed_runtimes() -> None:
    lines = _run(["--version"]).stdout.splitlines()
    assert lines[0].startswith("effnet ") and any(line.startswith("torch ") for line in lines)


def test_top_level_help_lists_every_command_and_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in COMMANDS)
    assert all(f"  {int(code):<4} {code.meaning}" in text for code in ExitCode)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_an_example_in_its_help(name: str) -> None:
    parser = build_parser([name])  # the command's own parser is loaded in full
    command = next(a for a in parser._actions if a.dest == "command").choices[name]
    assert command.format_help().rstrip().endswith(COMMANDS[name].example)
    assert COMMANDS[name].example.startswith(f"effnet {name}")


def test_errors_map_to_the_table() -> None:
    assert EffnetError.exit_code == ExitCode.REFUSED == 2 and ConfigError("x").exit_code == 2
    assert main(["scale", "--phi", "inf"]) == ExitCode.REFUSED
