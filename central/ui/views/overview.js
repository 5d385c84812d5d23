// Overview / wall screen: active alarms by grade, the online-rate KPI (>= 90 % of all gateways,
// 100 % of those serving major-hazard installations) with the offenders named, enterprises ranked
// by open alarms, and the park layout (park-layout.json) coloured by the worst state of each object.

import * as live from '../live.js';
import { get } from '../api.js';
import { h, fill, fmtDuration } from '../dom.js';
import { t } from '../i18n.js';
import { can } from '../app.js';
import { GRADES, gradeBadge, sourceOf } from './alarms.js';

const KPI_ALL = 0.9;
const KPI_MAJOR = 1.0;

/** Gateway fields as the API names them, tolerant of the registry's older shape. */
export function gw(g) {
  return {
    id: g.id || g.gateway,
    enterprise: g.enterprise || '',
    online: g.online === true || g.status === 'online',
    lastSeen: g.last_seen_ms ?? null,
    majorHazard: !!g.major_hazard,
  };
}

let layoutCache = null;
async function layout() {
  if (!layoutCache) {
    const r = await fetch('/ui/park-layout.json', { credentials: 'same-origin' });
    layoutCache = r.ok ? await r.json() : { objects: [] };
  }
  return layoutCache;
}

export function render(main) {
  const gradesEl = h('section', { class: 'card grades', id: 'ov-grades' });
  const kpiEl = h('section', { class: 'card kpi', id: 'ov-online' });
  const entEl = h('section', { class: 'card enterprises', id: 'ov-enterprises' });
  const mapEl = h('section', { class: 'card map', id: 'ov-map' });
  fill(main, h('div', { class: 'overview' }, gradesEl, kpiEl, mapEl, entEl));
  let gateways = [];
  let enterprises = [];
  let lay = { objects: [] };

  function drawGrades() {
    const open = live.list();
    fill(gradesEl, h('h2', {}, t('ov.active_by_grade')),
      h('div', { class: 'grade-tiles' }, GRADES.map((g) => {
        const active = open.filter((a) => a.grade === g && a.active).length;
        const unacked = open.filter((a) => a.grade === g && !a.acked).length;
        return h('a', { class: `tile grade-${g}${unacked ? ' unacked' : ''}`, href: '#/alarms', dataset: { grade: g } },
          h('span', { class: 'tile-grade' }, g), h('span', { class: 'tile-n' }, String(active)),
          h('span', { class: 'tile-sub' }, t('ov.unacked', { n: unacked })));
      })));
  }

  function drawKpi() {
    const all = gateways.map(gw);
    const major = new Set(lay.objects.filter((o) => o.major_hazard).flatMap((o) => o.gateways || []));
    const isMajor = (g) => g.majorHazard || major.has(g.id);
    const rate = (list) => (list.length ? list.filter((g) => g.online).length / list.length : null);
    const overall = rate(all);
    const majors = all.filter(isMajor);
    const majorRate = rate(majors);
    const pct = (r) => (r === null ? '—' : `${(r * 100).toFixed(1)} %`);
    const offenders = all.filter((g) => !g.online).sort((a, b) => Number(isMajor(b)) - Number(isMajor(a)) || (a.lastSeen || 0) - (b.lastSeen || 0));
    fill(kpiEl, h('h2', {}, t('ov.online_rate')),
      h('div', { class: 'kpi-row' },
        h('div', { class: `kpi-figure ${overall === null || overall >= KPI_ALL ? 'ok' : 'bad'}`, id: 'kpi-overall' },
          h('span', { class: 'kpi-n' }, pct(overall)), h('span', { class: 'kpi-label' }, t('ov.overall', { target: '90 %' }))),
        h('div', { class: `kpi-figure ${majorRate === null || majorRate >= KPI_MAJOR ? 'ok' : 'bad'}`, id: 'kpi-major' },
          h('span', { class: 'kpi-n' }, pct(majorRate)), h('span', { class: 'kpi-label' }, t('ov.major', { target: '100 %' })))),
      h('p', { class: 'kpi-sub' }, t('ov.gateways_online', { on: all.filter((g) => g.online).length, n: all.length })),
      offenders.length ? h('table', { class: 'compact offenders' },
        h('thead', {}, h('tr', {}, h('th', {}, t('col.gateway')), h('th', {}, t('col.enterprise')), h('th', {}, t('col.offline_for')))),
        h('tbody', {}, offenders.slice(0, 12).map((g) => h('tr', { class: isMajor(g) ? 'major' : '' },
          h('td', {}, g.id, isMajor(g) ? h('span', { class: 'tag bad' }, t('ov.major_tag')) : null),
          h('td', {}, g.enterprise),
          h('td', { class: 'num' }, g.lastSeen ? fmtDuration(Date.now() - g.lastSeen) : t('never'))))))
        : h('p', { class: 'ok-msg' }, t('ov.all_online')));
  }

  function drawEnterprises() {
    const open = live.list();
    const by = new Map();
    for (const e of enterprises) by.set(e, { name: e, grades: {}, total: 0 });
    for (const a of open) {
      const name = a.enterprise || t('unknown');
      if (!by.has(name)) by.set(name, { name, grades: {}, total: 0 });
      const r = by.get(name);
      r.grades[a.grade] = (r.grades[a.grade] || 0) + 1;
      r.total += 1;
    }
    // Most S alarms first, then most A, ...; then most open alarms.
    const rank = (a, b) => {
      for (const g of GRADES) {
        const d = (b.grades[g] || 0) - (a.grades[g] || 0);
        if (d) return d;
      }
      return b.total - a.total || a.name.localeCompare(b.name);
    };
    const rows = [...by.values()].sort(rank);
    fill(entEl, h('h2', {}, t('ov.enterprises')),
      h('table', { class: 'compact', id: 'ov-ent-table' },
        h('thead', {}, h('tr', {}, h('th', {}, t('col.enterprise')), GRADES.map((g) => h('th', { class: 'num' }, gradeBadge(g))), h('th', { class: 'num' }, t('ov.open')))),
        h('tbody', {}, rows.slice(0, 20).map((r) => h('tr', { dataset: { enterprise: r.name } },
          h('td', {}, r.name), GRADES.map((g) => h('td', { class: `num${r.grades[g] ? ` grade-text-${g}` : ''}` }, r.grades[g] || '')),
          h('td', { class: 'num' }, String(r.total)))))));
  }

  function drawMap() {
    const open = live.list();
    const online = new Map(gateways.map(gw).map((g) => [g.id, g.online]));
    const svg = h('svg:svg', { viewBox: (lay.viewBox || [0, 0, 1000, 560]).join(' '), class: 'park', role: 'img', 'aria-label': t('ov.layout') });
    for (const o of lay.objects || []) {
      const related = open.filter((a) => {
        const s = sourceOf(a);
        return (o.points || []).includes(s.id) || (o.gateways || []).includes(s.gateway)
          || (o.kind === 'enterprise' && o.enterprise && a.enterprise === o.enterprise);
      });
      const worst = GRADES.find((g) => related.some((a) => a.grade === g && a.active));
      const offline = (o.gateways || []).some((g) => online.get(g) === false);
      const cls = `obj kind-${o.kind} ${worst ? `alarm-${worst}` : offline ? 'offline' : 'normal'}${related.some((a) => !a.acked) ? ' unacked' : ''}`;
      let shape;
      const s = o.shape || {};
      if (s.circle) shape = h('svg:circle', { cx: s.circle[0], cy: s.circle[1], r: s.circle[2] });
      else if (s.path) shape = h('svg:path', { d: s.path });
      else if (s.line) shape = h('svg:polyline', { points: s.line.map((p) => p.join(',')).join(' ') });
      else { const [x, y, w, hh] = s.rect || [0, 0, 10, 10]; shape = h('svg:rect', { x, y, width: w, height: hh, rx: 4 }); }
      const [lx, ly] = o.label_at || labelPoint(s);
      const g = h('svg:g', { class: cls, dataset: { id: o.id } }, h('svg:title', {}, `${o.label?.[0] ?? o.id}${worst ? ` · ${worst}` : ''}`), shape,
        o.label ? h('svg:text', { x: lx, y: ly, class: 'obj-label' }, labelOf(o)) : null);
      if (o.enterprise && can('alarms')) g.addEventListener('click', () => { location.hash = '#/alarms'; });
      svg.append(g);
    }
    fill(mapEl, h('h2', {}, t('ov.layout'), h('span', { class: 'legend' },
      ['normal', 'alarm-S', 'alarm-A', 'alarm-B', 'offline'].map((c) => h('span', { class: `lg ${c}` }, t(`lg.${c}`))))), svg);
  }

  function drawAll() { drawGrades(); drawKpi(); drawEnterprises(); drawMap(); }

  async function refresh() {
    try {
      const [g, e, l] = await Promise.all([
        get('/gateways', { limit: 1000 }).catch(() => ({ items: [] })),
        get('/enterprises', { limit: 1000 }).catch(() => ({ items: [] })),
        layout(),
      ]);
      gateways = g.items || g.gateways || [];
      enterprises = (e.items || []).map((x) => (typeof x === 'string' ? x : x.id || x.name)).filter(Boolean);
      lay = l;
    } catch (err) { console.error(err); }
    drawAll();
  }

  refresh();
  const timer = setInterval(refresh, 10000);
  const unsubscribe = can('alarms') ? live.subscribe(() => { drawGrades(); drawEnterprises(); drawMap(); }) : () => {};
  return () => { clearInterval(timer); unsubscribe(); };
}

function labelOf(o) {
  const l = o.label;
  if (!l) return o.id;
  if (typeof l === 'string') return l;
  return (document.documentElement.lang === 'en' ? l[1] : l[0]) || l[0];
}

function labelPoint(s) {
  if (s.circle) return [s.circle[0] + s.circle[2] + 4, s.circle[1] + 4];
  if (s.line) return [s.line[0][0], s.line[0][1] - 8];
  if (s.rect) return [s.rect[0] + 8, s.rect[1] + 22];
  return [0, 0];
}
