// report.ts: the HTML training report written at the end of `pretrain` (report.html in the run
// folder): one inline SVG line chart per curve (loss, alignment, entropy surrogate, width tau, lr,
// EMA momentum, kNN top-1 per epoch) and the run's summary and configuration. No scripts, no external
// assets: the file opens anywhere. Tested in test/train.test.ts (the charts contain the data).

export interface StepRecord {
  step: number;
  epoch: number;
  loss: number;
  alignment: number;
  entropy: number;
  tau: number;
  lr: number;
  momentum: number;
  imagesPerSecond: number;
  skipped?: boolean;
}

export interface EpochRecord {
  epoch: number;
  step: number;
  knnTop1?: number;
  seconds: number;
}

export interface Series {
  name: string;
  x: number[];
  y: number[];
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

/** A standalone SVG line chart of one series (non-finite points are dropped). */
export function lineChart(title: string, series: Series, opts: { width?: number; height?: number; xLabel?: string } = {}): string {
  const width = opts.width ?? 460, height = opts.height ?? 240;
  const left = 60, right = 12, top = 28, bottom = 36;
  const pts = series.x.map((x, i) => [x, series.y[i]] as const).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const head = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(title)}">` +
    `<rect width="100%" height="100%" fill="#fff"/><text x="${width / 2}" y="18" text-anchor="middle" font-family="sans-serif" font-size="13">${escapeHtml(title)}</text>`;
  if (pts.length === 0) {
    return head + `<text x="${width / 2}" y="${height / 2}" text-anchor="middle" font-family="sans-serif" font-size="12" fill="#888">no data</text></svg>`;
  }
  let xmin = Math.min(...pts.map((p) => p[0])), xmax = Math.max(...pts.map((p) => p[0]));
  let ymin = Math.min(...pts.map((p) => p[1])), ymax = Math.max(...pts.map((p) => p[1]));
  if (xmax === xmin) { xmin -= 0.5; xmax += 0.5; }
  if (ymax === ymin) { const d = Math.abs(ymin) * 0.05 || 0.5; ymin -= d; ymax += d; }
  const pad = (ymax - ymin) * 0.05; ymin -= pad; ymax += pad;
  const sx = (x: number) => left + ((x - xmin) / (xmax - xmin)) * (width - left - right);
  const sy = (y: number) => top + (1 - (y - ymin) / (ymax - ymin)) * (height - top - bottom);
  let body = '';
  for (let i = 0; i <= 4; i++) {
    const yv = ymin + ((ymax - ymin) * i) / 4, y = sy(yv);
    body += `<line x1="${left}" x2="${width - right}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#eee"/>` +
      `<text x="${left - 4}" y="${(y + 4).toFixed(1)}" text-anchor="end" font-family="sans-serif" font-size="10">${fmt(yv)}</text>`;
    const xv = xmin + ((xmax - xmin) * i) / 4, x = sx(xv);
    body += `<text x="${x.toFixed(1)}" y="${height - bottom + 14}" text-anchor="middle" font-family="sans-serif" font-size="10">${fmt(xv)}</text>`;
  }
  body += `<text x="${(left + width - right) / 2}" y="${height - 6}" text-anchor="middle" font-family="sans-serif" font-size="10" fill="#555">${escapeHtml(opts.xLabel ?? 'step')}</text>`;
  const d = pts.map((p, i) => `${i ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join('');
  body += `<path d="${d}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`;
  if (pts.length <= 50) for (const p of pts) body += `<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="2.5" fill="#1f77b4"/>`;
  return head + body + '</svg>';
}

/** Moving average over `w` points (the per-step loss is noisy). */
function smooth(y: number[], w: number): number[] {
  if (w <= 1) return y;
  const out: number[] = [];
  let sum = 0, count = 0;
  const q: number[] = [];
  for (const v of y) {
    if (!Number.isFinite(v)) { out.push(v); continue; }
    q.push(v); sum += v; count++;
    if (q.length > w) { sum -= q.shift()!; count--; }
    out.push(sum / count);
  }
  return out;
}

export interface ReportInput {
  title: string;
  steps: StepRecord[];
  epochs: EpochRecord[];
  summary: Record<string, unknown>;
  config: Record<string, unknown>;
}

/** The whole report page. */
export function renderReport(r: ReportInput): string {
  const steps = r.steps.filter((s) => !s.skipped);
  const xs = steps.map((s) => s.step);
  const w = Math.max(1, Math.round(steps.length / 100));
  const charts = [
    lineChart(`loss (moving average of ${w})`, { name: 'loss', x: xs, y: smooth(steps.map((s) => s.loss), w) }),
    lineChart(`alignment (mean cosine to the target, moving average of ${w})`, { name: 'alignment', x: xs, y: smooth(steps.map((s) => s.alignment), w) }),
    lineChart('entropy surrogate (per-view mean)', { name: 'entropy', x: xs, y: smooth(steps.map((s) => s.entropy), w) }),
    lineChart('kernel width tau (mean over views)', { name: 'tau', x: xs, y: steps.map((s) => s.tau) }),
    lineChart('learning rate', { name: 'lr', x: xs, y: steps.map((s) => s.lr) }),
    lineChart('EMA momentum m', { name: 'momentum', x: xs, y: steps.map((s) => s.momentum) }),
    // (no kNN chart where no epoch ran one: unlabelled data, --knn-every 0)
    ...(r.epochs.some((e) => e.knnTop1 !== undefined && e.knnTop1 !== null)
      ? [lineChart('kNN top-1 (monitor subset)', { name: 'knn', x: r.epochs.map((e) => e.epoch + 1), y: r.epochs.map((e) => e.knnTop1 ?? NaN) }, { xLabel: 'epoch' })]
      : []),
    lineChart('images per second', { name: 'throughput', x: xs, y: smooth(steps.map((s) => s.imagesPerSecond), w) }),
  ];
  const rows = (o: Record<string, unknown>) =>
    Object.entries(o).map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(typeof v === 'number' ? fmt(v) : v === null ? 'n/a' : JSON.stringify(v))}</td></tr>`).join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(r.title)}</title>
<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin-bottom:16px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}th{background:#f6f6f6}.charts{display:flex;flex-wrap:wrap;gap:12px}</style>
</head><body>
<h1>${escapeHtml(r.title)}</h1>
<h2>Summary</h2><table>${rows(r.summary)}</table>
<h2>Curves</h2><div class="charts">${charts.join('\n')}</div>
<h2>Configuration</h2><table>${rows(r.config)}</table>
<p style="color:#777;font-size:12px">Written by mveb. Per-step metrics are in metrics.jsonl next to this file.</p>
</body></html>
`;
}
