"""Training images/s of our efficientnet_b0 against timm's, in the same loop on the CPU.

    python benchmarks/train_speed.py [--batch 32] [--size 128] [--steps 5] [--rounds 3] [--profile] [--recompute]

Both models get the same random batch, SGD with momentum, cross-entropy, channels_last (or
NCHW with --nchw), the same thread count and B0's regularization: dropout 0.2 and stochastic
depth 0.2, our defaults, passed to timm (whose model defaults to neither; its training recipes
pass them). Each round times ``--steps`` steps of each model after two warm-up steps, the
order alternating between rounds. Prints the median images/s of each and the ratio ours/timm
(aim: >= 1.0). ``--profile`` adds a torch.profiler table of each model's most expensive
operators, to see where the time goes. Other jobs on the CPU make absolute numbers noisy; the
ratio, measured in alternating rounds, is the figure to read. ``--recompute`` adds our model in
the ``recompute`` memory mode (activations recomputed in backward, see effnet.recompute) and
prints its time per step against the default mode's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from effnet import create_model  # noqa: E402
from effnet.table import format_table  # noqa: E402


def build(name: str, num_classes: int) -> nn.Module:
    if name.startswith("ours"):
        model = create_model("efficientnet_b0", num_classes=num_classes)
        if name == "ours-recompute":
            model.set_memory_mode("recompute")
        return model
    import timm

    return timm.create_model("efficientnet_b0", num_classes=num_classes, drop_rate=0.2, drop_path_rate=0.2)


class Job:
    """One model with its optimizer and a fixed batch, stepped in the shared loop."""

    def __init__(self, name: str, images: torch.Tensor, targets: torch.Tensor, memory_format: torch.memory_format,
                 num_classes: int) -> None:
        self.name = name
        self.model = build(name, num_classes).to(memory_format=memory_format).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.images = images.contiguous(memory_format=memory_format)
        self.targets = targets

    def step(self) -> None:
        loss = F.cross_entropy(self.model(self.images), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def images_per_second(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.images.shape[0] / (time.perf_counter() - start)


def profile_table(job: Job, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        job.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="print where each model's time goes")
    parser.add_argument("--recompute", action="store_true", help="also time ours in the recompute memory mode")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory_format = torch.contiguous_format if args.nchw else torch.channels_last
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = torch.randint(0, args.classes, (args.batch,))
    names = ("ours", "timm", "ours-recompute") if args.recompute else ("ours", "timm")
    jobs = [Job(name, images, targets, memory_format, args.classes) for name in names]
    for job in jobs:
        for _ in range(2):
            job.step()
    speeds: dict[str, list[float]] = {job.name: [] for job in jobs}
    for round_index in range(args.rounds):
        for job in jobs if round_index % 2 == 0 else jobs[::-1]:
            speeds[job.name].append(job.images_per_second(args.steps))
    ours, theirs = (statistics.median(speeds[name]) for name in ("ours", "timm"))
    layout = "NCHW" if args.nchw else "channels_last"
    print(f"training efficientnet_b0, batch {args.batch} at {args.size}px, SGD, fp32, {layout}, "
          f"{torch.get_num_threads()} threads, {args.rounds} alternating rounds of {args.steps} steps")
    rows = [[name, f"{statistics.median(values):.1f}", " ".join(f"{v:.1f}" for v in values)]
            for name, values in speeds.items()]
    print(format_table(["model", "img/s (median)", "rounds"], rows))
    print(f"ratio ours/timm: {ours / theirs:.3f} (aim >= 1.0)")
    if args.recompute:
        print(f"step time ratio recompute/save: {ours / statistics.median(speeds['ours-recompute']):.3f}")
    if args.profile:
        for job in jobs:
            print(f"\n{job.name}: one training step, operators by self CPU time")
            print(profile_table(job, 12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
