// The browser test (web/test.sh drives it in headless Chromium): the kernel checks against the
// f64 reference, then two epochs on the sprites with the CLI's defaults (seed 1), pictures, and the
// checkpoint. Results go into #result and, when served by `serve.py --report-dir`, to the server.
import init, { Session } from "./pkg/wgvae_web.js";
import { drawGrid, LossChart } from "./draw.js";

const $ = (id) => document.getElementById(id);
const status = (s) => { $("status").textContent = s; };

async function put(name, body) {
  try { await fetch("report/" + name, { method: "PUT", body }); } catch (e) { /* not served by the test server */ }
}

async function main() {
  const r = { ok: false, epochs: [], errors: [] };
  const t0 = performance.now();
  try {
    if (!navigator.gpu) throw new Error("navigator.gpu is missing: no WebGPU in this browser");
    await init();
    const s = await Session.open();
    r.adapter = JSON.parse(s.adapter());
    const info = (await navigator.gpu.requestAdapter())?.info;
    r.browser_adapter = info ? { vendor: info.vendor, architecture: info.architecture, description: info.description } : null;
    status("kernel checks");
    r.checks = JSON.parse(await s.checks());
    r.checks_seconds = (performance.now() - t0) / 1e3;
    status("training");
    s.start(1n, 20, 1, 0.001, 128);
    r.initial_test_loss = await s.evaluate();
    const chart = new LossChart($("chart"));
    for (let e = 1; e <= 2; e++) {
      const m = JSON.parse(await s.epoch((b, n, loss) => chart.addTrain(e - 1 + b / n, loss)));
      chart.addTest(e, m.test_loss);
      r.epochs.push(m);
      status(`epoch ${e}: test ${m.test_loss}`);
    }
    drawGrid($("samples"), await s.samples(36, 7), 36, 6);
    drawGrid($("recon"), await s.reconstructions(8), 16, 8);
    await put("checkpoint.safetensors", await s.checkpoint());
    r.ok = r.checks.every((c) => c.ok);
  } catch (e) {
    r.errors.push(String(e && e.message ? e.message : e));
  }
  r.seconds = (performance.now() - t0) / 1e3;
  r.user_agent = navigator.userAgent;
  const text = JSON.stringify(r);
  await put("result.json", text);
  $("result").textContent = text;
  status(r.ok ? "done: all checks passed" : "done: FAILED");
  window.wgvaeDone = true;
}

main();
