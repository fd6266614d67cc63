"""``effnet models``: the published variants with their size and cost."""

from __future__ import annotations

import argparse

from ..bench.measure import summarize
from ..errors import ConfigError
from ..registry import list_models
from ..table import format_table
from . import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "models")
    parser.add_argument("--filter", default=None, help="only names containing this text (e.g. lite)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list_models(args.filter)
    if not names:
        raise ConfigError(f"no model name contains {args.filter!r}; known models: {', '.join(list_models())}")
    rows = []
    for name in names:
        s = summarize(name)
        rows.append([s.name, f"{s.params:,}", f"{s.macs / 1e9:.3f}", s.resolution])
    print(format_table(["model", "params", "GMACs", "resolution"], rows))
    return 0
