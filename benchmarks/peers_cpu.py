"""effnet's default CPU paths against torchvision's and timm's eager models, with the same weights.

    python benchmarks/peers_cpu.py                          # every job below; prints the table and the aims
    python benchmarks/peers_cpu.py --jobs headline,onnxruntime,training
    python benchmarks/peers_cpu.py --jobs variants --models efficientnet_b3,efficientnet_v2_m
    python benchmarks/peers_cpu.py --threads 2 --rounds 7 --json peers.json

Everything runs in one process with ``--threads`` (default 2) torch and ONNX Runtime threads.
Each job's networks are timed in turns, round after round (effnet.bench.measure.time_interleaved),
and compared by medians, so load from other processes hits them alike; the load average is
printed before and after, and the CPU's features beside every figure.

- Ours is timed exactly as a user gets it: ``effnet.Classifier(model, device="cpu").logits(x)``,
  which runs the CPU path chosen for this machine (effnet.cpu_path: measured once, cached; the
  path and how it was chosen are printed). Each peer is built with random weights, random
  BatchNorm affine terms and the running statistics of one batch of noise, copied into ours
  through effnet's converters, and its logits must match our plain network's in float64 within
  1e-6 of the largest before anything is timed (in float32 the rounding of random deep networks
  alone reaches 1e-2); the path's own float32 difference from the plain network is printed
  (``path err``). Peers run eager, in eval mode, under ``torch.inference_mode``, as their own
  documentation runs them.
- ``onnxruntime``: torchvision's B0 exported with ``torch.onnx.export`` in ONNX Runtime fp32 beside
  our default path at 224 px, batch 1 and 8.
- ``training``: one step (forward, cross-entropy, backward, AdamW) at batch 32; ours as effnet's
  trainer runs it (channels_last, fused AdamW with weight-decay groups), the peers as a plain
  PyTorch loop does (AdamW with the same lr and weight decay).

Aims (issue 29), as throughput ratios ours / peer: ``headline`` (B0, Lite0, V2-S at 224 px, batch 1
and 8) >= 1.3; ``variants`` (every other V1, Lite and V2 variant at its native size, batch 1) >= 1.0;
``training`` (B0 at 224 and 128 px, V2-S at 128 px, batch 32) >= 1.1; ``onnxruntime`` is reported
(the moonshot: ours at least as fast as ONNX Runtime, ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import effnet  # noqa: E402
from effnet.bench.measure import time_interleaved  # noqa: E402
from effnet.bench.peers import build_timm, build_torchvision, timm_available  # noqa: E402
from effnet.cpu_path import logits_difference  # noqa: E402
from effnet.deploy.environment import describe_cpu  # noqa: E402
from effnet.table import format_table  # noqa: E402
from effnet.testing import randomize_statistics  # noqa: E402
from effnet.train.config import OptimizerSettings  # noqa: E402
from effnet.train.optim import build_optimizer  # noqa: E402
from effnet.weights.convert import assign_state_dict, convert_state_dict  # noqa: E402

TORCHVISION = {f"efficientnet_b{i}" for i in range(8)} | {"efficientnet_v2_s", "efficientnet_v2_m",
                                                           "efficientnet_v2_l"}
HEADLINE = [(name, 224, batch) for name in ("efficientnet_b0", "efficientnet_lite0", "efficientnet_v2_s")
            for batch in (1, 8)]
VARIANTS = [*(f"efficientnet_b{i}" for i in range(1, 9)), "efficientnet_l2",
            *(f"efficientnet_lite{i}" for i in range(1, 5)),
            *(f"efficientnet_v2_{size}" for size in ("b0", "b1", "b2", "b3", "m", "l", "xl"))]
TRAINING = [("efficientnet_b0", 224, 32), ("efficientnet_b0", 128, 32), ("efficientnet_v2_s", 128, 32)]
AIMS = {"headline": 1.3, "variants": 1.0, "training": 1.1, "onnxruntime": 1.0}
JOBS = tuple(AIMS)
EQUIVALENCE = 1e-6
EQUIVALENCE_PX = 160
LR, WEIGHT_DECAY = 1e-3, 0.05


def timm_name(name: str) -> tuple[str, str]:
    """timm's name for one of our variants and the converter layout of its weights: V2-B0..B3
    exist there only as TensorFlow ports (``tf_efficientnetv2_b0``, 'SAME' padding)."""
    if name.startswith("efficientnet_v2_b"):
        return name.replace("efficientnet_v2_", "tf_efficientnetv2_"), "timm_tf"
    return name.replace("efficientnet_v2_", "efficientnetv2_"), "timm"


def bn_eps(network: nn.Module) -> float:
    return next(m.eps for m in network.modules() if isinstance(m, nn.BatchNorm2d))


def settle_statistics(network: nn.Module, resolution: int, seed: int = 0) -> nn.Module:
    """Every BatchNorm's running statistics from one forward in train mode on random images, so
    that activations stay of order one through the network. With arbitrary statistics a deep
    network's activations grow block after block (V2-S's reach 1e7), float rounding then differs
    chaotically between two correct implementations, and effnet.cpu_path refuses its faster
    paths on rounding, not on a wrong network. At the size the network will run: statistics of
    128 px images left B8's logits at 4.6e3 at 672 px (at 672 px: 0.7)."""
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    images = torch.randn(4, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        network.train()(images)
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    return network.eval()


def build_peers(name: str, resolution: int, seed: int = 0) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Per peer library: (ours carrying the peer's weights, the peer), both in eval mode, their
    statistics settled at ``resolution``."""
    pairs = {}
    for peer_name in ("torchvision", "timm"):
        if peer_name == "torchvision" and name not in TORCHVISION:
            continue
        if peer_name == "timm" and not timm_available():
            print("timm is not installed: its column is left out", flush=True)
            continue
        layout = "torchvision"
        if peer_name == "torchvision":
            peer = build_torchvision(name)
        else:
            timm_model, layout = timm_name(name)
            peer = build_timm(timm_model, drop_rate=0.2, drop_path_rate=0.2)  # as ours and torchvision's
        settle_statistics(randomize_statistics(peer, seed), resolution, seed)
        options = {"padding": "same"} if layout == "timm_tf" else {}
        ours = effnet.create_model(name, bn_eps=bn_eps(peer), **options)
        assign_state_dict(ours, convert_state_dict(peer.state_dict(), ours.config, layout=layout))
        pairs[peer_name] = (ours.eval(), peer.eval())
    return pairs


def check_equivalent(ours: nn.Module, peer: nn.Module, peer_name: str, resolution: int) -> None:
    """Stop unless our plain network and the peer compute the same function: their logits in
    float64 within :data:`EQUIVALENCE` of the largest, at up to :data:`EQUIVALENCE_PX` (float64
    convolutions take PyTorch's slow reference kernels; the converters' tests cover odd sizes).
    In float32, random weights make a deep network's rounding itself reach 2e-2 of the largest
    logit (B8 at 672 px against float64)."""
    size = min(resolution, EQUIVALENCE_PX)
    image = torch.randn(1, 3, size, size, dtype=torch.float64)
    with torch.inference_mode():
        expected = copy.deepcopy(peer).double()(image)
        got = copy.deepcopy(ours).double()(image)
    difference = logits_difference(expected, got)
    if not difference <= EQUIVALENCE:
        raise SystemExit(f"ours and {peer_name} disagree with the same weights in float64 ({difference:.1e} of "
                         "the largest logit): not timing")


def path_error(classifier: effnet.Classifier, resolution: int) -> float:
    """How far the path a classifier runs is from its plain model, in float32: the largest logit
    difference relative to the largest logit (effnet.cpu_path keeps a path within 1e-4 of it on
    its own check images)."""
    images = torch.randn(2, 3, resolution, resolution)
    with torch.inference_mode():
        return logits_difference(classifier.model(images), classifier.logits(images))


@dataclass
class Figure:
    job: str
    model: str
    resolution: int
    batch: int
    peer: str
    ours_ms: float
    peer_ms: float
    path: str
    aim: float
    load_average: float
    path_error: float | None = None

    @property
    def ratio(self) -> float:
        """Throughput ours / peer (above 1: ours is faster)."""
        return self.peer_ms / self.ours_ms

    @property
    def met(self) -> bool:
        return self.ratio >= self.aim


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: 1000 * statistics.median(seconds) for name, seconds in times.items()}


def _classifier(model: nn.Module, path: str | None = None) -> effnet.Classifier:
    """As a user builds it (``path``: pinned, to check other weights on the path already chosen)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights carry no class names
        return effnet.Classifier(model, device="cpu", cpu_path=path)


def inference(job: str, name: str, resolution: int, batch: int, rounds: int) -> list[Figure]:
    """Ours (the default path) and each peer, on the same weights, timed in turns."""
    pairs = build_peers(name, resolution)
    if not pairs:
        return []
    for peer_name, (carrier, peer) in pairs.items():
        check_equivalent(carrier, peer, peer_name, resolution)
    ours = _classifier(next(iter(pairs.values()))[0])
    error = path_error(ours, resolution)
    images = torch.randn(batch, 3, resolution, resolution)

    def forward(network):
        def call() -> None:
            with torch.inference_mode():
                network(images)
        return call

    calls = {"ours": forward(ours.logits), **{peer_name: forward(peer) for peer_name, (_, peer) in pairs.items()}}
    medians = _medians(time_interleaved(calls, rounds, 3 if batch == 1 else 1, warmup=2))
    path = ours.inference_path
    return [Figure(job, name, resolution, batch, peer_name, medians["ours"], medians[peer_name], path, AIMS[job],
                   os.getloadavg()[0], error) for peer_name in pairs]


def onnxruntime_figures(rounds: int, threads: int) -> list[Figure]:
    """Our default B0 beside torchvision's B0 (the same weights) exported to ONNX, in ONNX Runtime fp32."""
    from effnet.deploy.runtime import onnx_runner

    carrier, torchvision_b0 = build_peers("efficientnet_b0", 224)["torchvision"]
    ours = _classifier(carrier)
    figures = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "torchvision_b0.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torchvision_b0, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        runner = onnx_runner(path, threads)
        for batch in (1, 8):
            images = torch.randn(batch, 3, 224, 224)
            array = images.numpy()

            def ours_call(images=images) -> None:
                with torch.inference_mode():
                    ours.logits(images)

            calls = {"ours": ours_call, "onnxruntime": lambda array=array: runner(array)}
            medians = _medians(time_interleaved(calls, rounds, 3 if batch == 1 else 1, warmup=2, pause=0.05))
            figures.append(Figure("onnxruntime", "efficientnet_b0", 224, batch, "onnxruntime fp32 (torchvision B0)",
                                  medians["ours"], medians["onnxruntime"], ours.inference_path, AIMS["onnxruntime"],
                                  os.getloadavg()[0]))
    return figures


def training(name: str, resolution: int, batch: int, rounds: int) -> list[Figure]:
    """One training step of ours (as effnet's trainer runs it) and of each peer, in turns."""
    pairs = build_peers(name, resolution)
    images = torch.randn(batch, 3, resolution, resolution)
    labels = torch.randint(0, 1000, (batch,))

    def step(network: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor):
        def call() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(network(inputs), labels).backward()
            optimizer.step()
        return call

    ours = next(iter(pairs.values()))[0].train().to(memory_format=torch.channels_last)
    settings = OptimizerSettings(name="adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    calls = {"ours": step(ours, build_optimizer(ours, settings, LR),
                          images.contiguous(memory_format=torch.channels_last))}
    for peer_name, (_, peer) in pairs.items():
        peer.train()
        calls[peer_name] = step(peer, torch.optim.AdamW(peer.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), images)
    medians = _medians(time_interleaved(calls, rounds, 1, warmup=2))
    return [Figure("training", name, resolution, batch, peer_name, medians["ours"], medians[peer_name],
                   "channels_last, fused AdamW", AIMS["training"], os.getloadavg()[0]) for peer_name in pairs]


def print_table(figures: list[Figure]) -> None:
    rows = [[f.job, f.model.replace("efficientnet_", ""), f.resolution, f.batch, f.peer, f"{f.ours_ms:.2f}",
             f"{f.peer_ms:.2f}", f"{f.ratio:.2f}", f">= {f.aim:g}", "met" if f.met else "NOT met", f.path,
             "-" if f.path_error is None else f"{f.path_error:.1e}", f"{f.load_average:.1f}"] for f in figures]
    print(format_table(["job", "model", "res", "batch", "peer", "ours ms", "peer ms", "ours/peer img/s", "aim",
                        "", "our path", "path err", "load"], rows), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)} (default all)")
    parser.add_argument("--models", default=None, help="only these variants (comma-separated), in every job")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of turns per job (default 5)")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    jobs = [job.strip() for job in args.jobs.split(",") if job.strip()]
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        parser.error(f"unknown job {', '.join(unknown)}; choose from {', '.join(JOBS)}")

    torch.set_num_threads(args.threads)
    began = time.time()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; {describe_cpu()}; torch {torch.__version__}, {args.threads} threads, "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f}", flush=True)
    figures: list[Figure] = []
    plan = []
    chosen = set(args.models.split(",")) if args.models else None

    def wanted(name: str) -> bool:
        return chosen is None or name in chosen

    if "headline" in jobs:
        plan += [(inference, ("headline", name, resolution, batch, args.rounds)) for name, resolution, batch
                 in HEADLINE if wanted(name)]
    if "onnxruntime" in jobs and wanted("efficientnet_b0"):
        plan.append((onnxruntime_figures, (args.rounds, args.threads)))
    if "variants" in jobs:
        plan += [(inference, ("variants", name, effnet.get_entry(name).preprocessing.resolution, 1, args.rounds))
                 for name in VARIANTS if wanted(name)]
    if "training" in jobs:
        plan += [(training, (name, resolution, batch, args.rounds)) for name, resolution, batch in TRAINING
                 if wanted(name)]
    for function, arguments in plan:
        new = function(*arguments)
        for figure in new:
            print(f"{figure.job:<11} {figure.model:<20} {figure.resolution:>3} px batch {figure.batch:<2} vs "
                  f"{figure.peer:<34} ours {figure.ours_ms:9.2f} ms ({figure.path}), peer {figure.peer_ms:9.2f} ms: "
                  f"{figure.ratio:5.2f}x, aim {figure.aim:g}: {'met' if figure.met else 'NOT met'}", flush=True)
        figures += new
        gc.collect()
    print(f"\n{describe_cpu()}; {args.threads} threads; load average {os.getloadavg()[0]:.1f} at the end; "
          f"{(time.time() - began) / 60:.1f} min\n")
    print_table(figures)
    for job in jobs:
        mine = [f for f in figures if f.job == job]
        if mine:
            missed = [f"{f.model.replace('efficientnet_', '')}@{f.resolution} b{f.batch} vs {f.peer} {f.ratio:.2f}x"
                      for f in mine if not f.met]
            worst = min(f.ratio for f in mine)
            print(f"aim {job} (>= {AIMS[job]:g}x): {'met' if not missed else 'NOT met'} "
                  f"(lowest {worst:.2f}x over {len(mine)} comparisons){': ' + '; '.join(missed) if missed else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": describe_cpu(), "torch": torch.__version__,
                                               "threads": args.threads, "figures": [
                                                   {**asdict(f), "ratio": f.ratio, "met": f.met} for f in figures]},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
