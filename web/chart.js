// The host's analytics chart: listeners over time, drawn on a canvas by the
// page from /api/v1/spaces/{id}/stats (no external service).

/** Draws `stats.listeners_over_time` on `canvas`; returns the points drawn. */
export function drawListeners(canvas, stats) {
  const series = stats.listeners_over_time || { points: [], interval_s: 10 };
  const pts = series.points || [];
  const css = getComputedStyle(document.documentElement);
  const fg = css.getPropertyValue("--muted").trim() || "#888";
  const line = css.getPropertyValue("--accent").trim() || "#36c";
  const grid = css.getPropertyValue("--line").trim() || "#ccc";
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 320;
  const h = canvas.clientHeight || 160;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 36, r: 8, t: 8, b: 20 };
  const max = Math.max(1, ...pts);
  const x = (i) => pad.l + (pts.length > 1 ? (i / (pts.length - 1)) * (w - pad.l - pad.r) : 0);
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = fg;
  g.strokeStyle = grid;
  g.lineWidth = 1;
  for (const v of [...new Set([0, Math.round(max / 2), max])]) {
    g.beginPath();
    g.moveTo(pad.l, y(v));
    g.lineTo(w - pad.r, y(v));
    g.stroke();
    g.fillText(String(v), 4, y(v) + 4);
  }
  const mins = ((pts.length - 1) * series.interval_s) / 60;
  g.fillText("0", pad.l, h - 5);
  const end = mins >= 1 ? `${mins.toFixed(0)} min` : `${Math.max(0, (pts.length - 1) * series.interval_s)} s`;
  g.fillText(end, w - pad.r - g.measureText(end).width, h - 5);
  if (pts.length) {
    g.strokeStyle = line;
    g.lineWidth = 2;
    g.beginPath();
    pts.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
    if (pts.length === 1) g.lineTo(w - pad.r, y(pts[0]));
    g.stroke();
  }
  canvas.dataset.points = String(pts.length);
  canvas.setAttribute("aria-label", `Listeners over time: ${pts.length} points, peak ${stats.peak_listeners}`);
  return pts.length;
}

/** One line of figures for the chart's caption. */
export function summary(stats) {
  const mins = Math.round((stats.listening_seconds || 0) / 60);
  const reactions = Object.values(stats.reactions || {}).reduce((a, b) => a + b, 0);
  return `Peak ${stats.peak_listeners} listening · ${stats.joins} joins (${stats.unique_participants} people) · ` +
    `${mins} min listened · ${reactions} reactions · ${stats.replay_plays} replay plays`;
}
