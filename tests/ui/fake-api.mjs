// A development stand-in for vigil-central's API (API-CONTRACT.md shapes) serving the UI files from
// central/ui/, for working on the screens without a park: `node tests/ui/fake-api.mjs [port]`.
// Users: admin, operator, auditor, ent-a (enterprise_user of ent-a); password `Vigil-2026!`.
// It is NOT used by the e2e test, which runs against the real vigil-central.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const UI = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../central/ui');
const PORT = Number(process.argv[2] || 8099);
const PW = 'Vigil-2026!';
const USERS = {
  admin: { role: 'park_admin', enterprises: null },
  operator: { role: 'operator', enterprises: null },
  auditor: { role: 'auditor', enterprises: null },
  'ent-a': { role: 'enterprise_user', enterprises: ['ent-a'] },
  secadmin: { role: 'security_admin', enterprises: null },
};
const sessions = new Map();
const fails = new Map();
const now = () => Date.now();
let seq = 0;
const clients = new Set();

const POINTS = [
  { key: 'gw-ent-a-01/TK101.LT', enterprise: 'ent-a', unit: '%', limits: { hh: 92, h: 85, l: 10, ll: 5 }, base: 70, amp: 18 },
  { key: 'gw-ent-a-01/GT201.LEL', enterprise: 'ent-a', unit: '%LEL', limits: { hh: 50, h: 25, l: null, ll: null }, base: 4, amp: 3 },
  { key: 'gw-ent-b-01/R301.PT', enterprise: 'ent-b', unit: 'MPa', limits: { hh: 1.8, h: 1.6, l: null, ll: null }, base: 1.2, amp: 0.3 },
];
const GATEWAYS = [
  { id: 'gw-ent-a-01', enterprise: 'ent-a', online: true, agent_version: '0.1.0', config_version: 'c-12', spool_depth: 3, oldest_unacked_age_ms: 800, dropped: { backfill: 0, live: 0 }, clock_offset_ms: 12 },
  { id: 'gw-ent-b-01', enterprise: 'ent-b', online: false, agent_version: '0.1.0', config_version: 'c-9', spool_depth: 2400, oldest_unacked_age_ms: 3600e3, dropped: { backfill: 120 }, clock_offset_ms: -2300 },
  { id: 'gw-demo-01', enterprise: 'ent-demo', online: true, agent_version: '0.1.0', config_version: 'c-3', spool_depth: 0, oldest_unacked_age_ms: null, dropped: {}, clock_offset_ms: 3 },
];
for (const g of GATEWAYS) g.last_seen_ms = now() - (g.online ? 2000 : 3 * 3600e3);

function mk(id, point, cond, grade, ent, value, limit, agoMs, extra = {}) {
  const t = now() - agoMs;
  return { id, key: { source: point.includes('/') ? { Point: point } : { Gateway: point }, condition: cond }, enterprise: ent, grade, active: true, acked: false,
    raised_ms: t, last_active_ms: t, cleared_ms: null, received_ms: t + 150, value, limit, activations: 1, longest_active_ms: agoMs,
    historical: false, replay: false, suppressed_by: null, stage: 'Raised', gas_level: null, false_alarm_reason: null, report: null,
    pickup_deadline_ms: t + (grade <= 'A' ? 180e3 : 600e3), supervisions: 0, ...extra };
}
const alarms = new Map([
  [1, mk(1, 'gw-ent-a-01/GT201.LEL', 'Hi', 'S', 'ent-a', 27.4, 25, 95e3)],
  [2, mk(2, 'gw-ent-b-01', 'GatewayOffline', 'B', 'ent-b', null, null, 3 * 3600e3, { acked: true, stage: 'Acknowledged', pickup_deadline_ms: null })],
  [3, mk(3, 'gw-ent-a-01/TK101.LT', 'Hi', 'A', 'ent-a', 86.1, 85, 12 * 60e3, { acked: true, stage: 'Verified', pickup_deadline_ms: null })],
  [4, mk(4, 'gw-ent-b-01/R301.PT', 'HiHi', 'B', 'ent-b', 1.83, 1.8, 40 * 60e3, { active: false, cleared_ms: now() - 30 * 60e3 })],
]);
const timelines = new Map([...alarms.keys()].map((id) => [id, [{ alarm_id: id, ts_ms: alarms.get(id).raised_ms, what: 'raised', actor: 'system', detail: '{}', historical: false }]]));
let nextId = 5;
const windows = [{ id: 1, enterprise: 'ent-a', points: ['gw-ent-a-01/GT201.LEL'], gateways: [], from_ms: now() + 3600e3, to_ms: now() + 5 * 3600e3, reason: '检测器标定', requested_by: 'ent-a', decided_by: null, status: 'Requested' }];
const thresholds = [{ id: 1, point: 'gw-ent-a-01/TK101.LT', before: { hh: 92, h: 85, l: 10, ll: 5, deadband: 1 }, after: { hh: 93, h: 86, l: 10, ll: 5, deadband: 1 }, requested_by: 'operator', reason: 'DCS 设定值已调整', requested_ms: now() - 7200e3, decided_by: null, status: 'Requested' }];

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type });
  res.end(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
}
const problem = (res, status, detail, extra = {}) => send(res, status, { type: 'about:blank', title: http.STATUS_CODES[status], status, detail, ...extra }, 'application/problem+json');

function principal(req) {
  const auth = req.headers.authorization || '';
  const cookie = (req.headers.cookie || '').match(/vigil_session=([^;]+)/);
  const tok = auth.startsWith('Bearer ') ? auth.slice(7) : cookie && cookie[1];
  return tok ? sessions.get(tok) : null;
}
const sees = (p, ent) => !p.enterprises || p.enterprises.includes(ent);

function publish(kind, a) {
  seq += 1;
  const change = { kind, alarm: a, ts_ms: now(), annunciate: true };
  for (const c of clients) if (sees(c.p, a.enterprise)) c.res.write(`event: alarm\nid: ${seq}\ndata: ${JSON.stringify(change)}\n\n`);
}

function series(p, from, to, bucket) {
  const out = [];
  for (let t = from; t < to; t += bucket) {
    const gap = Math.floor(t / 3600e3) % 17 === 3;
    const x = p.base + p.amp * Math.sin(t / 5.4e6) + (p.amp / 6) * Math.sin(t / 3.1e5);
    out.push(gap ? { start_ms: t, count: 0, min: 0, max: 0, avg: 0, first_ts: 0, first: 0, last_ts: 0, last: 0, stddev: 0 }
      : { start_ms: t, count: Math.max(1, Math.round(bucket / 1000)), min: x - p.amp / 8, max: x + p.amp / 8, avg: x, first_ts: t, first: x, last_ts: t + bucket - 1, last: x, stddev: p.amp / 20 });
  }
  return out;
}

async function body(req) {
  let s = '';
  for await (const c of req) s += c;
  try { return s ? JSON.parse(s) : {}; } catch { return {}; }
}

const STEP = { verify: [['Acknowledged'], 'Verified'], 'false-alarm': [['Acknowledged', 'Verified'], 'FalseAlarm'], dispatch: [['Verified'], 'Dispatched'],
  feedback: [['Dispatched'], 'Feedback'], review: [['Feedback', 'FalseAlarm'], 'Reviewed'], close: [['Reviewed'], 'Closed'] };

const server = http.createServer(async (req, res) => {
  const u = new URL(req.url, 'http://x');
  const p = u.pathname;
  if (p === '/' || p.startsWith('/ui')) {
    const rel = p === '/' || p === '/ui' || p === '/ui/' ? 'index.html' : p.slice(4);
    const file = path.join(UI, rel);
    if (!file.startsWith(UI) || !fs.existsSync(file)) return send(res, 404, 'no', 'text/plain');
    const ext = path.extname(file);
    return send(res, 200, fs.readFileSync(file), { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json' }[ext] || 'text/plain');
  }
  if (p === '/fake/cross') {
    // What the simulator does in the real test: a value crosses HH now.
    const id = nextId++;
    const a = mk(id, u.searchParams.get('point') || 'gw-ent-a-01/TK101.LT', 'HiHi', 'S', 'ent-a', 95, 92, 300);
    alarms.set(id, a);
    timelines.set(id, [{ alarm_id: id, ts_ms: a.raised_ms, what: 'raised', actor: 'system', detail: '{}', historical: false }]);
    publish('Raised', a);
    return send(res, 200, a);
  }
  if (!p.startsWith('/api/v1/')) return problem(res, 404, 'no route');
  const r = p.slice(7);
  if (r === '/auth/login' && req.method === 'POST') {
    const b = await body(req);
    const f = fails.get(b.user) || 0;
    if (f >= 5) return problem(res, 423, `account ${b.user} locked after 5 failed logins`, { locked_until_ms: now() + 15 * 60e3 });
    if (!USERS[b.user] || b.password !== PW) {
      fails.set(b.user, f + 1);
      return problem(res, 401, `wrong user or password; ${4 - f} attempts left before the account is locked`);
    }
    fails.delete(b.user);
    const tok = Math.random().toString(36).slice(2);
    const s = { user: b.user, ...USERS[b.user], expires_at_ms: now() + 8 * 3600e3, password_expires_at_ms: now() + 80 * 86400e3 };
    sessions.set(tok, s);
    res.setHeader('Set-Cookie', `vigil_session=${tok}; HttpOnly; SameSite=Strict; Path=/`);
    return send(res, 200, { token: tok, ...s });
  }
  const me = principal(req);
  if (!me) return problem(res, 401, 'authentication required');
  if (r === '/auth/me') return send(res, 200, me);
  if (r === '/auth/logout') {
    for (const [k, v] of sessions) if (v === me) sessions.delete(k);
    res.setHeader('Set-Cookie', 'vigil_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0');
    return send(res, 200, {});
  }
  if (r === '/alarms/stream') {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.write(': hello\n\n');
    const c = { res, p: me };
    clients.add(c);
    req.on('close', () => clients.delete(c));
    return undefined;
  }
  if (r === '/alarms') {
    const items = [...alarms.values()].filter((a) => sees(me, a.enterprise) && a.stage !== 'Closed');
    return send(res, 200, { items, next_cursor: null });
  }
  let m = r.match(/^\/alarms\/(\d+)\/timeline$/);
  if (m) return send(res, 200, { items: timelines.get(Number(m[1])) || [] });
  m = r.match(/^\/alarms\/(\d+)\/([\w-]+)$/);
  if (m && req.method === 'POST') {
    const a = alarms.get(Number(m[1]));
    if (!a || !sees(me, a.enterprise)) return problem(res, 404, 'no such alarm');
    const act = m[2];
    const b = await body(req);
    if (act === 'acknowledge') {
      if (a.acked) return problem(res, 409, 'already acknowledged');
      a.acked = true; a.pickup_deadline_ms = null; if (a.stage === 'Raised') a.stage = 'Acknowledged';
    } else if (STEP[act]) {
      if (!STEP[act][0].includes(a.stage)) return problem(res, 409, `${act} not allowed in stage ${a.stage}`);
      a.stage = STEP[act][1];
    } else if (act === 'report') a.report = b.name;
    else if (act === 'shelve') a.shelved_until_ms = b.until_ms;
    else if (act === 'unshelve') a.shelved_until_ms = null;
    timelines.get(a.id).push({ alarm_id: a.id, ts_ms: now(), what: act.replace('-', '_'), actor: me.user, detail: JSON.stringify(b), historical: false });
    publish({ Action: act }, a);
    return send(res, 200, a);
  }
  if (r === '/gateways') return send(res, 200, { items: GATEWAYS.filter((g) => sees(me, g.enterprise)), next_cursor: null });
  if (r === '/enterprises') return send(res, 200, { items: ['ent-a', 'ent-b', 'ent-demo'].filter((e) => sees(me, e)).map((id) => ({ id })), next_cursor: null });
  if (r === '/points') return send(res, 200, { items: POINTS.filter((x) => sees(me, x.enterprise)).map(({ key, enterprise, unit, limits }) => ({ key, enterprise, unit, limits })), next_cursor: null });
  if (r === '/latest') {
    const pt = POINTS.find((x) => x.key === u.searchParams.get('points')) || { ...POINTS[0], key: u.searchParams.get('points') };
    const t = now();
    return send(res, 200, { points: [{ point: pt.key, sample: { ts_ms: t - 800, value: pt.base + pt.amp * Math.sin(t / 5.4e6), quality: 0 } }] });
  }
  if (r === '/aggregate') {
    const pt = POINTS.find((x) => x.key === u.searchParams.get('point')) || { ...POINTS[0], key: u.searchParams.get('point') };
    const [from, to, b] = ['from', 'to', 'bucket_ms'].map((k) => Number(u.searchParams.get(k)));
    return send(res, 200, { point: pt.key, buckets: series(pt, from - (from % b), to, b) });
  }
  if (r === '/raw') {
    const from = Number(u.searchParams.get('from'));
    return send(res, 200, { samples: [{ ts_ms: from + 1200e3, value: 50, quality: 0x80000000 }, { ts_ms: from + 1260e3, value: 51, quality: 0x40000000 }] });
  }
  if (r === '/windows') return send(res, 200, { items: windows.filter((w) => sees(me, w.enterprise)), next_cursor: null });
  if (r === '/thresholds') return send(res, 200, { items: thresholds, next_cursor: null });
  if (r === '/kpis') {
    const items = ['ent-a', 'ent-b'].map((e, i) => ({ enterprise: e, from_ms: 0, to_ms: 0, alarms: 40 + 130 * i, per_hour: 1.7 + 5.4 * i, share_hours_over_3: 0.1 + 0.3 * i, floods: i, standing: 2 + 10 * i, stale: i, chattering: i ? ['gw-ent-b-01/R301.PT'] : [], top10: [['point:gw-ent-b-01/R301.PT', 60], ['gateway:gw-ent-b-01', 12]], offline: 3 * i, targets: { per_hour: 6, flood_per_10_min: 10, standing: 10, chattering: 0 } }));
    if (u.searchParams.get('format') === 'csv') return send(res, 200, 'enterprise,alarms\nent-a,40\n', 'text/csv');
    return send(res, 200, { items });
  }
  if (r === '/audit') return send(res, 200, { items: [{ seq: 1, ts_ms: now() - 60e3, actor: 'operator', action: 'acknowledge', target: 'alarm:3', detail: '{"comment":""}', hash: 'ab12cd34ef56ab12cd34ef56' }], next_cursor: null });
  if (r === '/api-calls') return send(res, 200, { items: [{ ts_ms: now() - 5e3, user: 'operator', role: 'operator', method: 'GET', path: '/api/v1/alarms', status: 200, latency_ms: 3, client: '127.0.0.1' }], next_cursor: null });
  return problem(res, 404, `no route ${r}`);
});

// A new S alarm every 40 s so the console has something live.
setInterval(() => {
  const id = nextId++;
  const a = mk(id, 'gw-ent-a-01/TK101.LT', 'HiHi', id % 2 ? 'S' : 'C', id % 3 ? 'ent-a' : 'ent-b', 93.2, 92, 0);
  alarms.set(id, a);
  timelines.set(id, [{ alarm_id: id, ts_ms: a.raised_ms, what: 'raised', actor: 'system', detail: '{}', historical: false }]);
  publish('Raised', a);
}, 40000);

server.listen(PORT, '127.0.0.1', () => console.log(`fake API and UI on http://127.0.0.1:${PORT}/`));
