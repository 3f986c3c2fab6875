// The page: train in the tab, watch the loss, samples and reconstructions, sweep the latent
// space, and move checkpoints in and out (the same safetensors files `wgvae` reads and writes).
import init, { Session } from "./pkg/wgvae_web.js";
import { drawGrid, LossChart } from "./draw.js";

const $ = (id) => document.getElementById(id);
const chart = new LossChart($("chart"));
let session = null;
let stopRequested = false;
let z = [];

function fail(e) {
  $("error").textContent = String(e && e.message ? e.message : e);
}

async function pictures() {
  const samples = await session.samples(64, 7);
  drawGrid($("samples"), samples, 64, 8);
  const rec = await session.reconstructions(16);
  drawGrid($("recon"), rec, 32, 16);
  await sliders();
}

async function sliders() {
  const dims = Array.from(session.active_dims()).slice(0, 6);
  z = new Array(session.latent()).fill(0);
  const box = $("sliders");
  box.innerHTML = "";
  for (const d of dims) {
    const l = document.createElement("label");
    l.innerHTML = `z[${d}] <input type="range" min="-3" max="3" step="0.1" value="0">`;
    l.querySelector("input").addEventListener("input", async (ev) => {
      z[d] = Number(ev.target.value);
      try { drawGrid($("decoded"), await session.decode(Float32Array.from(z)), 1, 1, 28, 5); } catch (e) { /* busy: next move redraws */ }
    });
    box.appendChild(l);
  }
  drawGrid($("decoded"), await session.decode(Float32Array.from(z)), 1, 1, 28, 5);
}

async function train() {
  const num = (id) => Number($(id).value);
  $("error").textContent = "";
  stopRequested = false;
  $("train").disabled = true;
  $("stop").disabled = false;
  $("download").disabled = true;
  $("open").disabled = true;
  try {
    session.start(BigInt(num("seed")), num("latent"), num("beta"), num("lr"), 128);
    chart.clear();
    for (let e = 1; e <= num("epochs") && !stopRequested; e++) {
      const line = await session.epoch((batch, batches, loss, eps) => {
        chart.addTrain(e - 1 + batch / batches, loss);
        $("status").textContent = `epoch ${e}: batch ${batch}/${batches}, loss ${loss.toFixed(2)}, ${eps.toFixed(0)} examples/s`;
      });
      const m = JSON.parse(line);
      chart.addTest(e, m.test_loss);
      $("status").textContent = `epoch ${m.epoch}: train ${m.train_loss.toFixed(2)}, test ${m.test_loss.toFixed(2)} nats ` +
        `(recon ${m.recon.toFixed(2)} + KL ${m.kl.toFixed(2)}), ${m.active_units} active units, ` +
        `${m.examples_per_second.toFixed(0)} examples/s`;
      $("download").disabled = false;
      await pictures();
    }
  } catch (e) {
    fail(e);
  }
  $("train").disabled = false;
  $("stop").disabled = true;
  $("open").disabled = false;
}

async function download() {
  try {
    const bytes = await session.checkpoint();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    a.download = "checkpoint.safetensors";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) { fail(e); }
}

async function open(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  $("error").textContent = "";
  try {
    const info = JSON.parse(session.open_checkpoint(new Uint8Array(await file.arrayBuffer()), file.name));
    $("download").disabled = true;
    $("status").textContent = `opened ${file.name}: latent ${info.config.latent}, hidden ${JSON.stringify(info.config.hidden)}, ` +
      `epoch ${info.meta.epoch ?? "?"} on ${info.meta.data ?? "?"}`;
    await pictures();
  } catch (e) { fail(e); }
}

async function main() {
  if (!navigator.gpu) {
    $("adapter").textContent = "";
    fail("This browser has no WebGPU (navigator.gpu is missing): see the list above.");
    return;
  }
  try {
    await init();
    session = await Session.open();
    const a = JSON.parse(session.adapter());
    const info = (await navigator.gpu.requestAdapter())?.info;
    const name = info ? [info.vendor, info.architecture, info.description].filter((x) => x).join(" / ") : a.adapter;
    $("adapter").textContent = `adapter: ${name || a.adapter} (${a.backend}, ${a.device_type}), matmul kernel: ${a.matmul_variant}, ` +
      `features: ${a.features.join(", ") || "none"}`;
  } catch (e) {
    fail(e);
    return;
  }
  $("train").disabled = false;
  $("open").disabled = false;
  $("train").onclick = train;
  $("stop").onclick = () => { stopRequested = true; $("stop").disabled = true; };
  $("download").onclick = download;
  $("open").onchange = open;
}

main();
