"""``effnet scale --phi X``: what compound scaling gives at phi, beside the nearest published variant."""

from __future__ import annotations

import argparse

from ..bench.measure import summarize
from ..registry import entry_for_phi
from ..scaling import CompoundScaling
from ..table import format_table
from ..variants import nearest_published
from . import add_command, numbers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "scale")
    parser.add_argument("--phi", type=numbers.number, required=True, help="compound coefficient (any real number)")
    parser.add_argument("--alpha", type=numbers.number, default=1.2, help="depth base (default 1.2)")
    parser.add_argument("--beta", type=numbers.number, default=1.1, help="width base (default 1.1)")
    parser.add_argument("--gamma", type=numbers.number, default=1.15, help="resolution base (default 1.15)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    scaling = CompoundScaling(args.alpha, args.beta, args.gamma)
    entry = entry_for_phi(args.phi, scaling)
    config, resolution = entry.config, entry.preprocessing.resolution
    formula = summarize(config, resolution=resolution)
    nearest = nearest_published(config.width, config.depth, resolution)
    published = summarize(nearest.name)
    print(f"alpha={scaling.alpha} beta={scaling.beta} gamma={scaling.gamma}: "
          f"alpha*beta^2*gamma^2 = {scaling.flops_base:.3f}; "
          f"predicted FLOPs x{scaling.flops_growth(args.phi):.2f} of B0")
    rows = [[f"formula phi={args.phi:g}", f"{config.width:.3f}", f"{config.depth:.3f}", resolution,
             f"{formula.params:,}", f"{formula.macs / 1e9:.3f}"],
            [f"nearest published: {nearest.name}", f"{nearest.width:.3f}", f"{nearest.depth:.3f}",
             nearest.resolution, f"{published.params:,}", f"{published.macs / 1e9:.3f}"]]
    print(format_table(["network", "width", "depth", "resolution", "params", "GMACs"], rows))
    return 0
