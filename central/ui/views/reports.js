// Reports: alarm-load KPIs per enterprise with the EEMUA 191 targets beside them, and for auditors
// the audit log and API-call log; each exportable as CSV (the server renders the CSV).

import { get, download } from '../api.js';
import { h, fill, fmtTime, fmtNum, toLocalInput } from '../dom.js';
import { t } from '../i18n.js';
import { can } from '../app.js';

const RANGES = [['24h', 86400e3], ['7d', 7 * 86400e3], ['30d', 30 * 86400e3]];
let rangeKey = '24h';

export function render(main) {
  const sections = [];
  if (can('kpi')) sections.push(kpiSection());
  if (can('audit')) sections.push(logSection('/audit', 'audit'), logSection('/api-calls', 'api_calls'));
  fill(main, h('div', { class: 'reports-page' }, sections));
  return null;
}

function kpiSection() {
  const body = h('div', { id: 'kpi-table' });
  const from = h('input', { type: 'datetime-local', id: 'kpi-from' });
  const to = h('input', { type: 'datetime-local', id: 'kpi-to' });
  const setRange = (key) => {
    rangeKey = key;
    const span = RANGES.find(([k]) => k === key)[1];
    const now = Date.now();
    from.value = toLocalInput(now - span);
    to.value = toLocalInput(now);
    load();
  };
  const range = () => ({ from_ms: new Date(from.value).getTime(), to_ms: new Date(to.value).getTime() });

  async function load() {
    fill(body, t('loading'));
    try {
      const r = await get('/kpis', { ...range(), format: 'json' });
      const items = r.items || r.reports || (Array.isArray(r) ? r : []);
      fill(body, table(items));
    } catch (e) { fill(body, h('p', { class: 'error' }, e.message)); }
  }

  function table(items) {
    if (!items.length) return h('p', { class: 'empty' }, t('kpi.none'));
    const tg = items[0].targets || {};
    const cell = (v, target, digits = 2) => h('td', { class: `num${typeof target === 'number' && v > target ? ' over' : ''}` }, fmtNum(v, digits));
    return h('table', {},
      h('thead', {}, h('tr', {},
        h('th', {}, t('col.enterprise')), h('th', { class: 'num' }, t('kpi.alarms')),
        h('th', { class: 'num' }, t('kpi.per_hour'), h('small', {}, ` ≤ ${fmtNum(tg.per_hour)}`)),
        h('th', { class: 'num' }, t('kpi.hours_over_3')),
        h('th', { class: 'num' }, t('kpi.floods'), h('small', {}, ` (>${tg.flood_per_10_min ?? 10}/10 min) = 0`)),
        h('th', { class: 'num' }, t('kpi.standing'), h('small', {}, ` ≤ ${tg.standing ?? '—'}`)),
        h('th', { class: 'num' }, t('kpi.stale')),
        h('th', { class: 'num' }, t('kpi.chattering'), h('small', {}, ` ≤ ${tg.chattering ?? 0}`)),
        h('th', { class: 'num' }, t('kpi.offline')), h('th', {}, t('kpi.top')))),
      h('tbody', {}, items.map((k) => h('tr', {},
        h('td', {}, k.enterprise || t('unknown')), h('td', { class: 'num' }, String(k.alarms)),
        cell(k.per_hour, tg.per_hour), h('td', { class: 'num' }, `${fmtNum(k.share_hours_over_3 * 100, 1)} %`),
        cell(k.floods, 0, 0), cell(k.standing, tg.standing, 0), h('td', { class: 'num' }, String(k.stale)),
        cell((k.chattering || []).length, tg.chattering, 0), h('td', { class: 'num' }, String(k.offline)),
        h('td', { class: 'wrap small' }, (k.top10 || []).slice(0, 3).map(([s, n]) => `${s} (${n})`).join(', '))))));
  }

  from.addEventListener('change', load);
  to.addEventListener('change', load);
  const section = h('section', { class: 'card' },
    h('div', { class: 'card-head' }, h('h2', {}, t('kpi.title')),
      h('div', { class: 'presets' }, RANGES.map(([k]) => h('button', { class: 'secondary', onclick: () => setRange(k) }, t(`range.${k}`)))),
      from, to,
      h('button', { class: 'primary', id: 'kpi-csv', onclick: () => download('/kpis', { ...range(), format: 'csv' }, `vigil-kpi-${from.value}-${to.value}.csv`) }, t('csv'))),
    body);
  setRange(rangeKey);
  return section;
}

/** A paged log (audit or API calls): columns from the records' own fields. */
function logSection(path, name) {
  const body = h('div', { class: 'table-wrap log' });
  let cursor = null;
  let rows = [];
  const more = h('button', { class: 'secondary', onclick: () => load(false) }, t('more'));

  async function load(first) {
    if (first) { rows = []; cursor = null; }
    try {
      const r = await get(path, { limit: 200, cursor });
      rows.push(...(r.items || []));
      cursor = r.next_cursor || null;
      draw();
    } catch (e) { fill(body, h('p', { class: 'error' }, e.message)); }
  }

  function draw() {
    if (!rows.length) { fill(body, h('p', { class: 'empty' }, t('log.none'))); return; }
    const cols = Object.keys(rows[0]).filter((k) => !/hash/.test(k) || k === 'hash');
    fill(body, h('table', { class: 'compact' },
      h('thead', {}, h('tr', {}, cols.map((c) => h('th', {}, c)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, cols.map((c) => {
        const v = r[c];
        const text = /_ms$/.test(c) && typeof v === 'number' && v > 1e11 ? fmtTime(v) : v !== null && typeof v === 'object' ? JSON.stringify(v) : v ?? '';
        return h('td', { class: c === 'hash' ? 'mono small' : c === 'detail' ? 'wrap small' : '' }, c === 'hash' ? String(text).slice(0, 12) : String(text));
      }))))), cursor ? more : null);
  }

  load(true);
  return h('section', { class: 'card', id: `log-${name}` },
    h('div', { class: 'card-head' }, h('h2', {}, t(`log.${name}`)),
      h('button', { class: 'secondary', onclick: () => load(true) }, t('refresh')),
      h('button', { class: 'primary', onclick: () => download(path, { format: 'csv' }, `vigil-${name}.csv`) }, t('csv'))),
    body);
}
