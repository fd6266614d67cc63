"""Ours against torchvision and timm on this CPU, with the same weights, in one process.

    python benchmarks/peers_cpu.py [--model efficientnet_b0] [--rounds 5] [--json out.json]
    python benchmarks/peers_cpu.py --model efficientnet_v2_s --resolution 224 --batches 1,8 --train-batch 8

EfficientNetV2-S is compared with torchvision's ``efficientnet_v2_s`` and timm's
``efficientnetv2_s`` (timm's PyTorch definition, symmetric padding like torchvision's).

Each peer is built with random weights and copied into one of our networks through our
converters (effnet.weights.convert); the logits must match before anything is timed. Then:
inference latency at batch 1 and 32 (eager, in the default and the channels_last memory
format) and the throughput of a training step (SGD, fp32). The four networks (ours with
torchvision's weights, torchvision, ours with timm's weights, timm) are timed in turns, round
after round, and compared by medians, so load from other processes hits them alike. Printed
ratios: latency ours/peer (below 1: ours is faster) and training throughput ours/peer (above
1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import effnet  # noqa: E402
from effnet.bench.measure import time_interleaved  # noqa: E402
from effnet.bench.peers import build_timm, build_torchvision, timm_available  # noqa: E402
from effnet.weights.convert import assign_state_dict, convert_state_dict  # noqa: E402

PEERS = ("torchvision", "timm")


def timm_name(name: str) -> str:
    """timm's name for one of our networks: ``efficientnet_v2_s`` is ``efficientnetv2_s`` there."""
    return name.replace("efficientnet_v2_", "efficientnetv2_")


def bn_eps(network: nn.Module) -> float:
    return next(m.eps for m in network.modules() if isinstance(m, nn.BatchNorm2d))


def randomize_batchnorm(network: nn.Module, seed: int, resolution: int) -> None:
    """Random BatchNorm affine terms and running statistics measured on random images, as
    trained weights have: with the fresh ones (mean 0, variance 1, scale 1) the logits shrink
    towards zero and an equality check would prove little, and with random statistics deep
    networks (V2-S's 40 blocks) grow activations to 1e7, where rounding noise decides the logits."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for module in norms:
            size = module.num_features
            module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batch
        network.train()(torch.randn(4, 3, resolution, resolution, generator=generator))
    for module, momentum in zip(norms, momenta, strict=True):
        module.momentum = momentum
    network.eval()


def build_pairs(name: str, resolution: int) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Per peer: (ours carrying the peer's weights, the peer), both with symmetric padding."""
    pairs = {}
    for seed, peer_name in enumerate(PEERS):
        if peer_name == "timm" and not timm_available():
            print("timm is not installed: its column is left out", flush=True)
            continue
        peer = (build_torchvision(name) if peer_name == "torchvision"
                else build_timm(timm_name(name), drop_rate=0.2, drop_path_rate=0.2))
        randomize_batchnorm(peer, seed, resolution)
        ours = effnet.create_model(name, bn_eps=bn_eps(peer))
        assign_state_dict(ours, convert_state_dict(peer.state_dict(), ours.config, layout=peer_name))
        pairs[peer_name] = (ours, peer)
    return pairs


def check_equal(pairs: dict[str, tuple[nn.Module, nn.Module]], resolution: int) -> None:
    images = torch.randn(2, 3, resolution, resolution)
    for peer_name, (ours, peer) in pairs.items():
        with torch.no_grad():
            expected, got = peer.eval()(images), ours.eval()(images)
        difference = (expected - got).abs().max().item()
        scale = expected.abs().max().item()
        print(f"logits ours vs {peer_name}: max |difference| {difference:.2e} (max |logit| {scale:.2e})", flush=True)
        if not (scale > 0 and difference <= 1e-4 * scale):
            raise SystemExit(f"ours and {peer_name} disagree with the same weights: not timing")


def inference_calls(pairs, batch: int, resolution: int, channels_last: bool) -> dict:
    images = torch.randn(batch, 3, resolution, resolution)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    calls = {}
    for peer_name, (ours, peer) in pairs.items():
        for label, network in ((f"ours[{peer_name} weights]", ours), (peer_name, peer)):
            network = network.eval().to(memory_format=torch.channels_last if channels_last
                                        else torch.contiguous_format)

            def call(network=network) -> None:
                with torch.no_grad():
                    network(images)
            calls[label] = call
    return calls


def training_calls(pairs, batch: int, resolution: int) -> dict:
    images = torch.randn(batch, 3, resolution, resolution)
    labels = torch.randint(0, 1000, (batch,))
    calls = {}
    for peer_name, (ours, peer) in pairs.items():
        for label, network in ((f"ours[{peer_name} weights]", ours), (peer_name, peer)):
            network = network.train().to(memory_format=torch.contiguous_format)
            optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.9)

            def step(network=network, optimizer=optimizer) -> None:
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(network(images), labels).backward()
                optimizer.step()
            calls[label] = step
    return calls


def compare(title: str, times: dict[str, list[float]], batch: int, throughput: bool) -> list[dict]:
    medians = {label: statistics.median(seconds) for label, seconds in times.items()}
    found = []
    parts = []
    for peer_name in PEERS:
        if peer_name not in medians:
            continue
        ours, peer = medians[f"ours[{peer_name} weights]"], medians[peer_name]
        if throughput:
            ratio = peer / ours
            parts.append(f"ours {batch / ours:7.1f} img/s vs {peer_name} {batch / peer:7.1f}: "
                         f"throughput ours/{peer_name} {ratio:.3f}")
        else:
            ratio = ours / peer
            parts.append(f"ours {1000 * ours:8.1f} ms vs {peer_name} {1000 * peer:8.1f}: "
                         f"latency ours/{peer_name} {ratio:.3f}")
        found.append({"job": title, "peer": peer_name, "ours_s": ours, "peer_s": peer, "ratio": ratio,
                      "kind": "throughput" if throughput else "latency", "samples": len(times[peer_name])})
    print(f"{title:<36} " + " | ".join(parts), flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_b0",
                        help="efficientnet_b0 ... b7 or efficientnet_v2_s/m/l (default b0)")
    parser.add_argument("--resolution", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--batches", default="1,32", help="inference batch sizes (default 1,32)")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch size (default 32)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of turns (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 holds up better on a busy machine)")
    parser.add_argument("--json", default=None, help="also write the ratios to this JSON file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    resolution = args.resolution or effnet.get_entry(args.model).preprocessing.resolution
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.model} @{resolution}", flush=True)
    pairs = build_pairs(args.model, resolution)
    check_equal(pairs, resolution)
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        calls_per_round = 3 if batch == 1 else 1
        for channels_last in (False, True):
            times = time_interleaved(inference_calls(pairs, batch, resolution, channels_last), args.rounds,
                                     calls_per_round)
            layout = "channels_last" if channels_last else "contiguous"
            results += compare(f"inference batch {batch}, {layout}", times, batch, throughput=False)
    times = time_interleaved(training_calls(pairs, args.train_batch, resolution), args.rounds, 1)
    results += compare(f"training step batch {args.train_batch}", times, args.train_batch, throughput=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "resolution": resolution,
                                               "torch": torch.__version__, "ratios": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
