// Point detail: live value and quality, limits, and a trend (uPlot) of the historian's bucketed
// aggregates for the 1 h / 1 d / 7 d / 30 d / 1 y presets: the mean line inside its min..max band,
// the limits as dashed lines, empty buckets left as gaps, and for 1 h the raw samples of bad or
// uncertain quality marked. Drag to zoom (the finer buckets are fetched), double-click to go back.
// Without a point named: a searchable list of the points this user may see.

import uPlot from '../vendor/uplot/uPlot.esm.js';
import { get } from '../api.js';
import { h, fill, fmtTime, fmtNum, fmtDuration } from '../dom.js';
import { t } from '../i18n.js';
import { can } from '../app.js';
import * as live from '../live.js';
import { sourceOf, gradeBadge, stateOf } from './alarms.js';

const PRESETS = [['1h', 3600e3], ['1d', 86400e3], ['7d', 7 * 86400e3], ['30d', 30 * 86400e3], ['1y', 365 * 86400e3]];
const BUCKETS = 600;
const ROLLUP_MS = 300e3;
const NICE_BUCKETS_S = [300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
const LIMIT_COLOURS = { hh: '#ff4d4f', h: '#ffa940', l: '#ffa940', ll: '#ff4d4f' };
let preset = '1h';

/** Quality class of an OPC UA status code: good, uncertain or bad (severity bits 31..30). */
// The time axis in the 24-hour, year-month-day style the monitoring room reads (uPlot's default is
// US-style "2:20pm"); the date is added under the first tick and at midnight.
function timeTicks(u, splits, axis, space, incr) {
  const p2 = (n) => String(n).padStart(2, '0');
  return splits.map((v, i) => {
    const d = new Date(v * 1000);
    const ym = `${d.getFullYear()}-${p2(d.getMonth() + 1)}`;
    const md = `${p2(d.getMonth() + 1)}-${p2(d.getDate())}`;
    if (incr >= 28 * 86400) return ym;
    if (incr >= 86400) return md;
    const hm = `${p2(d.getHours())}:${p2(d.getMinutes())}`;
    const time = incr < 60 ? `${hm}:${p2(d.getSeconds())}` : hm;
    const midnight = d.getHours() === 0 && d.getMinutes() === 0 && d.getSeconds() === 0;
    return i === 0 || midnight ? `${time}\n${md}` : time;
  });
}

export function qualityOf(code) {
  const sev = (code >>> 30) & 3;
  return sev === 0 ? 'good' : sev === 1 ? 'uncertain' : 'bad';
}

/** A point's metadata from GET /points, tolerant of the shapes before and after the resource API. */
function meta(p) {
  if (typeof p === 'string') return { key: p, enterprise: '', unit: '', device: '', range: null, address: '', configured: false, limits: {} };
  const lim = p.limits || p;
  return {
    key: p.key || p.point || p.id,
    enterprise: p.enterprise || '',
    unit: p.unit || '',
    device: p.device || '',
    range: Array.isArray(p.range) ? p.range : null,
    address: p.address || '',
    configured: !!p.configured,
    name: p.name || '',
    limits: { hh: lim.hh ?? null, h: lim.h ?? null, l: lim.l ?? null, ll: lim.ll ?? null },
  };
}

/** Points matching `q` (server-side search over every point, not only the first page). */
async function points(q, gateway) {
  const r = await get('/points', { limit: 1000, ...(q ? { q } : {}), ...(gateway ? { gateway } : {}) });
  return (r.items || r.points || []).map(meta).filter((p) => p.key);
}

export async function render(main, key) {
  if (!key) return pickList(main);
  const slash = key.indexOf('/');
  const found = slash > 0 ? await points(key.slice(slash + 1), key.slice(0, slash)).catch(() => []) : [];
  const m = found.find((p) => p.key === key) || meta(key);
  const valueEl = h('div', { class: 'live-value', id: 'live-value' });
  const chartEl = h('div', { class: 'chart', id: 'trend' });
  const infoEl = h('div', { class: 'trend-info', id: 'trend-info' });
  const alarmsEl = h('div', { class: 'point-alarms' });
  const presetBar = h('div', { class: 'presets', role: 'group' }, PRESETS.map(([p]) => h('button', {
    class: p === preset ? 'primary' : 'secondary', dataset: { preset: p },
    onclick: () => { preset = p; for (const b of presetBar.children) b.className = b.dataset.preset === p ? 'primary' : 'secondary'; load(); },
  }, t(`preset.${p}`))));
  const limits = Object.entries(m.limits).filter(([, v]) => typeof v === 'number');

  fill(main, h('div', { class: 'point-page' },
    h('div', { class: 'point-head' },
      h('a', { href: '#/point', class: 'back' }, `← ${t('pt.all')}`),
      h('h1', {}, key), m.name ? h('span', { class: 'pt-name' }, m.name) : null,
      m.enterprise ? h('span', { class: 'tag' }, m.enterprise) : null),
    m.configured
      ? h('dl', { class: 'facts point-facts', id: 'point-facts' },
        m.device ? [h('dt', {}, t('pt.device')), h('dd', {}, m.device)] : null,
        m.range ? [h('dt', {}, t('pt.range')), h('dd', {}, `${fmtNum(m.range[0])} … ${fmtNum(m.range[1])} ${m.unit}`)] : null,
        m.address ? [h('dt', {}, t('pt.read_at')), h('dd', {}, m.address)] : null)
      : h('p', { class: 'empty', id: 'point-facts' }, t('pt.no_catalogue')),
    h('div', { class: 'point-top' },
      h('section', { class: 'card' }, h('h2', {}, t('pt.live')), valueEl),
      h('section', { class: 'card' }, h('h2', {}, t('pt.limits')),
        limits.length ? h('dl', { class: 'facts limits' }, limits.map(([k, v]) => [h('dt', {}, k.toUpperCase()), h('dd', {}, `${fmtNum(v)} ${m.unit}`)]))
          : h('p', { class: 'empty' }, t('pt.no_limits'))),
      can('alarms') ? h('section', { class: 'card' }, h('h2', {}, t('pt.alarms')), alarmsEl) : null),
    h('section', { class: 'card trend-card' }, h('div', { class: 'trend-head' }, h('h2', {}, t('pt.trend')), presetBar), chartEl, infoEl)));

  let plot = null;
  let range = null;
  let gen = 0;

  async function latest() {
    try {
      const r = await get('/latest', { points: key });
      const s = r.points && r.points[0] && r.points[0].sample;
      if (!s) { fill(valueEl, h('span', { class: 'empty' }, t('pt.no_data'))); return; }
      const q = qualityOf(s.quality);
      const v = typeof s.value === 'number' ? s.value : s.value;
      const over = typeof v === 'number' && ((m.limits.hh !== null && v >= m.limits.hh) || (m.limits.ll !== null && v <= m.limits.ll)) ? 'alarm-hh'
        : typeof v === 'number' && ((m.limits.h !== null && v >= m.limits.h) || (m.limits.l !== null && v <= m.limits.l)) ? 'alarm-h' : '';
      fill(valueEl,
        h('span', { class: `value ${over} q-${q}`, id: 'value-now' }, typeof v === 'number' ? fmtNum(v) : String(v)), h('span', { class: 'unit' }, m.unit),
        h('div', { class: 'value-meta' },
          h('span', { class: `quality q-${q}`, id: 'quality' }, t(`q.${q}`), q === 'good' ? '' : ` (0x${(s.quality >>> 0).toString(16).toUpperCase()})`),
          h('span', {}, fmtTime(s.ts_ms)),
          h('span', { class: 'age' }, t('pt.age', { age: fmtDuration(Date.now() - s.ts_ms) }))));
    } catch (e) { fill(valueEl, h('span', { class: 'error' }, e.message)); }
  }

  function drawAlarms() {
    const mine = live.list().filter((a) => sourceOf(a).id === key);
    fill(alarmsEl, mine.length ? h('ul', { class: 'plain' }, mine.map((a) => h('li', {}, gradeBadge(a.grade), ' ',
      h('a', { href: `#/alarms/${a.id}` }, t(`cond.${a.key.condition}`)), ' · ', t(`state.${stateOf(a)}`))))
      : h('p', { class: 'ok-msg' }, t('pt.no_alarms')));
  }

  async function load(from, to) {
    const my = ++gen;
    const span = PRESETS.find(([p]) => p === preset)[1];
    const now = Date.now();
    to = to ?? now;
    from = from ?? now - span;
    range = [from, to];
    // From 1-minute buckets up (spans of 10 h and more), a "nice" bucket aligned to the UTC epoch:
    // central answers it from its 5-minute roll-ups instead of decoding every sample of the range.
    // Shorter spans keep the finest whole-second bucket (a short range is a chunk or two to decode).
    let bucket = Math.max(1000, Math.ceil((to - from) / BUCKETS / 1000) * 1000);
    if (bucket >= 60e3) {
      bucket = NICE_BUCKETS_S.map((s) => s * 1000).find((b) => b >= bucket && b % ROLLUP_MS === 0) ?? 86400e3;
      from = Math.floor(from / bucket) * bucket;
    }
    fill(infoEl, t('loading'));
    try {
      const agg = await get('/aggregate', { point: key, from, to, bucket_ms: bucket });
      // Raw samples only where they are few enough to draw: the bad-quality marks.
      const raw = to - from <= 3 * 3600e3 ? await get('/raw', { point: key, from, to, limit: 20000 }).catch(() => null) : null;
      if (my !== gen) return;
      draw(agg.buckets || [], raw ? raw.samples || [] : [], bucket, from, to);
    } catch (e) {
      fill(infoEl, h('span', { class: 'error' }, e.message));
    }
  }

  function draw(buckets, raw, bucket, from, to) {
    const xs = []; const avg = []; const lo = []; const hi = []; const bad = [];
    let samples = 0; let gaps = 0;
    const badAt = new Map();
    for (const s of raw) {
      if (qualityOf(s.quality) !== 'good') {
        const i = Math.floor((s.ts_ms - from) / bucket);
        badAt.set(i, typeof s.value === 'number' ? s.value : null);
      }
    }
    buckets.forEach((b, i) => {
      xs.push((b.start_ms + bucket / 2) / 1000);
      const has = b.count > 0;
      samples += b.count;
      if (!has) gaps += 1;
      avg.push(has ? b.avg : null);
      lo.push(has ? b.min : null);
      hi.push(has ? b.max : null);
      bad.push(badAt.has(i) ? (badAt.get(i) ?? (has ? b.avg : null)) : null);
    });
    const data = [xs, hi, lo, avg, bad];
    const series = [
      {},
      { label: t('pt.max'), stroke: 'rgba(64,169,255,0.35)', width: 1 },
      { label: t('pt.min'), stroke: 'rgba(64,169,255,0.35)', width: 1 },
      { label: t('pt.avg'), stroke: '#40a9ff', width: 2 },
      { label: t('pt.bad'), stroke: '#ff4d4f', width: 0, paths: () => null, points: { show: true, size: 7, fill: '#ff4d4f', stroke: '#ff4d4f' } },
    ];
    for (const [k, v] of limits) {
      data.push(xs.map(() => v));
      series.push({ label: k.toUpperCase(), stroke: LIMIT_COLOURS[k], dash: [8, 6], width: 1.5, points: { show: false } });
    }
    const ys = [...hi, ...lo, ...limits.map(([, v]) => v)].filter((v) => typeof v === 'number');
    const width = Math.max(300, chartEl.clientWidth - 8);
    const height = Math.max(240, Math.min(620, Math.round(window.innerHeight * 0.45)));
    const opts = {
      width, height,
      series,
      bands: [{ series: [1, 2], fill: 'rgba(64,169,255,0.15)' }],
      scales: { x: { time: true }, y: ys.length ? { range: (u, mn, mx) => pad(Math.min(mn, ...ys), Math.max(mx, ...ys)) } : {} },
      axes: [
        { stroke: '#aab4c3', grid: { stroke: 'rgba(255,255,255,0.07)' }, ticks: { stroke: 'rgba(255,255,255,0.15)' }, values: timeTicks },
        { stroke: '#aab4c3', grid: { stroke: 'rgba(255,255,255,0.07)' }, ticks: { stroke: 'rgba(255,255,255,0.15)' }, size: 70 },
      ],
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 5) return;
          const a = u.posToVal(u.select.left, 'x') * 1000;
          const b = u.posToVal(u.select.left + u.select.width, 'x') * 1000;
          u.setSelect({ left: 0, width: 0 }, false);
          load(Math.floor(a), Math.ceil(b));
        }],
      },
    };
    if (plot) plot.destroy();
    chartEl.replaceChildren();
    plot = new uPlot(opts, data, chartEl);
    plot.root.addEventListener('dblclick', () => load());
    fill(infoEl,
      h('span', { id: 'trend-samples', dataset: { samples, buckets: buckets.length, gaps } }, t('pt.summary', { samples, buckets: buckets.length, bucket: fmtDuration(bucket), gaps })),
      bad.some((v) => v !== null) ? h('span', { class: 'bad-note' }, ` · ${t('pt.bad_marked')}`) : null,
      h('span', { class: 'range' }, ` · ${fmtTime(from)} — ${fmtTime(to)}`),
      h('span', { class: 'hint' }, ` · ${t('pt.zoom_hint')}`));
  }

  const onResize = () => { if (plot) plot.setSize({ width: Math.max(300, chartEl.clientWidth - 8), height: plot.height }); };
  window.addEventListener('resize', onResize);
  latest();
  drawAlarms();
  await load();
  const unsubscribe = can('alarms') ? live.subscribe(drawAlarms) : () => {};
  const timer = setInterval(() => {
    latest();
    // The shortest preset follows the present; zoomed or longer views stay where they are.
    if (preset === '1h' && range && Date.now() - range[1] < 30000) load();
  }, 5000);
  return () => { clearInterval(timer); unsubscribe(); window.removeEventListener('resize', onResize); if (plot) plot.destroy(); };
}

function pad(mn, mx) {
  const d = (mx - mn) || Math.abs(mx) || 1;
  return [mn - d * 0.08, mx + d * 0.08];
}

async function pickList(main) {
  const list = h('tbody', { id: 'point-rows' });
  const search = h('input', { type: 'search', id: 'point-search', placeholder: t('f.search') });
  fill(main, h('div', { class: 'points-page' }, h('div', { class: 'filters' }, h('h1', {}, t('nav.points')), search),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['point', 'device', 'enterprise', 'unit', 'limits'].map((c) => h('th', {}, t(`col.${c}`))))), list))));
  let gen = 0;
  async function draw() {
    const q = search.value.trim();
    const mine = ++gen;
    let rows;
    try { rows = await points(q); } catch (e) { fill(list, h('tr', {}, h('td', { colspan: 5, class: 'error' }, e.message))); return; }
    if (mine !== gen) return;
    rows = rows.slice(0, 500);
    fill(list, rows.length ? rows.map((p) => h('tr', {},
      h('td', {}, h('a', { href: `#/point/${p.key}` }, p.key)), h('td', {}, p.device), h('td', {}, p.enterprise), h('td', {}, p.unit),
      h('td', { class: 'num' }, ['ll', 'l', 'h', 'hh'].filter((k) => typeof p.limits[k] === 'number').map((k) => `${k.toUpperCase()} ${fmtNum(p.limits[k])}`).join('  '))))
      : h('tr', {}, h('td', { colspan: 5, class: 'empty' }, t('pt.none'))));
  }
  let timer = null;
  search.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(draw, 200); });
  await draw();
  return () => clearTimeout(timer);
}
