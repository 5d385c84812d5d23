// Maintenance windows (fault-point suppression) and threshold change requests: the lists, a request
// form for roles that may ask, approve/reject for the park (never on one's own request).

import { get, post } from '../api.js';
import { h, fill, fmtTime, fmtNum, dialog, toast, toLocalInput } from '../dom.js';
import { t } from '../i18n.js';
import { can, session } from '../app.js';

const list = (s) => s.split(/[\s,，]+/).map((x) => x.trim()).filter(Boolean);
const num = (s) => (s === undefined || s.trim() === '' ? null : Number(s));
const limitsText = (l) => (l ? ['ll', 'l', 'h', 'hh'].filter((k) => typeof l[k] === 'number').map((k) => `${k.toUpperCase()} ${fmtNum(l[k])}`).join('  ') || '—' : '—');

export function render(main) {
  const winBody = h('tbody', { id: 'window-rows' });
  const thrBody = h('tbody', { id: 'threshold-rows' });
  fill(main, h('div', { class: 'windows-page' },
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, t('win.title')),
        can('request_window') ? h('button', { class: 'primary', id: 'request-window', onclick: requestWindow }, t('win.request')) : null),
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, ['id', 'enterprise', 'covers', 'from', 'to', 'reason', 'requested_by', 'status', ''].map((c) => h('th', {}, c ? t(`col.${c}`) : '')))),
        winBody))),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, t('thr.title')),
        can('request_threshold') ? h('button', { class: 'primary', id: 'request-threshold', onclick: requestThreshold }, t('thr.request')) : null),
      h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, ['id', 'point', 'before', 'after', 'reason', 'requested_by', 'requested', 'status', ''].map((c) => h('th', {}, c ? t(`col.${c}`) : '')))),
        thrBody)))));

  function decide(kind, item) {
    if (!can(kind === 'windows' ? 'decide_window' : 'decide_threshold') || item.status !== 'Requested') return null;
    const mine = item.requested_by === session.user;
    return h('td', { class: 'row-actions' },
      h('button', { class: 'primary', disabled: mine, title: mine ? t('win.not_own') : '', onclick: () => decision(kind, item, 'approve') }, t('approve')),
      h('button', { class: 'secondary', disabled: mine, onclick: () => decision(kind, item, 'reject') }, t('reject')));
  }

  async function decision(kind, item, what) {
    let body = {};
    if (what === 'reject') {
      const v = await dialog(`${t('reject')} #${item.id}`, [{ name: 'reason', type: 'textarea', label: t('f.reason'), required: true }], t('ok'), t('cancel'));
      if (!v) return;
      body = { reason: v.reason };
    }
    try { await post(`/${kind}/${item.id}/${what}`, body); toast(t('done', { what: t(what) })); refresh(); } catch (e) { toast(e.message, 'error'); }
  }

  async function requestWindow() {
    const ents = session.enterprises || [];
    const now = Date.now();
    const v = await dialog(t('win.request'), [
      ents.length > 1 || !ents.length
        ? (ents.length ? { name: 'enterprise', type: 'select', label: t('col.enterprise'), options: ents.map((e) => [e, e]) } : { name: 'enterprise', label: t('col.enterprise'), required: true })
        : { name: 'enterprise', type: 'select', label: t('col.enterprise'), options: [[ents[0], ents[0]]] },
      { name: 'points', label: t('win.points'), type: 'textarea' },
      { name: 'gateways', label: t('win.gateways') },
      { name: 'from', label: t('col.from'), type: 'datetime-local', value: toLocalInput(now), required: true },
      { name: 'to', label: t('col.to'), type: 'datetime-local', value: toLocalInput(now + 4 * 3600e3), required: true },
      { name: 'reason', label: t('f.reason'), type: 'textarea', required: true },
    ], t('ok'), t('cancel'));
    if (!v) return;
    try {
      await post('/windows', {
        enterprise: v.enterprise, points: list(v.points), gateways: list(v.gateways),
        from_ms: new Date(v.from).getTime(), to_ms: new Date(v.to).getTime(), reason: v.reason,
      });
      toast(t('done', { what: t('win.request') }));
      refresh();
    } catch (e) { toast(e.message, 'error'); }
  }

  async function requestThreshold() {
    const v = await dialog(t('thr.request'), [
      { name: 'point', label: t('col.point'), required: true },
      { name: 'hh', label: 'HH', type: 'number', step: 'any' }, { name: 'h', label: 'H', type: 'number', step: 'any' },
      { name: 'l', label: 'L', type: 'number', step: 'any' }, { name: 'll', label: 'LL', type: 'number', step: 'any' },
      { name: 'deadband', label: t('thr.deadband'), type: 'number', step: 'any', value: '0' },
      { name: 'reason', label: t('f.reason'), type: 'textarea', required: true },
    ], t('ok'), t('cancel'));
    if (!v) return;
    try {
      await post('/thresholds', {
        point: v.point.trim(), reason: v.reason,
        hh: num(v.hh), h: num(v.h), l: num(v.l), ll: num(v.ll), deadband: num(v.deadband) ?? undefined,
      });
      toast(t('done', { what: t('thr.request') }));
      refresh();
    } catch (e) { toast(e.message, 'error'); }
  }

  async function refresh() {
    try {
      const w = await get('/windows', { limit: 1000 });
      const items = (w.items || []).sort((a, b) => b.id - a.id);
      fill(winBody, items.length ? items.map((x) => h('tr', { dataset: { id: x.id } },
        h('td', {}, `#${x.id}`), h('td', {}, x.enterprise),
        h('td', {}, [...(x.gateways || []).map((g) => `${t('col.gateway')} ${g}`), ...(x.points || [])].join(', ')),
        h('td', {}, fmtTime(x.from_ms)), h('td', {}, fmtTime(x.to_ms)), h('td', { class: 'wrap' }, x.reason),
        h('td', {}, x.requested_by), h('td', {}, h('span', { class: `state-badge ws-${x.status}` }, t(`ws.${x.status}`)), x.decided_by ? ` (${x.decided_by})` : ''),
        decide('windows', x) || h('td'))) : h('tr', {}, h('td', { colspan: 9, class: 'empty' }, t('win.none'))));
    } catch (e) { fill(winBody, h('tr', {}, h('td', { colspan: 9, class: 'error' }, e.message))); }
    try {
      const r = await get('/thresholds', { limit: 1000 });
      const items = (r.items || []).sort((a, b) => b.id - a.id);
      fill(thrBody, items.length ? items.map((x) => h('tr', { dataset: { id: x.id } },
        h('td', {}, `#${x.id}`), h('td', {}, h('a', { href: `#/point/${x.point}` }, x.point)),
        h('td', { class: 'num' }, limitsText(x.before)), h('td', { class: 'num' }, limitsText(x.after)),
        h('td', { class: 'wrap' }, x.reason), h('td', {}, x.requested_by), h('td', {}, fmtTime(x.requested_ms)),
        h('td', {}, h('span', { class: `state-badge ws-${x.status}` }, t(`ws.${x.status}`)), x.decided_by ? ` (${x.decided_by})` : ''),
        decide('thresholds', x) || h('td'))) : h('tr', {}, h('td', { colspan: 9, class: 'empty' }, t('thr.none'))));
    } catch (e) { fill(thrBody, h('tr', {}, h('td', { colspan: 9, class: 'error' }, e.message))); }
  }
  refresh();
  return null;
}
