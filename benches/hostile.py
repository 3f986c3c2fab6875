#!/usr/bin/env python3
"""Runs wgvae on every hostile input of the README's Reliability table and prints the table (exit
status, time, peak RSS from /usr/bin/time, first line of the message). Usage:
    python3 benches/hostile.py target/release/wgvae
"""
import gzip, json, os, shutil, struct, subprocess, sys, tempfile
W = sys.argv[1]  # wgvae binary
T = tempfile.mkdtemp(prefix="wgvae-hostile-")
env = dict(os.environ)
def run(name, args, stdin=None):
    r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", W] + args, capture_output=True, text=True, env=env)
    err = r.stderr.strip().splitlines()
    t = [l for l in err if l.startswith("TIME ")][-1].split()
    msg = [l for l in err if not l.startswith("TIME ")]
    first = next((l for l in msg if l.startswith("error") or l.startswith("warning")), msg[0] if msg else "")
    first = first.replace(T + "/", "")
    print(f"| {name} | {r.returncode} | {float(t[1]):.1f} s | {int(t[2])//1024} MB | {first[:230]} |")
# a good small run to derive checkpoints from
subprocess.run([W, "train", "--epochs", "1", "--hidden", "32", "--latent", "3", "--out", f"{T}/good", "--quiet"], check=True, capture_output=True)
ck = f"{T}/good/checkpoint.safetensors"
def edit(name, f):
    b = open(ck, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n]); body = bytearray(b[8+n:])
    f(h, body)
    hb = json.dumps(h).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
    p = f"{T}/{name}.safetensors"; open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + bytes(body)); return p
def cfg(**kw):
    def f(h, body):
        c = json.loads(h["__metadata__"]["config"]); c.update(kw); h["__metadata__"]["config"] = json.dumps(c)
    return f
def meta(**kw):
    def f(h, body): h["__metadata__"].update(kw)
    return f
def nan(h, body):
    o = h["encoder.0.weight"]["data_offsets"][0]; body[o:o+4] = struct.pack("<f", float("nan"))
print("| input | exit | time | peak RSS | message |"); print("|---|---|---|---|---|")
run("`train --hidden 100000000`", ["train", "--hidden", "100000000", "--out", f"{T}/a"])
run("`train --hidden 10000000`", ["train", "--hidden", "10000000", "--out", f"{T}/b"])
run("`train --latent 100000000000`", ["train", "--latent", "100000000000", "--out", f"{T}/c"])
run("checkpoint config `hidden: [100000000]`", ["eval", "--checkpoint", edit("h1e8", cfg(hidden=[100000000]))])
run("checkpoint config `hidden: [10000000]`", ["sample", "--checkpoint", edit("h1e7", cfg(hidden=[10000000]))])
run("checkpoint config `hidden: [u64::MAX]`", ["eval", "--checkpoint", edit("hmax", cfg(hidden=[18446744073709551615]))])
run("checkpoint config `latent: 1e12`", ["eval", "--checkpoint", edit("lat", cfg(latent=10**12))])
run("checkpoint with a NaN weight", ["sample", "--checkpoint", edit("nan", nan)])
run("checkpoint metadata `seed: \"xyz\"`", ["eval", "--checkpoint", edit("seed", meta(seed="xyz"))])
run("checkpoint metadata `epoch: \"abc\"`", ["train", "--resume", edit("epoch", meta(epoch="abc"))])
run("`interpolate --steps 1000000000`", ["interpolate", "--checkpoint", ck, "--steps", "1000000000"])
run("`manifold --n 100000`", ["manifold", "--checkpoint", ck, "--n", "100000"])
run("`sample --n 1000000000`", ["sample", "--checkpoint", ck, "--n", "1000000000"])
# gzip IDX with an honest 2 GB header
d = f"{T}/big"; os.makedirs(d)
with gzip.open(f"{d}/train-images-idx3-ubyte.gz", "wb", compresslevel=1) as g:
    g.write(struct.pack(">IIII", 0x803, 2560000, 28, 28)); z = bytes(1 << 24)
    for _ in range(128): g.write(z)
with open(f"{d}/t10k-images-idx3-ubyte", "wb") as g:
    g.write(struct.pack(">IIII", 0x803, 1, 28, 28) + bytes(784))
run("gzip IDX whose header honestly says 2 GB", ["train", "--data", d, "--out", f"{T}/d"])
# labels with a stray 255
d = f"{T}/lab"; os.makedirs(d)
for pre, n in (("train", 200), ("t10k", 50)):
    open(f"{d}/{pre}-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, n, 28, 28) + bytes(784 * n))
    labs = bytes([i % 10 for i in range(n)]); labs = labs[:3] + b"\xff" + labs[4:]
    open(f"{d}/{pre}-labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x801, n) + labs)
run("label 255 among 0-9, `--model cvae`", ["train", "--data", d, "--model", "cvae", "--out", f"{T}/e"])
d = f"{T}/fifo"; os.makedirs(d); os.mkfifo(f"{d}/train-images-idx3-ubyte")
run("a FIFO in place of the training images", ["train", "--data", d, "--out", f"{T}/f"])
d = f"{T}/loop"; os.makedirs(d); os.symlink(f"{d}/x", f"{d}/train-images-idx3-ubyte"); os.symlink(f"{d}/train-images-idx3-ubyte", f"{d}/x")
run("a symlink loop in place of the training images", ["train", "--data", d, "--out", f"{T}/g"])
run("`--likelihood gaussian:1e-38`", ["train", "--likelihood", "gaussian:1e-38", "--epochs", "1", "--out", f"{T}/h", "--quiet"])
run("`--lr 1`", ["train", "--lr", "1", "--epochs", "1", "--out", f"{T}/i", "--quiet"])
run("`train --out` into a directory holding a run", ["train", "--out", f"{T}/good"])
run("`--resume` with a different `--lr`", ["train", "--resume", ck, "--lr", "0.01"])
shutil.rmtree(T, ignore_errors=True)
