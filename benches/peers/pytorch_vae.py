#!/usr/bin/env python3
"""PyTorch peer of `wgvae train`: the same data, architecture, loss, optimizer and batch, so the
test negative ELBO and the speed of both can be compared on the same machine.

Classic VAE (Kingma & Welling; PyTorch's examples/vae): 784-400-20-400-784, ReLU, Bernoulli
likelihood on [0,1] pixels (BCE summed over pixels) + analytic KL, Adam(lr=1e-3), batch 128,
reshuffled every epoch, the last partial batch kept. The test loss uses one sampled z per
example, as the PyTorch example does. Prints one JSON object per epoch in wgvae's metrics.jsonl
form (nats per example). `--model conv` is `wgvae train --preset conv` (issue 11's network, with
the module names wgvae's checkpoints use).

    python3 benches/peers/pytorch_vae.py --data /usr/share/datasets/fashion-mnist --epochs 10
    python3 benches/peers/pytorch_vae.py --model conv --epochs 5

`--load CHECKPOINT` instead loads a wgvae checkpoint into the module with
`load_state_dict(strict=True)` (its model tensors: Adam's moments aside) and prints the test loss.

Needs torch and numpy (`pip install torch numpy`).
"""
import argparse
import gzip
import json
import os
import struct
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows * cols)
    raise ValueError(f"{path}: not an IDX image file")


def find(d, name):
    for cand in (name, name + ".gz"):
        p = os.path.join(d, cand)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(os.path.join(d, name))


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


class ConvVAE(nn.Module):
    """wgvae's `--preset conv`: the names are those of wgvae's checkpoints."""

    def __init__(self, z=20):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.fc_mu = nn.Linear(64 * 7 * 7, z)
        self.fc_logvar = nn.Linear(64 * 7 * 7, z)
        self.decoder_input = nn.Linear(z, 32 * 7 * 7)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32, 64, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 3, stride=1, padding=1))

    def forward(self, x):
        h = self.encoder(x.view(-1, 1, 28, 28))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        d = F.relu(self.decoder_input(z)).view(-1, 32, 7, 7)
        return self.decoder(d).view(x.shape[0], -1), mu, logvar


def read_safetensors(path):
    """The tensors of a safetensors file (an 8-byte header length, a JSON header, raw data)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{name}: {t['dtype']}"
        b, e = t["data_offsets"]
        arr = np.frombuffer(data[8 + n + b:8 + n + e], dtype="<f4").reshape(t["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def evaluate(model, test):
    er, ek = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, test.shape[0], 1000):
            x = test[i : i + 1000]
            logits, mu, logvar = model(x)
            r, k = loss_terms(logits, x, mu, logvar)
            er += r.item()
            ek += k.item()
    return er / test.shape[0], ek / test.shape[0]


def loss_terms(logits, x, mu, logvar):
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1 - logvar)
    return recon, kl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=["classic", "conv"], default="classic")
    ap.add_argument("--load", help="a wgvae checkpoint to load (strict) and evaluate instead of training")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    train = torch.from_numpy(read_idx(find(a.data, "train-images-idx3-ubyte")).astype(np.float32) / 255.0).to(dev)
    test = torch.from_numpy(read_idx(find(a.data, "t10k-images-idx3-ubyte")).astype(np.float32) / 255.0).to(dev)
    model = (ConvVAE() if a.model == "conv" else VAE(train.shape[1])).to(dev)
    if a.load:
        sd = {k: v for k, v in read_safetensors(a.load).items() if not k.startswith("optimizer.")}
        model.load_state_dict(sd, strict=True)
        model.eval()
        r, k = evaluate(model, test)
        print(json.dumps({"checkpoint": a.load, "strict": True, "tensors": len(sd),
                          "test_loss": r + k, "recon": r, "kl": k}), flush=True)
        return
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    n = train.shape[0]
    for epoch in range(1, a.epochs + 1):
        model.train()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev)
        tr, tk = 0.0, 0.0
        for i in range(0, n, a.batch):
            x = train[perm[i : i + a.batch]]
            opt.zero_grad()
            logits, mu, logvar = model(x)
            recon, kl = loss_terms(logits, x, mu, logvar)
            (recon + kl).backward()
            opt.step()
            tr += recon.item()
            tk += kl.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        model.eval()
        er, ek = evaluate(model, test)
        print(json.dumps({
            "peer": f"pytorch {torch.__version__} {dev.type} threads={torch.get_num_threads()} model={a.model}",
            "epoch": epoch, "train_loss": (tr + tk) / n, "train_recon": tr / n, "train_kl": tk / n,
            "test_loss": er + ek, "recon": er, "kl": ek,
            "epoch_seconds": secs, "examples_per_second": n / secs,
        }), flush=True)


if __name__ == "__main__":
    main()
