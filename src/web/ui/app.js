// Perch's web UI: the Query, Targets and Status pages, rendered by path from index.html.
//
// Everything comes from this server's Prometheus API (relative URLs only). The query page keeps
// its state in the URL in the classic Prometheus UI's parameters (g0.expr, g0.tab: 0 graph,
// 1 table, g0.range_input, g0.end_input in UTC, g0.step_input, g0.stacked), so a link shares it.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);

// h('tag#id.cls', {attr: v, onclick: f}, child, 'text', …): a tiny element builder.
function h(spec, attrs, ...kids) {
  const parts = spec.match(/[.#]?[^.#]+/g);
  const e = document.createElement(/^[.#]/.test(parts[0]) ? 'div' : parts.shift());
  for (const p of parts) {
    if (p[0] === '#') e.id = p.slice(1);
    else e.classList.add(p.slice(1));
  }
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    kids.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k in e && k !== 'list') e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false) e.append(k);
  return e;
}

class ApiError extends Error {
  constructor(type, msg) { super(msg); this.type = type; }
}

// GET (or POST form) an API path; resolves to {data, warnings, infos}, rejects with ApiError.
async function api(path, params, post) {
  const qs = params ? new URLSearchParams(params) : null;
  let r;
  try {
    r = post ? await fetch(path, {method: 'POST', body: qs})
      : await fetch(qs ? `${path}?${qs}` : path);
  } catch (e) {
    throw new ApiError('network', `cannot reach Perch: ${e.message}`);
  }
  let body;
  try {
    body = await r.json();
  } catch (e) {
    throw new ApiError('http', `HTTP ${r.status} ${r.statusText}: the answer is not JSON`);
  }
  if (body.status !== 'success') throw new ApiError(body.errorType || 'error', body.error || `HTTP ${r.status}`);
  return {data: body.data, warnings: body.warnings || [], infos: body.infos || []};
}

const pad2 = n => String(n).padStart(2, '0');
const DUR_UNITS = [['y', 31536000], ['w', 604800], ['d', 86400], ['h', 3600], ['m', 60], ['s', 1], ['ms', 0.001]];

// "1h30m", "90s", "15" (seconds) → seconds; NaN when not a duration.
function parseDur(s) {
  s = String(s).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const re = /(\d+)(ms|y|w|d|h|m|s)/gy;
  let total = 0, m, pos = 0;
  while ((m = re.exec(s))) { total += m[1] * DUR_UNITS.find(u => u[0] === m[2])[1]; pos = re.lastIndex; }
  return s && pos === s.length ? total : NaN;
}

// Seconds → "1d2h", "15d", "1w" (weeks and years only when exact).
function formatDur(sec) {
  if (!(sec > 0)) return '0s';
  let out = '';
  for (const [u, n] of DUR_UNITS) {
    if (sec >= n && u !== 'ms' && (n < 604800 || sec % n === 0)) { const k = Math.floor(sec / n); out += k + u; sec -= k * n; }
  }
  return out || Math.round(sec * 1000) + 'ms';
}

// "3.2s ago", "5m ago": a rough age for people.
function ago(ms) {
  const s = (Date.now() - ms) / 1000;
  if (!isFinite(s)) return 'never';
  if (s < 0) return 'in ' + formatDur(Math.round(-s));
  if (s < 10) return s.toFixed(1) + 's ago';
  const d = formatDur(Math.round(s));
  return d.replace(/^(\d+[a-z]+\d+[a-z]+).*/, '$1') + ' ago';
}

function localTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function labelString(m) {
  const name = m.__name__ || '';
  const pairs = Object.keys(m).filter(k => k !== '__name__').map(k => `${k}=${JSON.stringify(m[k])}`);
  return pairs.length || !name ? `${name}{${pairs.join(', ')}}` : name;
}

const parseValue = v => v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : parseFloat(v);
const bytes = n => PerchChart.formatValue(n, 'bytes');

function messages(box, err, warnings, infos) {
  box.textContent = '';
  if (err) box.append(h('div.msg.error', h('b', err.type === 'network' ? 'Error' : `Error (${err.type})`), ': ', err.message));
  for (const w of warnings || []) box.append(h('div.msg.warning', h('b', 'Warning'), ': ', w));
  for (const i of infos || []) box.append(h('div.msg.info', h('b', 'Info'), ': ', i));
}

function store(key, value) {
  try {
    if (value === undefined) return JSON.parse(localStorage.getItem(key) || 'null');
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) { /* private mode or full: no history, nothing else lost */ }
  return null;
}

// ---------------------------------------------------------------- Query

const RANGES = ['5m', '15m', '30m', '1h', '3h', '6h', '12h', '1d', '2d', '1w', '2w', '4w'];
const MAX_ROWS = 1000, MAX_POINTS = 11000, HISTORY_MAX = 50;
const FUNCS = ('abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min ' +
  'count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv exp floor ' +
  'histogram_quantile holt_winters hour idelta increase irate label_join label_replace ' +
  'last_over_time ln log10 log2 max_over_time min_over_time minute month predict_linear ' +
  'present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc sqrt ' +
  'stddev_over_time stdvar_over_time sum_over_time time timestamp vector year sum min max avg ' +
  'group stddev stdvar count count_values bottomk topk quantile by without on ignoring ' +
  'group_left group_right offset bool and or unless').split(' ');

function readQueryState() {
  const q = new URLSearchParams(location.search);
  return {
    expr: q.get('g0.expr') || '',
    tab: q.get('g0.tab') === '0' || location.pathname === '/graph' && q.get('g0.tab') !== '1' ? 'graph' : 'table',
    range: q.get('g0.range_input') || '1h',
    end: q.get('g0.end_input') || '',
    step: q.get('g0.step_input') || '',
    stacked: q.get('g0.stacked') === '1',
  };
}

function writeQueryState(s, push) {
  const q = new URLSearchParams();
  q.set('g0.expr', s.expr);
  q.set('g0.tab', s.tab === 'graph' ? '0' : '1');
  if (s.stacked) q.set('g0.stacked', '1');
  q.set('g0.range_input', s.range);
  if (s.end) q.set('g0.end_input', s.end);
  if (s.step) q.set('g0.step_input', s.step);
  const url = `${location.pathname}?${q}`;
  if (url === location.pathname + location.search) return;
  (push ? history.pushState : history.replaceState).call(history, null, '', url);
}

// g0.end_input is UTC "YYYY-MM-DD HH:MM:SS"; the picker shows local time.
const endMs = s => { const t = Date.parse(s.replace(' ', 'T') + 'Z'); return isNaN(t) ? null : t; };
const utcString = ms => new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
const localInput = ms => localTime(ms).replace(' ', 'T');

// The unit of a result: from the metric name all series share, else from the expression.
function unitOf(expr, series) {
  const names = new Set(series.map(s => s.metric.__name__));
  const name = names.size === 1 && !names.has(undefined) ? [...names][0] : expr;
  let u = PerchChart.guessUnit(name);
  // rate() of a seconds counter is a fraction of time (CPU busy): show it as a percentage.
  if (u === 'seconds' && /\b(i?rate)\s*\(/.test(expr) && /_seconds_total\b/.test(expr)) u = 'ratio';
  return u;
}

function queryPage(main) {
  const s = readQueryState();
  const expr = h('textarea#expr', {rows: 1, spellcheck: false, autocomplete: 'off', placeholder: 'Expression (Enter runs, Shift+Enter: new line)', value: s.expr});
  const ac = h('ul.ac', {hidden: true});
  const hist = h('ul.history', {hidden: true});
  const msgs = h('div.msgs');
  const stats = h('div.stats');
  const tableBox = h('div#table');
  const graphBox = h('div#graph');
  const rangeSel = h('select#range', {title: 'Time range'}, [...new Set([...RANGES, s.range])].map(r => h('option', {value: r}, r)));
  rangeSel.value = s.range;
  const endIn = h('input#end', {type: 'datetime-local', step: 1, title: 'End time (empty: now)'});
  if (endMs(s.end)) endIn.value = localInput(endMs(s.end));
  const stepIn = h('input#step', {type: 'text', size: 9, value: s.step, title: 'Resolution (step): empty for auto', placeholder: 'step'});
  const stackedIn = h('input#stacked', {type: 'checkbox', checked: s.stacked});
  const tabs = {table: h('button.tab', {type: 'button'}, 'Table'), graph: h('button.tab', {type: 'button'}, 'Graph')};
  // The table is evaluated at the end time; range, step and stacking are the graph's.
  const controls = h('div.controls',
    h('label.graphonly', 'Range ', rangeSel),
    h('label', 'End ', endIn, h('button.small', {type: 'button', title: 'Now', onclick: () => { endIn.value = ''; changed(); }}, 'now')),
    h('label.graphonly', 'Step ', stepIn),
    h('label.graphonly', stackedIn, ' stacked'));
  let chart = null, seq = 0;

  main.append(h('section.query',
    h('div.exprrow',
      h('div.exprwrap', expr, ac),
      h('button#run.primary', {type: 'button', onclick: () => run(true)}, 'Execute'),
      h('button#histbtn', {type: 'button', title: 'Recent queries', onclick: toggleHistory}, 'History')),
    hist, msgs,
    h('div.tabs', tabs.table, tabs.graph),
    h('div.panel', controls, stats, tableBox, graphBox)));

  function sync() {
    for (const [k, b] of Object.entries(tabs)) b.classList.toggle('active', s.tab === k);
    tableBox.hidden = s.tab !== 'table';
    graphBox.hidden = s.tab !== 'graph';
    controls.classList.toggle('tableonly', s.tab === 'table');
  }
  tabs.table.onclick = () => { s.tab = 'table'; sync(); run(false); };
  tabs.graph.onclick = () => { s.tab = 'graph'; sync(); run(false); };

  function changed() {
    s.range = rangeSel.value;
    s.end = endIn.value ? utcString(new Date(endIn.value).getTime()) : '';
    s.step = stepIn.value.trim();
    run(false);
  }
  rangeSel.onchange = changed;
  endIn.onchange = changed;
  stepIn.onchange = changed;
  stackedIn.onchange = () => {
    s.stacked = stackedIn.checked;
    writeQueryState(s, false);
    if (chart) chart.setStacked(s.stacked);
  };

  function autoStep(rangeSec) { return Math.max(1, Math.floor(rangeSec / 250)); }

  async function run(fromUser) {
    s.expr = expr.value.trim();
    closeAc();
    writeQueryState(s, fromUser);
    if (!s.expr) { messages(msgs); stats.textContent = ''; return; }
    if (fromUser) remember(s.expr);
    const my = ++seq;
    const end = endMs(s.end) ?? Date.now();
    const t0 = performance.now();
    stats.textContent = 'Loading…';
    try {
      if (s.tab === 'table') {
        const r = await api('/api/v1/query', {query: s.expr, time: (end / 1000).toFixed(3)}, true);
        if (my !== seq) return;
        messages(msgs, null, r.warnings, r.infos);
        const n = renderTable(tableBox, r.data);
        stats.textContent = `Load time: ${Math.round(performance.now() - t0)} ms · Result: ${n}`;
      } else {
        const range = parseDur(s.range) || 3600;
        let step = s.step ? parseDur(s.step) : autoStep(range);
        if (!(step > 0)) throw new ApiError('bad_data', `step ${JSON.stringify(s.step)} is not a duration (e.g. 15s, 1m, 30)`);
        if (range / step > MAX_POINTS) step = Math.ceil(range / MAX_POINTS);
        stepIn.placeholder = `auto: ${formatDur(autoStep(range))}`;
        const start = end - range * 1000;
        const r = await api('/api/v1/query_range', {query: s.expr, start: (start / 1000).toFixed(3), end: (end / 1000).toFixed(3), step}, true);
        if (my !== seq) return;
        const n = renderGraph(r.data, start, end, step * 1000);
        messages(msgs, null, r.warnings, n ? r.infos : [...r.infos, 'Empty query result: nothing to draw.']);
        stats.textContent = `Load time: ${Math.round(performance.now() - t0)} ms · Resolution: ${formatDur(step)} · Result series: ${n}`;
      }
    } catch (e) {
      if (my !== seq) return;
      if (!(e instanceof ApiError)) throw e;
      messages(msgs, e);
      stats.textContent = '';
    }
  }

  function renderTable(box, data) {
    box.textContent = '';
    const {resultType: type, result} = data;
    const rows = [];
    if (type === 'vector') {
      for (const r of result.slice(0, MAX_ROWS)) rows.push([labelString(r.metric), r.value ? r.value[1] : r.histogram ? 'native histogram' : '']);
    } else if (type === 'matrix') {
      for (const r of result.slice(0, MAX_ROWS)) {
        const vals = (r.values || []).slice(-100).map(([t, v]) => `${v} @${t}`);
        if ((r.values || []).length > 100) vals.unshift(`… ${r.values.length - 100} earlier`);
        rows.push([labelString(r.metric), vals.join('\n')]);
      }
    } else {
      rows.push([type, result[1]]);
    }
    const count = type === 'vector' || type === 'matrix' ? result.length : 1;
    if (!rows.length) {
      box.append(h('p.empty', 'Empty query result'));
      return '0 series';
    }
    box.append(h('table.result', h('thead', h('tr', h('th', 'Series'), h('th', 'Value'))),
      h('tbody', rows.map(([l, v]) => h('tr', h('td.series', l), h('td.value', v))))));
    if (count > rows.length) box.append(h('p.note', `Showing the first ${rows.length} of ${count} series.`));
    return type === 'vector' || type === 'matrix' ? `${count} series` : type;
  }

  function renderGraph(data, start, end, stepMs) {
    if (!chart) chart = new PerchChart(graphBox);
    let result = data.result;
    if (data.resultType === 'scalar') result = [{metric: {}, values: [data.result]}];
    if (data.resultType === 'string') throw new ApiError('bad_data', 'a string cannot be graphed');
    const n = Math.floor((end - start) / stepMs) + 1;
    const times = Array.from({length: n}, (_, k) => start + k * stepMs);
    const series = result.map(r => {
      const values = new Float64Array(n).fill(NaN);
      for (const [t, v] of r.values || []) {
        const k = Math.round((t * 1000 - start) / stepMs);
        if (k >= 0 && k < n) values[k] = parseValue(v);
      }
      return {label: labelString(r.metric), values};
    });
    chart.set({times, series, unit: unitOf(s.expr, result), stacked: s.stacked, start, end});
    return series.length;
  }

  // History: the last HISTORY_MAX queries, newest first, in localStorage.
  function remember(q) {
    const list = (store('perch.history') || []).filter(x => x !== q);
    list.unshift(q);
    store('perch.history', list.slice(0, HISTORY_MAX));
  }
  function toggleHistory() {
    if (!hist.hidden) { hist.hidden = true; return; }
    const list = store('perch.history') || [];
    hist.textContent = '';
    if (!list.length) hist.append(h('li.none', 'No queries yet.'));
    for (const q of list) hist.append(h('li', {onclick: () => { expr.value = q; hist.hidden = true; fit(); run(true); }}, q));
    hist.hidden = false;
  }

  // Autocomplete: metric names and PromQL words outside braces, label names inside them and
  // in by/without/on/ignoring lists. The names are fetched once.
  let metricNames = null, labelNames = null, acItems = [], acSel = -1;
  function names() {
    if (metricNames) return;
    metricNames = [];
    labelNames = [];
    api('/api/v1/label/__name__/values').then(r => { metricNames = r.data; }, () => {});
    api('/api/v1/labels').then(r => { labelNames = r.data; }, () => {});
  }
  function closeAc() { ac.hidden = true; acItems = []; acSel = -1; }
  function suggest() {
    const before = expr.value.slice(0, expr.selectionStart);
    const word = (before.match(/[a-zA-Z_:][a-zA-Z0-9_:]*$/) || [''])[0];
    const quotes = (before.match(/"/g) || []).length % 2 === 1;
    const braces = (before.match(/{/g) || []).length > (before.match(/}/g) || []).length;
    const brackets = (before.match(/\[/g) || []).length > (before.match(/]/g) || []).length;
    if (!word || quotes || brackets || !metricNames) return closeAc();
    const grouping = /\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*$/.test(before);
    const pool = braces || grouping ? labelNames : metricNames.concat(FUNCS);
    const w = word.toLowerCase();
    const starts = [], contains = [];
    for (const n of pool) {
      const l = n.toLowerCase();
      if (l === w) continue;
      if (l.startsWith(w)) starts.push(n);
      else if (l.includes(w) && contains.length < 30) contains.push(n);
      if (starts.length >= 30) break;
    }
    acItems = starts.concat(contains).slice(0, 30);
    acSel = -1;
    if (!acItems.length) return closeAc();
    ac.textContent = '';
    acItems.forEach((n, i) => ac.append(h('li', {onmousedown: e => { e.preventDefault(); accept(i); }}, n)));
    ac.hidden = false;
  }
  function highlight() { [...ac.children].forEach((li, i) => li.classList.toggle('sel', i === acSel)); }
  function accept(i) {
    const pos = expr.selectionStart, before = expr.value.slice(0, pos);
    const word = (before.match(/[a-zA-Z_:][a-zA-Z0-9_:]*$/) || [''])[0];
    const after = expr.value.slice(pos).replace(/^[a-zA-Z0-9_:]*/, '');
    expr.value = before.slice(0, pos - word.length) + acItems[i] + after;
    const at = pos - word.length + acItems[i].length;
    expr.setSelectionRange(at, at);
    closeAc();
    fit();
  }
  function fit() { expr.style.height = 'auto'; expr.style.height = expr.scrollHeight + 2 + 'px'; }

  expr.addEventListener('focus', names);
  expr.addEventListener('input', () => { fit(); suggest(); });
  expr.addEventListener('blur', () => setTimeout(closeAc, 100));
  expr.addEventListener('keydown', e => {
    if (!ac.hidden && (e.key === 'ArrowDown' || e.key === 'ArrowUp')) {
      e.preventDefault();
      acSel = (acSel + (e.key === 'ArrowDown' ? 1 : acItems.length - 1 + (acSel < 0 ? 1 : 0))) % acItems.length;
      highlight();
    } else if (!ac.hidden && (e.key === 'Tab' || e.key === 'Enter' && acSel >= 0)) {
      e.preventDefault();
      accept(Math.max(acSel, 0));
    } else if (e.key === 'Escape') {
      closeAc();
    } else if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      run(true);
    }
  });
  addEventListener('popstate', () => {
    Object.assign(s, readQueryState());
    expr.value = s.expr;
    rangeSel.value = s.range;
    stepIn.value = s.step;
    endIn.value = endMs(s.end) ? localInput(endMs(s.end)) : '';
    stackedIn.checked = s.stacked;
    sync();
    run(false);
  });

  sync();
  fit();
  if (s.expr) run(false);
  else expr.focus();
}

// ---------------------------------------------------------------- Targets

async function targetsPage(main) {
  const msgs = h('div.msgs');
  const unhealthy = h('input#unhealthy', {type: 'checkbox'});
  const list = h('div.pools');
  const toolbar = h('div.toolbar',
    h('label', unhealthy, ' unhealthy only'),
    h('button.small', {type: 'button', onclick: () => list.querySelectorAll('details').forEach(d => { d.open = false; })}, 'Collapse all'),
    h('button.small', {type: 'button', onclick: () => list.querySelectorAll('details').forEach(d => { d.open = true; })}, 'Expand all'),
    h('button.small', {type: 'button', onclick: load}, 'Refresh'));
  main.append(h('section.targets', h('h1', 'Targets'), toolbar, msgs, list));
  unhealthy.onchange = () => list.classList.toggle('unhealthy', unhealthy.checked);

  async function load() {
    let r;
    try {
      r = await api('/api/v1/targets', {state: 'any'});
    } catch (e) {
      return messages(msgs, e);
    }
    messages(msgs, null, r.warnings);
    const open = new Set([...list.querySelectorAll('details:not([open])')].map(d => d.dataset.pool));
    list.textContent = '';
    const pools = new Map();
    for (const t of r.data.activeTargets) {
      if (!pools.has(t.scrapePool)) pools.set(t.scrapePool, []);
      pools.get(t.scrapePool).push(t);
    }
    if (!pools.size) list.append(h('p.empty', 'No targets: the config has no scrape jobs.'));
    for (const [pool, ts] of [...pools].sort((a, b) => a[0].localeCompare(b[0]))) {
      const up = ts.filter(t => t.health === 'up').length;
      const rows = ts.map(t => {
        const last = Date.parse(t.lastScrape);
        const never = !(last > 0);
        return h('tr', {class: t.health === 'up' ? 'ok' : 'bad'},
          h('td', {'data-label': 'Endpoint'}, h('a', {href: t.scrapeUrl}, t.scrapeUrl)),
          h('td', {'data-label': 'State'}, h('span.health.' + (t.health || 'unknown'), (t.health || 'unknown').toUpperCase())),
          h('td.labels', {'data-label': 'Labels'}, Object.entries(t.labels).map(([k, v]) => h('span.chip', `${k}="${v}"`))),
          h('td', {'data-label': 'Last scrape', title: never ? '' : localTime(last)}, never ? 'never' : ago(last)),
          h('td', {'data-label': 'Duration'}, never ? '' : PerchChart.formatValue(t.lastScrapeDuration, 'seconds')),
          h('td.err', {'data-label': 'Error'}, t.lastError || ''));
      });
      const d = h('details.pool', {open: !open.has(pool)},
        h('summary', h('b', pool), ' ', h('span.count' + (up === ts.length ? '.allup' : ''), `(${up}/${ts.length} up)`)),
        h('table.targets', h('thead', h('tr', ['Endpoint', 'State', 'Labels', 'Last scrape', 'Duration', 'Error'].map(c => h('th', c)))), h('tbody', rows)));
      d.dataset.pool = pool;
      if (up === ts.length) d.classList.add('healthy');
      list.append(d);
    }
    const dropped = (r.data.droppedTargets || []).length;
    if (dropped) list.append(h('p.note', `${dropped} targets dropped by relabeling.`));
    main.dataset.ready = '1';
  }
  await load();
}

// ---------------------------------------------------------------- Status

function kv(rows) {
  return h('table.kv', h('tbody', rows.filter(Boolean).map(([k, v]) => h('tr', h('th', k), h('td', v)))));
}

function bar(frac, warn) {
  const pct = Math.max(0, Math.min(1, frac)) * 100;
  return h('span.bar' + (warn ? '.warn' : ''), {title: pct.toFixed(1) + '%'}, h('span', {style: `width:${pct.toFixed(1)}%`}));
}

function topTable(title, list) {
  return h('div.top', h('h3', title), h('table.kv', h('tbody', (list || []).map(x => h('tr', h('th', x.name), h('td.num', String(x.value)))))));
}

async function statusPage(main) {
  const msgs = h('div.msgs');
  main.append(h('section.status', h('h1', 'Status'), msgs));
  const get = p => api(p).then(r => r.data, e => { messages(msgs, e); return null; });
  const [build, runtime, flags, config, storage, tsdb, remote] = await Promise.all([
    get('/api/v1/status/buildinfo'), get('/api/v1/status/runtimeinfo'), get('/api/v1/status/flags'),
    get('/api/v1/status/config'), get('/api/v1/status/storage'), get('/api/v1/status/tsdb?limit=10'),
    get('/api/v1/status/remote')]);
  // Send rates, when Perch scrapes itself.
  const rates = await api('/api/v1/query', {query: 'sum by (remote_name) (rate(perch_remote_write_samples_sent_total[5m]))'})
    .then(r => Object.fromEntries(r.data.result.map(x => [x.metric.remote_name, parseValue(x.value[1])])), () => ({}));
  // Bytes written over the last day, when Perch scrapes itself (the default config does).
  const day = await api('/api/v1/query', {query: 'increase(perch_storage_written_bytes_total[1d])'})
    .then(r => r.data.result, () => []);
  const sec = (id, title, ...body) => h('section.card#' + id, h('h2', title), ...body);
  const out = [];
  if (build) {
    const fields = [['Version', build.version], ['Revision', build.revision], ['Branch', build.branch],
      ['Build user', build.buildUser], ['Build date', build.buildDate]];
    out.push(sec('build', 'Build information', kv(fields.filter(f => f[1]))));
  }
  if (runtime) {
    const start = Date.parse(runtime.startTime);
    out.push(sec('runtime', 'Runtime information', kv([
      ['Start time', `${localTime(start)} (up ${formatDur(Math.round((Date.now() - start) / 1000))})`],
      ['Working directory', runtime.CWD],
      ['Configuration reload', runtime.reloadConfigSuccess ? 'successful' : 'failed'],
      ['Last configuration', localTime(Date.parse(runtime.lastConfigTime))],
      ['Tasks', String(runtime.goroutineCount)],
      ['Storage retention', runtime.storageRetention]])));
  }
  if (storage) {
    const s = storage;
    const used = s.budgetBytes ? s.diskBytes / s.budgetBytes : 0;
    const covered = s.retentionTimeSeconds ? s.coveredSeconds / s.retentionTimeSeconds : 0;
    const reached = yes => yes ? h('span.badge.warn', 'reached: oldest data is being deleted') : h('span.badge', 'not reached');
    const dayRow = day.length ? day.map(r => [`Written, last 24 h${day.length > 1 ? ` (${r.metric.instance})` : ''}`, bytes(parseValue(r.value[1]))]) : [];
    out.push(sec('storage', 'Storage',
      kv([
        ['Disk used', h('span', bar(used, s.sizeRetentionReached), ` ${bytes(s.diskBytes)} of ${bytes(s.budgetBytes)} (${(used * 100).toFixed(1)}%) `, reached(s.sizeRetentionReached))],
        ['Time covered', h('span', bar(covered, s.timeRetentionReached), ` ${formatDur(s.coveredSeconds)} of ${formatDur(s.retentionTimeSeconds)} `, reached(s.timeRetentionReached))],
        ['Oldest sample', s.minTime === null ? 'none yet' : `${localTime(s.minTime)} (${ago(s.minTime)})`],
        ['Newest sample', s.maxTime === null ? 'none yet' : `${localTime(s.maxTime)} (${ago(s.maxTime)})`],
        ['Series', String(s.series)],
        ['Samples in memory', `${s.samplesInMemory} (${bytes(s.memoryBytes)} with series)`],
        ['Samples appended', `${s.samplesAppendedTotal} since start`],
        ['Written to disk', `${bytes(s.bytesWrittenTotal)} since start (${ago(s.startTime)})`],
        ...dayRow,
        ['Rejected samples', `${s.outOfOrderTotal} out of order, ${s.duplicateTotal} duplicate`],
        ['Write errors', String(s.writeErrorsTotal)],
        ['Corrupt records skipped', String(s.corruptRecordsTotal)]]),
      tsdb && h('div.tops',
        topTable('Top series count by metric name', tsdb.seriesCountByMetricName),
        topTable('Top label names by value count', tsdb.labelValueCountByLabelName),
        topTable('Top series count by label pair', tsdb.seriesCountByLabelValuePair))));
  }
  if (remote) {
    const writers = remote.remoteWrite.map(w => {
      const fails = Object.entries(w.failures).filter(([, n]) => n > 0).map(([r, n]) => `${n} ${r}`).join(', ');
      const state = w.lastError ? h('span.badge.warn', 'failing') : w.pendingBytes > 0 ? h('span.badge.warn', 'catching up') : h('span.badge', 'up to date');
      return h('div.writer', h('h3', `${w.name} → ${w.url} `, state), kv([
        ['Live queue', `${w.queuedSamples} samples`],
        ['Not sent yet (in the store)', w.pendingBytes ? bytes(w.pendingBytes) : 'nothing'],
        ['Oldest unsent sample', w.oldestUnsentTime === null ? 'none' : `${localTime(w.oldestUnsentTime)} (${ago(w.oldestUnsentTime)})`],
        ['Sent', `${w.samplesSentLive} live, ${w.samplesSentBackfill} backfilled`],
        rates[w.name] !== undefined && ['Send rate', `${rates[w.name].toFixed(1)} samples/s (5m)`],
        ['Deferred to backfill', `${w.deferredSamples} samples`],
        ['Last success', w.lastSuccessTime === null ? 'never' : `${localTime(w.lastSuccessTime)} (${ago(w.lastSuccessTime)})`],
        ['Failures', fails || 'none'],
        w.lastError && ['Last error', h('code', w.lastError)],
        w.lostRanges > 0 && ['Rotated out before sent', `${w.lostRanges} ranges`]]));
    });
    out.push(sec('remote', 'Remote write and export',
      writers.length ? writers : h('p', 'No remote_write configured.'),
      h('h3', 'Export'), kv([
        ['Oldest cursor', h('code', remote.export.oldestCursor)],
        ['Newest cursor', h('code', remote.export.endCursor)],
        ['Pull the history', h('code', '/api/v1/export?cursor=<last Perch-Export-Cursor>')]])));
  }
  if (flags) out.push(sec('flags', 'Command-line flags', kv(Object.entries(flags).map(([k, v]) => [k, v]))));
  if (config) out.push(sec('config', 'Configuration', h('pre.config', config.yaml)));
  main.firstChild.append(...out);
  main.dataset.ready = '1';
}

// ---------------------------------------------------------------- Pages

const PAGES = {'/query': queryPage, '/graph': queryPage, '/targets': targetsPage, '/status': statusPage};

function start() {
  const page = PAGES[location.pathname] || queryPage;
  const name = location.pathname === '/graph' ? 'query' : location.pathname.slice(1);
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === name);
  document.title = `Perch · ${name.charAt(0).toUpperCase()}${name.slice(1)}`;
  const main = $('#main');
  main.textContent = '';
  Promise.resolve(page(main)).catch(e => console.error('Perch UI:', e && e.stack || e));
}

start();
