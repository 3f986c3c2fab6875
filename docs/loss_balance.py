#!/usr/bin/env python3
"""Regenerates the tables of docs/loss-balance.md with wgvae itself.

For each dataset, trains the classic architecture for every beta in {0.1, 0.5, 1, 4} and every
reduction in {sum, mean, normalized}, then evaluates the checkpoint (test negative ELBO terms,
active units, an IWAE estimate of log p(x), and on the sprites the MIG) and writes a traversal
picture. Prints the markdown tables.

    python3 docs/loss_balance.py --wgvae target/release/wgvae --out runs/loss-balance \\
        [--fmnist /usr/share/datasets/fashion-mnist] [--sprite-epochs 20] [--fmnist-epochs 3]
"""
import argparse
import json
import os
import subprocess

BETAS = [0.1, 0.5, 1.0, 4.0]
REDUCTIONS = ["sum", "mean", "normalized"]


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out.stdout


def one(wgvae, out, name, data, epochs, beta, red, iwae_k, iwae_n, mig):
    d = os.path.join(out, f"{name}-beta{beta}-{red}")
    ck = os.path.join(d, "checkpoint.safetensors")
    if not os.path.exists(ck):
        cmd = [wgvae, "train", "--out", d, "--epochs", str(epochs), "--beta", str(beta), "--reduction", red, "--latent", "10"]
        if data:
            cmd += ["--data", data]
        run(cmd)
    ev = [wgvae, "eval", "--checkpoint", ck, "--iwae", str(iwae_k), "--iwae-examples", str(iwae_n)]
    if mig:
        ev.append("--disentanglement")
    e = json.loads(run(ev))
    run([wgvae, "traverse", "--checkpoint", ck, "--out", os.path.join(d, "traversal.png")])
    return e


def table(rows, mig):
    head = "| beta | reduction | KL weight vs ELBO | test recon | test KL | -ELBO | active units | IWAE log p(x) |"
    sep = "|---|---|---|---|---|---|---|---|"
    if mig:
        head += " MIG |"
        sep += "---|"
    lines = [head, sep]
    for (beta, red, w, e) in rows:
        line = (f"| {beta} | {red} | {w:g} | {e['recon']:.2f} | {e['kl']:.2f} | {e['test_loss']:.2f} | "
                f"{e['active_units']}/10 | {e['iwae_log_likelihood']:.2f} |")
        if mig:
            line += f" {e['mig']:.3f} |"
        lines.append(line)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wgvae", default="target/release/wgvae")
    ap.add_argument("--out", default="runs/loss-balance")
    ap.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--sprite-epochs", type=int, default=20)
    ap.add_argument("--fmnist-epochs", type=int, default=3)
    ap.add_argument("--iwae-k", type=int, default=100)
    ap.add_argument("--iwae-examples", type=int, default=500)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sets = [("sprites", None, a.sprite_epochs, 784, True)]
    if a.fmnist and os.path.isdir(a.fmnist):
        sets.append(("fashion-mnist", a.fmnist, a.fmnist_epochs, 784, False))
    for name, data, epochs, d, mig in sets:
        rows = []
        for red in REDUCTIONS:
            for beta in BETAS:
                e = one(a.wgvae, a.out, name, data, epochs, beta, red, a.iwae_k, a.iwae_examples, mig)
                w = {"sum": beta, "mean": beta * d, "normalized": beta * d / 10}[red]
                rows.append((beta, red, w, e))
        print(f"### {name} ({epochs} epochs, latent 10)\n")
        print(table(rows, mig))
        print()


if __name__ == "__main__":
    main()
