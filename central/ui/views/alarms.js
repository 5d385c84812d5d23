// The alarm console: live open alarms (highest grade first, newest first within a grade), filters,
// the selected alarm's facts, timeline and the closed-loop actions its stage allows for this role.

import * as live from '../live.js';
import { get, post } from '../api.js';
import { h, fill, fmtTime, fmtDuration, fmtNum, dialog, toast } from '../dom.js';
import { t } from '../i18n.js';
import { can, session } from '../app.js';

export const GRADES = ['S', 'A', 'B', 'C', 'D'];
export const CONDITIONS = ['HiHi', 'Hi', 'Lo', 'LoLo', 'RateOfChange', 'BadQuality', 'Stale', 'Frozen', 'Digital', 'GasLeak', 'GatewayOffline', 'DeviceOffline', 'SourceFault', 'DataLoss'];
export const STATES = ['ActiveUnacked', 'ActiveAcked', 'ReturnedUnacked', 'Normal'];

/** What an alarm is about: {kind: point|gateway|device, id, gateway, label}. */
export function sourceOf(a) {
  const s = a.key.source;
  if (s.Point !== undefined) return { kind: 'point', id: s.Point, gateway: s.Point.split('/')[0], label: s.Point };
  if (s.Gateway !== undefined) return { kind: 'gateway', id: s.Gateway, gateway: s.Gateway, label: s.Gateway };
  const [g, d] = s.Device;
  return { kind: 'device', id: `${g}/${d}`, gateway: g, label: `${g} / ${d}` };
}

/** The ISA-18.2 state of an alarm. */
export const stateOf = (a) => (a.active ? (a.acked ? 'ActiveAcked' : 'ActiveUnacked') : (a.acked ? 'Normal' : 'ReturnedUnacked'));

const shelvedUntil = (a) => a.shelved_until_ms || (a.shelve && a.shelve.until_ms) || null;

/** Suppressed by a maintenance window or shelved: recorded, but not ringing (ISA-18.2). */
export const isQuiet = (a) => !!a.suppressed_by || !!shelvedUntil(a);

/** Ringing alarms before quiet ones, then the highest grade, then the newest activation. */
export function sortAlarms(list) {
  return list.sort((x, y) => Number(isQuiet(x)) - Number(isQuiet(y))
    || GRADES.indexOf(x.grade) - GRADES.indexOf(y.grade)
    || y.last_active_ms - x.last_active_ms || y.id - x.id);
}

const SHELVE_FOR = [[15, '15m'], [60, '1h'], [240, '4h'], [480, '8h'], [1440, '24h']];
const VERIFY_HOW = ['video', 'trend', 'site', 'phone'];

// Each action asks only for what it needs; `when` mirrors the engine's state machine so the
// operator sees the next steps only (the server still answers 409 if the alarm moved meanwhile).
const ACTIONS = [
  { name: 'acknowledge', cap: 'act', when: (a) => !a.acked, fields: [] , body: () => ({ comment: '' }) },
  { name: 'verify', cap: 'act', when: (a) => a.stage === 'Acknowledged',
    fields: () => [{ name: 'how', type: 'select', label: t('f.how'), options: VERIFY_HOW.map((v) => [v, t(`how.${v}`)]) }] },
  { name: 'false-alarm', cap: 'act', when: (a) => a.stage === 'Acknowledged' || a.stage === 'Verified',
    fields: () => [{ name: 'reason', type: 'textarea', label: t('f.reason'), required: true }] },
  { name: 'dispatch', cap: 'act', when: (a) => a.stage === 'Verified',
    fields: (a) => [{ name: 'to', label: t('f.to'), value: a.enterprise || '', required: true }, { name: 'note', type: 'textarea', label: t('f.note') }] },
  { name: 'feedback', cap: 'feedback', when: (a) => a.stage === 'Dispatched',
    fields: () => [{ name: 'text', type: 'textarea', label: t('f.feedback'), required: true }] },
  { name: 'report', cap: 'act', when: (a) => a.stage !== 'Closed',
    fields: () => [{ name: 'name', label: t('f.report_name'), required: true }, { name: 'text', type: 'textarea', label: t('f.report_text') }] },
  { name: 'review', cap: 'act', when: (a) => a.stage === 'Feedback' || a.stage === 'FalseAlarm',
    fields: () => [{ name: 'note', type: 'textarea', label: t('f.note') }] },
  { name: 'close', cap: 'act', when: (a) => a.stage === 'Reviewed' && !a.active && a.acked,
    fields: () => [{ name: 'note', type: 'textarea', label: t('f.note') }] },
  { name: 'shelve', cap: 'act', when: (a) => !shelvedUntil(a) && a.stage !== 'Closed',
    fields: () => [{ name: 'minutes', type: 'select', label: t('f.shelve_for'), options: SHELVE_FOR.map(([m, l]) => [String(m), l]), value: '60' },
      { name: 'reason', type: 'textarea', label: t('f.reason'), required: true }],
    body: (v) => ({ until_ms: Date.now() + Number(v.minutes) * 60000, reason: v.reason }) },
  { name: 'unshelve', cap: 'act', when: (a) => !!shelvedUntil(a), fields: [], body: () => ({}) },
];

// Filters survive leaving and returning to the console.
const filters = { grades: new Set(GRADES), state: '', enterprise: '', condition: '', text: '' };
let selected = null;

export function gradeBadge(g) { return h('span', { class: `grade grade-${g}` }, g); }

export function render(main, params) {
  if (params) selected = Number(params) || selected;
  const tbody = h('tbody', { id: 'alarm-rows' });
  const detail = h('aside', { class: 'alarm-detail', id: 'alarm-detail' });
  const counts = h('div', { class: 'grade-counts', id: 'grade-counts' });
  const entSelect = h('select', { id: 'f-enterprise', onchange: (e) => { filters.enterprise = e.target.value; draw(); } });
  const scoped = session.enterprises && session.enterprises.length <= 1;

  const bar = h('div', { class: 'filters' },
    h('div', { class: 'grade-filter' }, GRADES.map((g) => h('label', { class: `chip grade-${g}` },
      h('input', { type: 'checkbox', checked: filters.grades.has(g), onchange: (e) => { if (e.target.checked) filters.grades.add(g); else filters.grades.delete(g); draw(); } }),
      g))),
    h('select', { id: 'f-state', 'aria-label': t('col.state'), onchange: (e) => { filters.state = e.target.value; draw(); } },
      h('option', { value: '' }, t('f.all_states')),
      STATES.map((s) => h('option', { value: s, selected: filters.state === s }, t(`state.${s}`)))),
    h('select', { id: 'f-condition', 'aria-label': t('col.condition'), onchange: (e) => { filters.condition = e.target.value; draw(); } },
      h('option', { value: '' }, t('f.all_types')),
      CONDITIONS.map((c) => h('option', { value: c, selected: filters.condition === c }, t(`cond.${c}`)))),
    scoped ? null : entSelect,
    h('input', { id: 'f-text', type: 'search', placeholder: t('f.search'), value: filters.text, oninput: (e) => { filters.text = e.target.value.trim().toLowerCase(); draw(); } }),
    counts);

  const table = h('table', { class: 'alarms' },
    h('thead', {}, h('tr', {},
      ['grade', 'state', 'time', 'source', 'condition', 'value', 'enterprise', 'stage', 'pickup'].map((c) => h('th', { class: `c-${c}` }, t(`col.${c}`))))),
    tbody);

  fill(main, h('div', { class: 'console' }, bar, h('div', { class: 'console-body' }, h('div', { class: 'table-wrap' }, table), detail)));

  function visible() {
    return sortAlarms(live.list().filter((a) => filters.grades.has(a.grade)
      && (!filters.state || stateOf(a) === filters.state)
      && (!filters.enterprise || a.enterprise === filters.enterprise)
      && (!filters.condition || a.key.condition === filters.condition)
      && (!filters.text || sourceOf(a).label.toLowerCase().includes(filters.text))));
  }

  function row(a) {
    const src = sourceOf(a);
    const st = stateOf(a);
    return h('tr', {
      class: `grade-${a.grade} st-${st}${isQuiet(a) ? ' row-quiet' : ''}${a.id === selected ? ' selected' : ''}`,
      dataset: { id: a.id, source: src.id, condition: a.key.condition },
      onclick: () => { selected = a.id; draw(); drawDetail(true); },
    },
    h('td', { class: 'c-grade' }, gradeBadge(a.grade)),
    h('td', { class: 'c-state state' }, h('span', { class: `state-badge st-${st}` }, t(`state.${st}`)), shelvedUntil(a) ? h('span', { class: 'tag' }, t('shelved')) : null,
      a.suppressed_by ? h('span', { class: 'tag', title: `#${a.suppressed_by}` }, t('suppressed')) : null),
    h('td', { class: 'c-time' }, fmtTime(a.last_active_ms)),
    h('td', { class: 'c-source' }, src.kind === 'point' ? h('a', { href: `#/point/${src.id}`, onclick: (e) => e.stopPropagation() }, src.label) : src.label),
    h('td', { class: 'c-condition' }, t(`cond.${a.key.condition}`)),
    h('td', { class: 'c-value num' }, fmtNum(a.value), a.limit !== null && a.limit !== undefined ? h('span', { class: 'limit' }, ` / ${fmtNum(a.limit)}`) : null),
    h('td', { class: 'c-enterprise' }, a.enterprise || ''),
    h('td', { class: 'c-stage' }, t(`stage.${a.stage}`)),
    h('td', { class: 'c-pickup' }, a.pickup_deadline_ms ? h('span', { class: 'countdown', dataset: { deadline: a.pickup_deadline_ms } }) : ''));
  }

  let pending = false;
  function draw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawNow(); });
  }

  function drawNow() {
    const all = live.list();
    const rows = visible();
    fill(tbody, rows.length ? rows.map(row) : h('tr', {}, h('td', { colspan: 9, class: 'empty' }, t('alarms.none'))));
    const ents = [...new Set(all.map((a) => a.enterprise).filter(Boolean))].sort();
    fill(entSelect, h('option', { value: '' }, t('f.all_enterprises')), ents.map((e) => h('option', { value: e, selected: filters.enterprise === e }, e)));
    fill(counts, GRADES.map((g) => {
      const n = all.filter((a) => a.grade === g && a.active).length;
      const un = all.filter((a) => a.grade === g && !a.acked).length;
      return h('span', { class: `count grade-${g}${un ? ' unacked' : ''}`, title: t('alarms.count_title') }, `${g} ${n}`, un ? h('small', {}, ` (${un})`) : null);
    }));
    countdowns();
  }

  function countdowns() {
    const now = Date.now();
    for (const el of tbody.querySelectorAll('.countdown')) {
      const left = Number(el.dataset.deadline) - now;
      el.textContent = left >= 0 ? fmtDuration(left) : `${t('overdue')} ${fmtDuration(-left)}`;
      el.classList.toggle('overdue', left < 0);
    }
  }

  let timelineFor = null;
  async function drawDetail(reloadTimeline) {
    const a = selected !== null ? live.byId(selected) : null;
    if (!a) { fill(detail, h('p', { class: 'empty' }, t('alarms.select'))); timelineFor = null; return; }
    const src = sourceOf(a);
    const st = stateOf(a);
    const facts = [
      ['col.state', t(`state.${st}`)], ['col.stage', t(`stage.${a.stage}`)], ['col.enterprise', a.enterprise || '—'],
      ['col.value', `${fmtNum(a.value)}${a.limit !== null && a.limit !== undefined ? ` (${t('limit')} ${fmtNum(a.limit)})` : ''}`],
      ['d.raised', fmtTime(a.raised_ms)], ['d.last_active', fmtTime(a.last_active_ms)], ['d.cleared', fmtTime(a.cleared_ms) || '—'],
      ['d.received', fmtTime(a.received_ms)], ['d.activations', a.activations],
      ['d.pickup', a.pickup_deadline_ms ? fmtTime(a.pickup_deadline_ms) : '—'], ['d.supervisions', a.supervisions],
      a.gas_level ? ['d.gas_level', t(`gas.${a.gas_level}`)] : null,
      a.false_alarm_reason ? ['d.false_reason', a.false_alarm_reason] : null,
      a.report ? ['d.report', a.report] : null,
      shelvedUntil(a) ? ['d.shelved_until', fmtTime(shelvedUntil(a))] : null,
      a.suppressed_by ? ['d.suppressed', `#${a.suppressed_by}`] : null,
    ].filter(Boolean);
    const actions = ACTIONS.filter((x) => can(x.cap) && x.when(a));
    const timeline = h('ol', { class: 'timeline', id: 'alarm-timeline' });
    fill(detail,
      h('div', { class: 'detail-head' }, gradeBadge(a.grade), h('h2', {}, src.kind === 'point' ? h('a', { href: `#/point/${src.id}` }, src.label) : src.label),
        h('span', { class: 'cond' }, t(`cond.${a.key.condition}`)), h('span', { class: 'alarm-id' }, `#${a.id}`)),
      h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', {}, t(k)), h('dd', {}, String(v))])),
      actions.length ? h('div', { class: 'actions' }, actions.map((x) => h('button', { class: x.name === 'acknowledge' ? 'primary' : 'secondary', id: `act-${x.name}`, onclick: () => act(a, x) }, t(`act.${x.name}`)))) : null,
      h('h3', {}, t('timeline')), timeline);
    if (reloadTimeline || timelineFor !== a.id) {
      timelineFor = a.id;
      try {
        const r = await get(`/alarms/${a.id}/timeline`);
        if (timelineFor !== a.id) return;
        fill(timeline, (r.items || []).slice().reverse().map((e) => h('li', { class: e.historical ? 'historical' : '' },
          h('time', {}, fmtTime(e.ts_ms)), h('b', {}, t(`tl.${e.what}`, {}, e.what)), h('span', { class: 'actor' }, e.actor),
          e.what === 'detection' ? detectionDetail(e.detail)
            : e.detail && e.detail !== '{}' ? h('span', { class: 'tl-detail' }, prettyDetail(e.detail)) : null)));
      } catch (e) { fill(timeline, h('li', { class: 'error' }, e.message)); }
    }
  }

  async function act(a, x) {
    const fields = typeof x.fields === 'function' ? x.fields(a) : x.fields;
    let values = {};
    if (fields.length) {
      values = await dialog(`${t(`act.${x.name}`)} · ${sourceOf(a).label}`, fields, t('ok'), t('cancel'));
      if (!values) return;
    }
    try {
      const updated = await post(`/alarms/${a.id}/${x.name}`, x.body ? x.body(values) : values);
      if (updated && typeof updated.id === 'number') live.put(updated);
      toast(t('done', { what: t(`act.${x.name}`) }));
      drawDetail(true);
    } catch (e) {
      toast(`${t(`act.${x.name}`)}: ${e.message}`, 'error');
    }
  }

  const unsubscribe = live.subscribe((change) => {
    draw();
    if (!change || (selected !== null && change.alarm && change.alarm.id === selected)) drawDetail(!!change);
  });
  const timer = setInterval(countdowns, 1000);
  return () => { unsubscribe(); clearInterval(timer); };
}

// A camera's detection on the timeline: what it saw and where, and its snapshot (served by the
// evidence store under its SHA-256; the session cookie authorises the image request).
function detectionDetail(text) {
  let d;
  try { d = JSON.parse(text); } catch { return h('span', { class: 'tl-detail' }, text); }
  const loc = d.location || {};
  const where = [
    loc.preset !== null && loc.preset !== undefined ? t('det.preset', { n: loc.preset }) : null,
    typeof loc.pan === 'number' ? t('det.pan', { v: fmtNum(loc.pan, 1) }) : null,
    typeof loc.tilt === 'number' ? t('det.tilt', { v: fmtNum(loc.tilt, 1) }) : null,
  ].filter(Boolean).join(' ');
  const unit = d.unit === 'LelM' ? 'LEL·m' : d.unit === 'PpmM' ? 'ppm·m' : '';
  const text2 = [
    `${t('det.camera')} ${d.camera}`, `${d.gas} ${fmtNum(d.concentration)} ${unit}`,
    typeof d.confidence === 'number' ? t('det.confidence', { v: fmtNum(d.confidence * 100, 0) }) : null,
    where || null,
  ].filter(Boolean).join(' · ');
  const src = d.evidence ? `/api/v1/evidence/${d.evidence}` : null;
  return h('span', { class: 'tl-detail' }, text2,
    src ? h('a', { class: 'evidence', href: src, target: '_blank', rel: 'noopener', title: t('det.open_image') },
      h('img', { src, alt: t('det.snapshot'), loading: 'lazy' })) : h('span', { class: 'muted' }, ` · ${t('det.no_image')}`));
}

function prettyDetail(text) {
  try {
    const v = JSON.parse(text);
    // Times (`*_ms` keys holding epoch milliseconds) are shown as local times, not raw numbers.
    const show = (k, x) => (typeof x === 'object' ? JSON.stringify(x) : /_ms$/.test(k) && typeof x === 'number' && x > 1e11 ? fmtTime(x) : x);
    // Known keys in the operator's language, others as they are; booleans as yes/no.
    const label = (k) => t(`dk.${k}`, {}, k);
    const val = (k, x) => (typeof x === 'boolean' ? t(x ? 'yes' : 'no') : show(k, x));
    if (v && typeof v === 'object') return Object.entries(v).filter(([, x]) => x !== '' && x !== null).map(([k, x]) => `${label(k)}: ${val(k, x)}`).join('; ');
  } catch { /* plain text */ }
  return text;
}
