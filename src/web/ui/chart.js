// Perch's time-series chart: canvas, no dependencies.
//
// new PerchChart(element) builds a plot canvas, an overlay canvas for the hover crosshair (so
// hovering never redraws the series), a tooltip and a legend. chart.set({times, series, unit,
// stacked}) takes the points on one time grid: `times` are ms, each series is {label, values}
// with `values` a Float64Array parallel to `times`, NaN where there is no sample (the line
// breaks there). Each series is one canvas path, the legend lists at most LEGEND_MAX series and
// the tooltip at most TIP_MAX, so 500 series of 500 points draw in a few tens of ms.
'use strict';

const PerchChart = (() => {
  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
    '#7f7f7f', '#bcbd22', '#17becf'];
  const LEGEND_MAX = 200, TIP_MAX = 20;
  const S = 1000, M = 60 * S, H = 60 * M, D = 24 * H;
  const TIME_STEPS = [S, 2 * S, 5 * S, 10 * S, 15 * S, 30 * S, M, 2 * M, 5 * M, 10 * M, 15 * M,
    30 * M, H, 2 * H, 3 * H, 6 * H, 12 * H, D, 2 * D, 7 * D, 14 * D, 30 * D];
  const MONTHS = 'Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec'.split(' ');

  const color = i => i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.508) % 360},65%,45%)`;

  // Units: a guess from the metric name; each unit lists [divisor, suffix], smallest first.
  const SCALES = {
    bytes: [[1, ' B'], [1024, ' KiB'], [1024 ** 2, ' MiB'], [1024 ** 3, ' GiB'], [1024 ** 4, ' TiB'],
      [1024 ** 5, ' PiB']],
    seconds: [[1e-9, ' ns'], [1e-6, ' µs'], [1e-3, ' ms'], [1, ' s'], [3600, ' h'], [86400, ' d']],
    ratio: [[0.01, '%']],
    percent: [[1, '%']],
    none: [[1e-3, 'm'], [1, ''], [1e3, 'k'], [1e6, 'M'], [1e9, 'G'], [1e12, 'T'], [1e15, 'P']],
  };

  function guessUnit(name) {
    if (!name) return 'none';
    if (/_bytes(_total|_sum|_bucket)?\b/.test(name)) return 'bytes';
    if (/_seconds(_total|_sum|_bucket)?\b/.test(name)) return 'seconds';
    if (/_ratio\b/.test(name)) return 'ratio';
    if (/percent/.test(name)) return 'percent';
    return 'none';
  }

  // The largest scale whose divisor fits |v| (for hours and days: twice over, so 90 s stays s).
  function scaleOf(unit, v) {
    const list = SCALES[unit] || SCALES.none;
    let pick = unit === 'none' ? list[1] : list[0];
    for (const s of list) {
      const need = s[0] >= 3600 ? 2 * s[0] : s[0];
      if (Math.abs(v) >= need) pick = s;
    }
    return pick;
  }

  // A value with 4 significant digits in its own scale: "12.35 MiB", "250 ms", "1.5k".
  function formatValue(v, unit) {
    if (v !== v) return 'NaN';
    if (!isFinite(v)) return v > 0 ? '+Inf' : '-Inf';
    if (v === 0) return '0' + (scaleOf(unit, 1)[1] || '');
    const [div, suf] = scaleOf(unit, v);
    return Number((v / div).toPrecision(4)).toString() + suf;
  }

  function niceStep(raw) {
    const p = 10 ** Math.floor(Math.log10(raw)), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
  }

  // Y ticks over [lo, hi]: nice steps in the unit's scale; returns the widened range too.
  function yTicks(lo, hi, unit, count) {
    if (lo === hi) {
      const pad = Math.abs(lo) * 0.1 || 1;
      lo -= pad; hi += pad;
    }
    const [div, suf] = scaleOf(unit, Math.max(Math.abs(lo), Math.abs(hi)));
    const step = niceStep((hi - lo) / div / Math.max(1, count));
    const a = Math.floor(lo / div / step) * step, b = Math.ceil(hi / div / step) * step;
    const dec = Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) + (step / 10 ** Math.floor(Math.log10(step)) === 2.5 ? 1 : 0);
    const ticks = [];
    for (let k = 0; a + k * step <= b + step * 1e-9; k++) {
      const v = a + k * step;
      ticks.push([v * div, (Math.abs(v) < step * 1e-9 ? 0 : v).toFixed(Math.min(dec, 10)) + suf]);
    }
    return {lo: a * div, hi: b * div, ticks};
  }

  const pad2 = n => String(n).padStart(2, '0');

  // Time ticks at local-time multiples of a step from TIME_STEPS, at most `count` of them.
  function timeTicks(start, end, count) {
    const span = end - start;
    const step = TIME_STEPS.find(s => span / s <= count) || TIME_STEPS[TIME_STEPS.length - 1];
    const off = new Date(start).getTimezoneOffset() * M;
    const ticks = [];
    for (let t = Math.ceil((start - off) / step) * step + off; t <= end; t += step) {
      const d = new Date(t);
      const hm = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
      const day = MONTHS[d.getMonth()] + ' ' + d.getDate();
      let label;
      if (step < M) label = hm + ':' + pad2(d.getSeconds());
      else if (step < D) label = d.getHours() === 0 && d.getMinutes() === 0 ? day : hm;
      else label = day;
      ticks.push([t, label]);
    }
    return ticks;
  }

  function timeString(t) {
    const d = new Date(t);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  class Chart {
    constructor(root) {
      this.root = root;
      this.wrap = el('div', 'chart');
      this.plot = el('canvas', 'plot');
      this.overlay = el('canvas', 'overlay');
      this.tip = el('div', 'tip');
      this.tip.hidden = true;
      this.wrap.append(this.plot, this.overlay, this.tip);
      this.legend = el('div', 'legend');
      root.append(this.wrap, this.legend);
      this.data = {times: [], series: [], unit: 'none', stacked: false};
      this.hidden = new Set();
      const move = e => this.hover(e.clientX, e.clientY);
      this.overlay.addEventListener('pointermove', move);
      this.overlay.addEventListener('pointerdown', move);
      this.overlay.addEventListener('pointerleave', () => this.unhover());
      this.resizer = new ResizeObserver(() => this.draw());
      this.resizer.observe(this.wrap);
    }

    set(data) {
      this.data = data;
      this.hidden = new Set();
      this.renderLegend();
      this.draw();
    }

    setStacked(stacked) {
      this.data.stacked = stacked;
      this.draw();
    }

    visible() {
      return this.data.series.map((s, i) => i).filter(i => !this.hidden.has(i));
    }

    renderLegend() {
      const {series} = this.data;
      this.legend.textContent = '';
      series.slice(0, LEGEND_MAX).forEach((s, i) => {
        const item = el('div', 'item');
        item.title = 'click: show or hide; Ctrl/Alt-click: show only this';
        const sw = el('span', 'sw');
        sw.style.background = color(i);
        item.append(sw, el('span', 'lbl', s.label));
        item.addEventListener('click', e => this.toggle(i, e.ctrlKey || e.metaKey || e.altKey));
        this.legend.append(item);
      });
      if (series.length > LEGEND_MAX) {
        this.legend.append(el('div', 'more', `and ${series.length - LEGEND_MAX} more series (drawn, not listed)`));
      }
    }

    toggle(i, only) {
      const n = this.data.series.length;
      if (only) {
        const alone = !this.hidden.has(i) && this.hidden.size === n - 1;
        this.hidden = new Set();
        if (!alone) for (let k = 0; k < n; k++) if (k !== i) this.hidden.add(k);
      } else if (this.hidden.has(i)) this.hidden.delete(i);
      else this.hidden.add(i);
      [...this.legend.querySelectorAll('.item')].forEach((it, k) => it.classList.toggle('off', this.hidden.has(k)));
      this.draw();
    }

    // Stacked values: per visible series, the running sum (NaN where the series has none).
    stack(vis) {
      const {times, series} = this.data, n = times.length;
      const base = new Float64Array(n), tops = new Map(), bottoms = new Map();
      for (const i of vis) {
        const v = series[i].values, top = new Float64Array(n), bot = Float64Array.from(base);
        for (let j = 0; j < n; j++) {
          if (v[j] === v[j] && isFinite(v[j])) { top[j] = base[j] + v[j]; base[j] = top[j]; } else top[j] = NaN;
        }
        tops.set(i, top);
        bottoms.set(i, bot);
      }
      return {tops, bottoms};
    }

    draw() {
      const c = this.plot, dpr = window.devicePixelRatio || 1;
      const w = this.wrap.clientWidth, h = this.wrap.clientHeight;
      if (!w || !h) return;
      for (const cv of [c, this.overlay]) {
        cv.width = Math.round(w * dpr);
        cv.height = Math.round(h * dpr);
      }
      const ctx = c.getContext('2d');
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const css = getComputedStyle(document.documentElement);
      const fg = css.getPropertyValue('--muted').trim() || '#666';
      const grid = css.getPropertyValue('--grid').trim() || '#ddd';
      ctx.font = '11px system-ui, sans-serif';
      const {times, series, unit, stacked, start, end} = this.data;
      const vis = this.visible();
      const st = stacked ? this.stack(vis) : null;
      const vals = i => stacked ? st.tops.get(i) : series[i].values;
      let lo = Infinity, hi = -Infinity;
      for (const i of vis) {
        for (const v of vals(i)) if (v === v && isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
      }
      if (lo > hi) { lo = 0; hi = 1; }
      if (stacked) lo = Math.min(lo, 0);
      const top = 8, bottom = 22;
      const yt = yTicks(lo, hi, unit, Math.max(2, Math.floor((h - top - bottom) / 45)));
      const left = 8 + Math.max(...yt.ticks.map(t => ctx.measureText(t[1]).width), 10), right = 12;
      const pw = w - left - right, ph = h - top - bottom;
      const t0 = start ?? times[0] ?? 0, t1 = end ?? times[times.length - 1] ?? 1;
      const X = t => left + (t - t0) / ((t1 - t0) || 1) * pw;
      const Y = v => top + (1 - (v - yt.lo) / ((yt.hi - yt.lo) || 1)) * ph;
      this.geom = {left, top, pw, ph, X, Y, t0, t1, st};
      // Grid and axes.
      ctx.strokeStyle = grid;
      ctx.fillStyle = fg;
      ctx.lineWidth = 1;
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      ctx.beginPath();
      for (const [v, label] of yt.ticks) {
        const y = Math.round(Y(v)) + 0.5;
        ctx.moveTo(left, y);
        ctx.lineTo(left + pw, y);
        ctx.fillText(label, left - 4, y);
      }
      ctx.textAlign = 'center';
      ctx.textBaseline = 'top';
      for (const [t, label] of timeTicks(t0, t1, Math.max(2, Math.floor(pw / 85)))) {
        const x = Math.round(X(t)) + 0.5;
        ctx.moveTo(x, top);
        ctx.lineTo(x, top + ph);
        ctx.fillText(label, Math.min(Math.max(x, left + 20), left + pw - 20), top + ph + 5);
      }
      ctx.stroke();
      // Series: one path each, broken at NaN; a lone point becomes a short dash.
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top - 1, pw, ph + 2);
      ctx.clip();
      ctx.lineWidth = series.length > 50 ? 1 : 1.5;
      ctx.lineJoin = 'round';
      const xs = times.map(X);
      for (const i of vis) {
        const v = vals(i);
        if (stacked) {
          const b = st.bottoms.get(i);
          ctx.globalAlpha = 0.25;
          ctx.fillStyle = color(i);
          for (let j = 0; j < v.length;) {
            if (v[j] !== v[j]) { j++; continue; }
            let k = j;
            while (k + 1 < v.length && v[k + 1] === v[k + 1]) k++;
            ctx.beginPath();
            for (let m = j; m <= k; m++) ctx.lineTo(xs[m], Y(v[m]));
            for (let m = k; m >= j; m--) ctx.lineTo(xs[m], Y(b[m]));
            ctx.fill();
            j = k + 1;
          }
          ctx.globalAlpha = 1;
        }
        ctx.strokeStyle = color(i);
        ctx.beginPath();
        for (let j = 0; j < v.length; j++) {
          const y = v[j];
          if (y !== y || !isFinite(y)) continue;
          const prev = j > 0 && v[j - 1] === v[j - 1] && isFinite(v[j - 1]);
          const next = j + 1 < v.length && v[j + 1] === v[j + 1] && isFinite(v[j + 1]);
          const py = Y(y);
          if (prev) ctx.lineTo(xs[j], py);
          else if (next) ctx.moveTo(xs[j], py);
          else { ctx.moveTo(xs[j] - 1.5, py); ctx.lineTo(xs[j] + 1.5, py); }
        }
        ctx.stroke();
      }
      ctx.restore();
      if (this.lastHover) this.hover(...this.lastHover);
    }

    unhover() {
      this.lastHover = null;
      this.tip.hidden = true;
      const o = this.overlay;
      o.getContext('2d').clearRect(0, 0, o.width, o.height);
    }

    hover(cx, cy) {
      const g = this.geom, {times, series, unit} = this.data;
      if (!g || !times.length) return;
      const r = this.overlay.getBoundingClientRect(), x = cx - r.left, y = cy - r.top;
      if (x < g.left || x > g.left + g.pw) return this.unhover();
      this.lastHover = [cx, cy];
      // The nearest grid point (times are ascending).
      const t = g.t0 + (x - g.left) / g.pw * (g.t1 - g.t0);
      let a = 0, b = times.length - 1;
      while (b - a > 1) { const m = (a + b) >> 1; if (times[m] < t) a = m; else b = m; }
      const j = Math.abs(times[a] - t) <= Math.abs(times[b] - t) ? a : b;
      const rows = [];
      let nearest = null, best = Infinity;
      for (const i of this.visible()) {
        const v = series[i].values[j];
        if (v !== v) continue;
        const py = g.Y(g.st ? g.st.tops.get(i)[j] : v);
        rows.push({i, v, py});
        if (Math.abs(py - y) < best) { best = Math.abs(py - y); nearest = i; }
      }
      const dpr = window.devicePixelRatio || 1, ctx = this.overlay.getContext('2d');
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
      const px = Math.round(g.X(times[j])) + 0.5;
      ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue('--muted').trim() || '#888';
      ctx.beginPath();
      ctx.moveTo(px, g.top);
      ctx.lineTo(px, g.top + g.ph);
      ctx.stroke();
      for (const row of rows.slice(0, 100)) {
        ctx.fillStyle = color(row.i);
        ctx.beginPath();
        ctx.arc(px, row.py, row.i === nearest ? 4 : 2.5, 0, 7);
        ctx.fill();
      }
      rows.sort((p, q) => q.v - p.v);
      const shown = rows.slice(0, TIP_MAX);
      if (nearest !== null && !shown.some(s => s.i === nearest)) shown.push(rows.find(s => s.i === nearest));
      const tip = this.tip;
      tip.textContent = '';
      tip.append(el('div', 'time', timeString(times[j])));
      for (const row of shown) {
        const line = el('div', row.i === nearest ? 'row near' : 'row');
        const sw = el('span', 'sw');
        sw.style.background = color(row.i);
        line.append(sw, el('span', 'v', formatValue(row.v, unit)), el('span', 'lbl', series[row.i].label));
        tip.append(line);
      }
      if (rows.length > shown.length) tip.append(el('div', 'more', `${rows.length - shown.length} more`));
      if (!rows.length) tip.append(el('div', 'more', 'no values here'));
      tip.hidden = false;
      const tw = tip.offsetWidth, ww = this.wrap.clientWidth;
      tip.style.left = (px + 12 + tw > ww ? Math.max(0, px - 12 - tw) : px + 12) + 'px';
      tip.style.top = Math.max(0, Math.min(y + 12, this.wrap.clientHeight - tip.offsetHeight)) + 'px';
    }
  }

  Chart.guessUnit = guessUnit;
  Chart.formatValue = formatValue;
  return Chart;
})();
