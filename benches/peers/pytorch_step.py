#!/usr/bin/env python3
"""PyTorch peer of `wgvae bench step`: the classic VAE's full training step (784-400-20-400-784,
ReLU, BCE-with-logits summed + analytic KL, Adam 1e-3) at the same batch sizes, on data that lives
on the device as 8-bit pixels and is gathered and converted per batch, timed the same way: warm-up
steps, then rounds of back-to-back steps with one synchronisation per round, the median round
reported. Prints one JSON object per (device, mode, batch) with the keys `wgvae bench step --json`
prints (figures PyTorch does not expose are null).

    python3 benches/peers/pytorch_step.py --batch 128,1024,4096 --device cpu --threads 2
    python3 benches/peers/pytorch_step.py --device cuda --compile

CUDA runs with TF32 off (full FP32 matmuls, as wgvae computes). `--compile` adds rows for
`torch.compile` of the forward and loss (skipped, with a note on stderr, where it fails).
Needs torch (`pip install torch`).
"""
import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F


class VAE(nn.Module):
    def __init__(self, d=784, h=400, z=20):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc21 = nn.Linear(h, z)
        self.fc22 = nn.Linear(h, z)
        self.fc3 = nn.Linear(z, h)
        self.fc4 = nn.Linear(h, d)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.fc4(F.relu(self.fc3(z))), mu, logvar


def loss_fn(model, x):
    logits, mu, logvar = model(x)
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1 - logvar)
    return recon, kl


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(dev, batch, seconds, compiled):
    torch.manual_seed(0)
    model = VAE().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_loss = torch.compile(loss_fn) if compiled else loss_fn
    # 4 batches of synthetic 8-bit pixels on the device, as `wgvae bench step` uses.
    n = 4 * batch
    data = (torch.arange(n * 784, device=dev, dtype=torch.int64) * 2654435761 >> 13) % 256
    data = data.to(torch.uint8).reshape(n, 784)
    order = torch.randperm(n, device=dev)
    acc = torch.zeros(2, device=dev)
    i = 0

    def step():
        nonlocal i
        b = i % 4
        i += 1
        x = data[order[b * batch:(b + 1) * batch]].float() / 255.0
        opt.zero_grad(set_to_none=True)
        recon, kl = step_loss(model, x)
        (recon + kl).backward()
        opt.step()
        # The epoch's loss sums stay on the device, as wgvae's do.
        acc[0] += recon.detach()
        acc[1] += kl.detach()

    for _ in range(3):
        step()
    sync(dev)
    t0 = time.perf_counter()
    step()
    sync(dev)
    one = max(time.perf_counter() - t0, 1e-6)
    per_round = min(max(round(0.25 / one), 2), 50)
    rounds, cpu = [], 0.0
    start = time.perf_counter()
    while len(rounds) < 3 or (time.perf_counter() - start < seconds and len(rounds) < 100):
        r0 = time.perf_counter()
        for _ in range(per_round):
            c0 = time.perf_counter()
            step()
            cpu += time.perf_counter() - c0
        sync(dev)
        rounds.append((time.perf_counter() - r0) * 1e3 / per_round)
    rounds.sort()
    ms = statistics.median(rounds)
    steps = len(rounds) * per_round
    return {
        "batch": batch,
        "steps": steps,
        "ms_per_step": ms,
        "ms_min": rounds[0],
        "ms_max": rounds[-1],
        "examples_per_second": batch / (ms * 1e-3),
        "dispatches_per_step": None,
        "submissions_per_step": None,
        # On the CPU the host runs the step itself; on CUDA this is launch overhead.
        "cpu_ms_per_step": cpu * 1e3 / steps,
        "buffers_allocated_per_step": None,
        "bind_groups_created_per_step": None,
        "bytes_uploaded_per_step": 0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="128,1024,4096")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when present, else cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev_name = a.device
    if dev_name == "auto":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(dev_name)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        adapter = torch.cuda.get_device_name(dev)
    else:
        adapter = f"CPU, {torch.get_num_threads()} threads"
    modes = [False, True] if a.compile else [False]
    for compiled in modes:
        for b in [int(x) for x in a.batch.split(",")]:
            try:
                r = bench(dev, b, a.seconds, compiled)
            except Exception as e:  # torch.compile needs a working compiler toolchain
                if not compiled:
                    raise
                print(f"note: torch.compile failed on {dev_name}, skipped: {e}", file=sys.stderr)
                break
            r["runner"] = f"pytorch {torch.__version__} {dev_name} {'compile' if compiled else 'eager'}"
            r["adapter"] = adapter
            r["model"] = "classic"
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
