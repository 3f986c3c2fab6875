// Pictures for the pages: image grids and the loss chart, drawn on canvases.

/** Draws `n` square grayscale images (rows of size*size values in [0, 1]) as a grid. */
export function drawGrid(canvas, values, n, cols, size = 28, scale = 2) {
  const rows = Math.ceil(n / cols);
  const pad = 2;
  canvas.width = cols * (size * scale + pad) + pad;
  canvas.height = rows * (size * scale + pad) + pad;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#dde";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const img = ctx.createImageData(size * scale, size * scale);
  for (let k = 0; k < n; k++) {
    for (let y = 0; y < size * scale; y++) {
      for (let x = 0; x < size * scale; x++) {
        const v = values[k * size * size + Math.floor(y / scale) * size + Math.floor(x / scale)];
        const g = Math.max(0, Math.min(255, Math.round(v * 255)));
        const o = 4 * (y * size * scale + x);
        img.data[o] = img.data[o + 1] = img.data[o + 2] = g;
        img.data[o + 3] = 255;
      }
    }
    const cx = pad + (k % cols) * (size * scale + pad);
    const cy = pad + Math.floor(k / cols) * (size * scale + pad);
    ctx.putImageData(img, cx, cy);
  }
}

/** Training loss (running, per read-back) and test loss (per epoch) against epochs. */
export class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.train = []; // [epoch fraction, loss]
    this.test = [];
    this.draw();
  }
  clear() {
    this.train = [];
    this.test = [];
    this.draw();
  }
  addTrain(x, loss) {
    if (Number.isFinite(loss)) this.train.push([x, loss]);
    this.draw();
  }
  addTest(x, loss) {
    if (Number.isFinite(loss)) this.test.push([x, loss]);
    this.draw();
  }
  draw() {
    const c = this.canvas, ctx = c.getContext("2d");
    const W = c.width, H = c.height, L = 56, R = 10, T = 10, B = 30;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    const pts = this.train.concat(this.test);
    ctx.fillStyle = "#333";
    ctx.font = "12px sans-serif";
    if (pts.length === 0) {
      ctx.fillText("loss (nats per example) appears here while training", L, H / 2);
      return;
    }
    // Robust y range: skip the first read-back, which dwarfs the rest.
    const ys = pts.length > 3 ? pts.slice(1).map((p) => p[1]) : pts.map((p) => p[1]);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
    const x1 = Math.max(1, ...pts.map((p) => p[0]));
    const px = (x) => L + (x / x1) * (W - L - R);
    const py = (y) => T + (1 - (Math.min(Math.max(y, y0), y1) - y0) / (y1 - y0)) * (H - T - B);
    ctx.strokeStyle = "#999";
    ctx.beginPath();
    ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B);
    ctx.stroke();
    ctx.fillText(y1.toFixed(1), 4, T + 10);
    ctx.fillText(y0.toFixed(1), 4, H - B);
    ctx.fillText("epoch " + x1.toFixed(0), W - R - 60, H - 10);
    const line = (p, color) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      p.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
      ctx.stroke();
      ctx.fillStyle = color;
      p.forEach(([x, y]) => ctx.fillRect(px(x) - 2, py(y) - 2, 4, 4));
    };
    line(this.train, "#2a6fdb");
    line(this.test, "#d9534f");
    ctx.fillStyle = "#2a6fdb"; ctx.fillText("train (running)", L + 10, T + 12);
    ctx.fillStyle = "#d9534f"; ctx.fillText("test", L + 110, T + 12);
  }
}
