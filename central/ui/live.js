// The live set of open alarms shared by the console and the overview: the list from
// GET /alarms?open=true, kept current by the Server-Sent Events of /alarms/stream (the browser
// resends Last-Event-ID on reconnect; `resync` or a failed stream makes us fetch the list again).

import { getAll } from './api.js';
import { chime, muted } from './sound.js';

const alarms = new Map();
const listeners = new Set();
let source = null;
let status = 'idle';
let retry = null;
let ring = null;
/** Time the last change arrived (performance.now()), for the e2e test's latency figure. */
export const seen = new Map();

/** Calls `f(change|null)` now and after every change; returns the unsubscribe function. */
export function subscribe(f) {
  listeners.add(f);
  f(null);
  return () => listeners.delete(f);
}

function emit(change) {
  for (const f of listeners) {
    try { f(change); } catch (e) { console.error(e); }
  }
}

/** The open alarms. */
export const list = () => [...alarms.values()];
export const byId = (id) => alarms.get(id);
/** 'live', 'connecting', 'reconnecting' or 'idle'. */
export const connection = () => status;

function setStatus(s) {
  if (s !== status) { status = s; emit(null); }
}

/** Replaces one alarm by the copy an action answered (so the screen changes before the event). */
export function put(alarm) {
  if (alarm.stage === 'Closed') alarms.delete(alarm.id); else alarms.set(alarm.id, alarm);
  emit(null);
}

async function reload() {
  const items = await getAll('/alarms', { open: true });
  alarms.clear();
  for (const a of items) if (a.stage !== 'Closed') alarms.set(a.id, a);
  emit(null);
}

const RINGING = new Set(['Raised', 'Reactivated', 'Promoted', 'Reannunciated', 'Supervision', 'GasLevelRaised']);

function apply(change) {
  const a = change.alarm;
  if (!a || typeof a.id !== 'number') return;
  if (!seen.has(a.id)) seen.set(a.id, Date.now());
  if (a.stage === 'Closed') alarms.delete(a.id); else alarms.set(a.id, a);
  const kind = typeof change.kind === 'string' ? change.kind : Object.keys(change.kind || {})[0];
  if (change.annunciate && (a.grade === 'S' || a.grade === 'A') && RINGING.has(kind)) chime(a.grade);
  emit(change);
}

function open() {
  setStatus(status === 'idle' ? 'connecting' : 'reconnecting');
  source = new EventSource('/api/v1/alarms/stream', { withCredentials: true });
  source.addEventListener('alarm', (e) => {
    try { apply(JSON.parse(e.data)); } catch (err) { console.error('bad alarm event', err); }
  });
  source.addEventListener('resync', () => { reload().catch(console.error); });
  source.onopen = () => setStatus('live');
  source.onerror = () => {
    // The browser reconnects by itself unless the answer was an HTTP error (readyState CLOSED):
    // then reopen after a pause and refetch the list, since events may have been missed.
    if (source && source.readyState === EventSource.CLOSED) {
      source.close();
      source = null;
      setStatus('reconnecting');
      clearTimeout(retry);
      retry = setTimeout(() => { reload().then(open, () => { retry = setTimeout(open, 5000); }); }, 3000);
    } else {
      setStatus('reconnecting');
    }
  };
}

/** Starts the list and the stream (idempotent). */
export async function start() {
  if (source || retry) return;
  await reload();
  open();
  // While an S or A alarm stays active and unacknowledged the room hears it again every 20 s.
  ring = setInterval(() => {
    if (muted()) return;
    const waiting = list().filter((a) => a.active && !a.acked && (a.grade === 'S' || a.grade === 'A'));
    if (waiting.length) chime(waiting.some((a) => a.grade === 'S') ? 'S' : 'A');
  }, 20000);
}

/** Stops everything (logout). */
export function stop() {
  if (source) source.close();
  source = null;
  clearTimeout(retry);
  retry = null;
  clearInterval(ring);
  alarms.clear();
  status = 'idle';
}
