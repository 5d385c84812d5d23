// Gateways and devices: status, last seen, spool depth, oldest unacknowledged age, dropped counts,
// clock offset, agent and config version, as far as central knows them (offline first).

import { get } from '../api.js';
import { h, fill, fmtTime, fmtDuration, fmtNum } from '../dom.js';
import { t } from '../i18n.js';
import { gw } from './overview.js';

const dash = (v) => (v === null || v === undefined || v === '' ? '—' : v);

// `dropped` is the gateway's cumulative drop counters per priority class, each
// `{batches, samples, events}`: the cell shows the totals, the tooltip the split per class.
function droppedCell(g) {
  const d = g.dropped;
  if (d === null || d === undefined || typeof d !== 'object') return h('td', { class: 'num' }, '—');
  const classes = Object.entries(d).filter(([, c]) => c && typeof c === 'object');
  const sum = (f) => classes.reduce((n, [, c]) => n + (Number(c[f]) || 0), 0);
  const samples = sum('samples');
  const events = sum('events');
  const title = classes.map(([k, c]) => `${t(`gw.class.${k}`)}: ${t('gw.dropped_detail', { b: c.batches || 0, s: c.samples || 0, e: c.events || 0 })}`).join('\n');
  const text = samples || events ? t('gw.dropped_totals', { s: fmtNum(samples, 0), e: fmtNum(events, 0) }) : '0';
  return h('td', { class: `num${events ? ' warn-text' : ''}`, title }, text);
}

// `spool_batches` counts unacknowledged batches per priority class (alarm/event, live, backfill).
function spoolCell(g) {
  const b = g.spool_batches;
  if (Array.isArray(b)) {
    const total = b.reduce((x, y) => x + y, 0);
    const bytes = typeof g.spool_bytes === 'number' ? ` · ${fmtNum(g.spool_bytes / 1024, 1)} KiB` : '';
    return h('td', { class: 'num', title: `${t('gw.spool_split')}: ${b.join(' / ')}` }, `${total}${bytes}`);
  }
  return h('td', { class: 'num' }, dash(g.spool_depth));
}

export function render(main) {
  const tbody = h('tbody', { id: 'gateway-rows' });
  const summary = h('span', { class: 'summary' });
  const search = h('input', { type: 'search', placeholder: t('f.search') });
  fill(main, h('div', { class: 'gateways-page' },
    h('div', { class: 'filters' }, h('h1', {}, t('nav.gateways')), search, summary),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['gateway', 'enterprise', 'status', 'last_seen', 'spool', 'oldest_unacked', 'dropped', 'clock_offset', 'agent', 'config'].map((c) => h('th', {}, t(`col.${c}`))))),
      tbody))));
  let items = [];

  function draw() {
    const q = search.value.trim().toLowerCase();
    const rows = items.filter((g) => !q || JSON.stringify(g).toLowerCase().includes(q))
      .sort((a, b) => Number(gw(a).online) - Number(gw(b).online) || String(gw(a).id).localeCompare(String(gw(b).id)));
    const on = items.filter((g) => gw(g).online).length;
    summary.textContent = t('ov.gateways_online', { on, n: items.length });
    fill(tbody, rows.length ? rows.map((g) => {
      const x = gw(g);
      const age = x.lastSeen ? Date.now() - x.lastSeen : null;
      const offset = g.clock_offset_ms;
      return h('tr', { class: x.online ? '' : 'row-bad', dataset: { gateway: x.id } },
        h('td', {}, x.id), h('td', {}, x.enterprise),
        h('td', {}, h('span', { class: `state-badge ${x.online ? 'ok' : 'bad'}` }, t(x.online ? 'online' : 'offline'))),
        h('td', { title: fmtTime(x.lastSeen) }, age === null ? t('never') : t('ago', { d: fmtDuration(age) })),
        spoolCell(g),
        h('td', { class: 'num' }, g.oldest_unacked_age_ms !== null && g.oldest_unacked_age_ms !== undefined ? fmtDuration(g.oldest_unacked_age_ms) : '—'),
        droppedCell(g),
        h('td', { class: `num${typeof offset === 'number' && Math.abs(offset) > 1000 ? ' warn-text' : ''}` }, typeof offset === 'number' ? `${fmtNum(offset, 0)} ms` : '—'),
        h('td', {}, dash(g.agent_version)), h('td', {}, dash(g.config_version)));
    }) : h('tr', {}, h('td', { colspan: 10, class: 'empty' }, t('gw.none'))));
  }

  async function refresh() {
    try {
      const r = await get('/gateways', { limit: 1000 });
      items = r.items || r.gateways || [];
      draw();
    } catch (e) { fill(tbody, h('tr', {}, h('td', { colspan: 10, class: 'error' }, e.message))); }
  }
  search.addEventListener('input', draw);
  refresh();
  const timer = setInterval(refresh, 10000);
  return () => clearInterval(timer);
}
