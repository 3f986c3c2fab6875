#!/usr/bin/env python3
"""The real-browser test: web/dist/test.html in headless Chromium on WebGPU (SwiftShader when
there is no GPU), driven through chromedriver's WebDriver HTTP API (no Python packages needed).

It checks that the adapter is found, that the browser's kernel checks pass against the f64
reference, that two epochs on the sprites lower the test loss, that those losses agree with the
native `wgvae train` run of the same seed within 1e-3 (relative), that the checkpoint the page
produced loads in `wgvae eval`, and that a screenshot of the page after training is not blank.
Run it through web/test.sh, which builds first.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zlib

REL_TOL = 1e-3

# The flags that give headless Chromium a WebGPU adapter without a GPU: Dawn on Vulkan on
# SwiftShader. On a machine with a GPU, drop the last two to test the real one.
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--no-first-run",
    "--window-size=1100,900",
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--use-vulkan=swiftshader",
    "--use-webgpu-adapter=swiftshader",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout} s")


def wd(base, method, path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null").get("value")
    except urllib.error.HTTPError as e:
        raise SystemExit(f"WebDriver {method} {path}: {e.code} {e.read()[:500]!r}")


def png_pixels(data):
    """(width, height, rows of RGBA bytes) of an 8-bit RGB/RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, interlace = body[0:4], body[4:8], body[8], body[9], body[12]
            w, h = int.from_bytes(w, "big"), int.from_bytes(h, "big")
            assert depth == 8 and ctype in (2, 6) and interlace == 0, "unexpected PNG format"
            bpp = 4 if ctype == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, rows, prev, stride = zlib.decompress(idat), [], bytearray(w * bpp), w * bpp
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 4 else bytes(x for i in range(w) for x in (*line[3 * i:3 * i + 3], 255)))
        prev = line
    return w, h, rows


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dist", default="web/dist")
    p.add_argument("--wgvae", default="target/release/wgvae")
    p.add_argument("--out", default="target/browser-test")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--chromium", default=shutil.which("chromium") and "/usr/lib/chromium/chromium")
    a = p.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    fails = []

    def check(ok, what):
        print(("PASS " if ok else "FAIL ") + what, flush=True)
        if not ok:
            fails.append(what)

    # The native run of the same seed, first: it also proves the binary before the browser starts.
    t = time.time()
    native_dir = os.path.join(a.out, "native")
    subprocess.run([a.wgvae, "train", "--epochs", "2", "--seed", "1", "--out", native_dir, "--quiet"], check=True)
    native = [json.loads(line) for line in open(os.path.join(native_dir, "metrics.jsonl")) if '"test_loss"' in line]
    print(f"native run: {time.time() - t:.1f} s", flush=True)

    web_port, wd_port = free_port(), free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    server = subprocess.Popen([sys.executable, os.path.join(here, "serve.py"), "--port", str(web_port), "--dir", a.dist,
                               "--report-dir", a.out], stdout=subprocess.DEVNULL)
    driver = subprocess.Popen(["chromedriver", f"--port={wd_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{wd_port}"
    sid = None
    try:
        wait_port(web_port, server, "web/serve.py")
        wait_port(wd_port, driver, "chromedriver")
        opts = {"args": CHROME_ARGS}
        if a.chromium:
            opts["binary"] = a.chromium
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": opts,
                                                 "goog:loggingPrefs": {"browser": "ALL"}}}}
        sid = wd(base, "POST", "/session", caps)["sessionId"]
        t = time.time()
        wd(base, "POST", f"/session/{sid}/url", {"url": f"http://127.0.0.1:{web_port}/test.html"})
        result = None
        while time.time() - t < a.timeout:
            result = wd(base, "POST", f"/session/{sid}/execute/sync",
                        {"script": "return window.wgvaeDone ? document.getElementById('result').textContent : null",
                         "args": []})
            if result:
                break
            time.sleep(2)
        browser_s = time.time() - t
        shot = base64.b64decode(wd(base, "GET", f"/session/{sid}/screenshot"))
        with open(os.path.join(a.out, "page.png"), "wb") as f:
            f.write(shot)
        # The page users open: one epoch through its own controls, then its pictures and sliders.
        t = time.time()
        wd(base, "POST", f"/session/{sid}/url", {"url": f"http://127.0.0.1:{web_port}/index.html"})
        app = None
        script = """
            const $ = (id) => document.getElementById(id);
            if ($('error').textContent) return {error: $('error').textContent};
            if (!window.wgvaeClicked) {
                if ($('train').disabled) return null;
                $('epochs').value = 1; $('train').click(); window.wgvaeClicked = true; return null;
            }
            if ($('train').disabled || !$('samples').width) return null;
            return {adapter: $('adapter').textContent, status: $('status').textContent,
                    samples: $('samples').width, recon: $('recon').width,
                    sliders: document.querySelectorAll('#sliders input').length,
                    download: !$('download').disabled};
        """
        while time.time() - t < a.timeout and not app:
            app = wd(base, "POST", f"/session/{sid}/execute/sync", {"script": script, "args": []})
            time.sleep(1)
        app_s = time.time() - t
        with open(os.path.join(a.out, "index.png"), "wb") as f:
            f.write(base64.b64decode(wd(base, "GET", f"/session/{sid}/screenshot")))
        # "open checkpoint" with the one the native run wrote: the page samples a CLI model.
        wd(base, "POST", f"/session/{sid}/execute/sync",
           {"script": "document.getElementById('status').textContent = ''; return null", "args": []})
        el = wd(base, "POST", f"/session/{sid}/element", {"using": "css selector", "value": "#open"})
        eid = next(iter(el.values()))
        wd(base, "POST", f"/session/{sid}/element/{eid}/value",
           {"text": os.path.abspath(os.path.join(native_dir, "checkpoint.safetensors"))})
        opened, t = None, time.time()
        while time.time() - t < 120 and not opened:
            opened = wd(base, "POST", f"/session/{sid}/execute/sync", {"script": """
                const $ = (id) => document.getElementById(id);
                if ($('error').textContent) return {error: $('error').textContent};
                return $('status').textContent.startsWith('opened') && $('samples').width
                    ? {status: $('status').textContent, sliders: document.querySelectorAll('#sliders input').length} : null;
            """, "args": []})
            time.sleep(1)
        try:
            logs = wd(base, "POST", f"/session/{sid}/se/log", {"type": "browser"}) or []
        except SystemExit:
            logs = []
        with open(os.path.join(a.out, "console.txt"), "w") as f:
            f.writelines(f"{x.get('level')} {x.get('message')}\n" for x in logs)
    finally:
        if sid:
            try:
                wd(base, "DELETE", f"/session/{sid}", timeout=20)
            except (SystemExit, OSError):
                pass
        driver.kill()
        server.kill()

    if not result:
        raise SystemExit(f"the page did not finish within {a.timeout:.0f} s (console: {a.out}/console.txt)")
    r = json.loads(result)
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(r, f, indent=1)
    print(f"browser: {browser_s:.1f} s in all, kernel checks {r.get('checks_seconds', 0):.1f} s", flush=True)
    check(not r["errors"], "the page ran without errors " + "; ".join(r["errors"]))
    ad = r.get("adapter") or {}
    check(ad.get("backend") == "BrowserWebGpu", f"WebGPU adapter found: {r.get('browser_adapter')} ({ad.get('backend')}), "
          f"matmul {ad.get('matmul_variant')}, features {ad.get('features')}")
    for c in r.get("checks", []):
        check(c["ok"], f"{c['name']}: {c['detail']}")
    ep = r["epochs"]
    if len(ep) == 2:
        check(ep[0]["test_loss"] < r["initial_test_loss"] and ep[1]["test_loss"] < ep[0]["test_loss"],
              f"two epochs lower the test loss: {r['initial_test_loss']:.3f} -> {ep[0]['test_loss']:.3f} -> "
              f"{ep[1]['test_loss']:.3f}")
        # The losses must agree; their recon and KL parts are reported (the KL, a small
        # difference of large terms, drifts most between compilers).
        worst = max(rel(b[k], n[k]) for b, n in zip(ep, native) for k in ("train_loss", "test_loss"))
        parts = max(rel(b[k], n[k]) for b, n in zip(ep, native) for k in ("recon", "kl", "train_recon", "train_kl"))
        check(len(native) == 2 and worst <= REL_TOL,
              f"browser and native losses agree (seed 1, 2 epochs): largest relative difference {worst:.2e} "
              f"(limit {REL_TOL:g}; recon and KL parts: {parts:.2e}); test loss browser {ep[1]['test_loss']:.4f}, "
              f"native {native[-1]['test_loss']:.4f}")
        print(f"examples/s: browser {ep[1]['examples_per_second']:.0f}, native {native[-1]['examples_per_second']:.0f}")
    else:
        check(False, f"two epochs ran in the browser (got {len(ep)})")
    ck = os.path.join(a.out, "checkpoint.safetensors")
    if os.path.exists(ck):
        ev = subprocess.run([a.wgvae, "eval", "--checkpoint", ck], capture_output=True, text=True)
        ok = ev.returncode == 0
        loss = json.loads(ev.stdout).get("test_loss") if ok else None
        check(ok and len(ep) == 2 and loss is not None and rel(loss, ep[-1]["test_loss"]) <= REL_TOL,
              f"the page's checkpoint loads in `wgvae eval`: test loss {loss} natively vs "
              f"{ep[-1]['test_loss'] if ep else None} in the browser {ev.stderr.strip()[:300]}")
    else:
        check(False, "the page handed back its checkpoint")
    app = app or {}
    check(not app.get("error") and app.get("samples", 0) > 0 and app.get("sliders", 0) > 0 and app.get("download"),
          f"index.html trained an epoch through its controls in {app_s:.0f} s: {app}")
    opened = opened or {}
    check(not opened.get("error") and opened.get("sliders", 0) > 0,
          f"index.html opened the native run's checkpoint and drew from it: {opened}")
    w, h, rows = png_pixels(shot)
    colours = {row[i:i + 4] for row in rows[::3] for i in range(0, len(row), 12)}
    inked = sum(1 for row in rows for i in range(0, len(row), 4) if row[i] < 200) / (w * h)
    check(len(colours) >= 16 and inked > 0.02,
          f"the screenshot ({w}x{h}, {a.out}/page.png) is not blank: {len(colours)} colours sampled, "
          f"{100 * inked:.1f}% dark pixels")
    summary = {"browser_examples_per_second": ep[-1]["examples_per_second"] if ep else None,
               "native_examples_per_second": native[-1]["examples_per_second"] if native else None,
               "adapter": ad.get("adapter"), "user_agent": r.get("user_agent"), "seconds": r.get("seconds")}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if fails:
        raise SystemExit(f"{len(fails)} browser check(s) failed (details in {a.out})")
    print("browser test passed", flush=True)


if __name__ == "__main__":
    main()
