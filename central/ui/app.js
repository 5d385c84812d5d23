// The application shell: session, role capabilities, navigation and the hash router
// (#/alarms, #/overview, #/point/<gateway/point>, ...). Screens live in views/*.js; each exports
// `render(main, params)` returning an optional cleanup function.

import { get, post, setToken, onUnauthorized } from './api.js';
import { h, fill, dialog, toast } from './dom.js';
import { t, lang, setLang, onLang } from './i18n.js';
import * as live from './live.js';
import * as sound from './sound.js';

/** The logged-in user ({user, role, enterprises, expires_at_ms, password_expires_at_ms}) or null. */
export let session = null;

// What each role may see and do. The server enforces the same rules; the UI only hides what the
// role cannot use (API-CONTRACT.md: roles).
const CAPS = {
  park_admin: ['overview', 'alarms', 'act', 'feedback', 'points', 'gateways', 'windows', 'request_window', 'decide_window', 'request_threshold', 'decide_threshold', 'kpi'],
  operator: ['overview', 'alarms', 'act', 'feedback', 'points', 'gateways', 'windows', 'request_window', 'decide_window', 'request_threshold', 'kpi'],
  auditor: ['alarms', 'windows', 'kpi', 'audit'],
  enterprise_user: ['overview', 'alarms', 'feedback', 'points', 'gateways', 'windows', 'request_window'],
  field_technician: ['points', 'gateways'],
  security_admin: ['users'],
};

/** Whether the current user's role has capability `cap`. */
export const can = (cap) => !!session && (CAPS[session.role] || []).includes(cap);

const SCREENS = [
  { path: 'overview', cap: 'overview', label: 'nav.overview', load: () => import('./views/overview.js') },
  { path: 'alarms', cap: 'alarms', label: 'nav.alarms', load: () => import('./views/alarms.js') },
  { path: 'point', cap: 'points', label: 'nav.points', load: () => import('./views/point.js') },
  { path: 'gateways', cap: 'gateways', label: 'nav.gateways', load: () => import('./views/gateways.js') },
  { path: 'windows', cap: 'windows', label: 'nav.windows', load: () => import('./views/windows.js') },
  { path: 'reports', cap: 'kpi', alt: 'audit', label: 'nav.reports', load: () => import('./views/reports.js') },
];

const allowed = (s) => can(s.cap) || (s.alt && can(s.alt));
const root = document.getElementById('app');
let cleanup = null;
let clockTimer = null;

/** Navigates to `#/path`. */
export function go(path) {
  if (location.hash === `#/${path}`) route(); else location.hash = `#/${path}`;
}

async function route() {
  if (typeof cleanup === 'function') cleanup();
  cleanup = null;
  const [name, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  if (!session) {
    const view = await import('./views/login.js');
    cleanup = view.render(root, { onLogin: loggedIn });
    return;
  }
  const screens = SCREENS.filter(allowed);
  const screen = screens.find((s) => s.path === name) || screens[0];
  if (!screen) {
    shell(null);
    fill(document.getElementById('main'), h('p', { class: 'empty' }, t('no_screens')));
    return;
  }
  if (screen.path !== name) { location.replace(`#/${screen.path}`); return; }
  shell(screen.path);
  const main = document.getElementById('main');
  const view = await screen.load();
  const params = rest.map(decodeURIComponent).join('/');
  try {
    cleanup = await view.render(main, params);
  } catch (e) {
    fill(main, h('p', { class: 'error' }, e.message));
  }
}

function statusBadge() {
  const s = live.connection();
  return h('span', { class: `conn conn-${s}`, id: 'conn', title: t(`conn.${s}`) }, t(`conn.${s}`));
}

function shell(active) {
  const screens = SCREENS.filter(allowed);
  const muteBtn = h('button', {
    class: 'icon', id: 'mute', 'aria-pressed': sound.muted() ? 'true' : 'false',
    onclick: () => { sound.setMuted(!sound.muted()); sound.unlock(); shell(active); },
  }, sound.muted() ? t('sound.off') : t('sound.on'));
  const header = h('header', { class: 'topbar' },
    h('div', { class: 'brand' }, h('span', { class: 'logo' }, 'Vigil'), h('span', { class: 'brand-sub' }, t('brand'))),
    h('nav', {}, screens.map((s) => h('a', { href: `#/${s.path}`, class: s.path === active ? 'active' : '' }, t(s.label)))),
    h('div', { class: 'right' },
      can('alarms') ? statusBadge() : null,
      h('span', { class: 'clock', id: 'clock' }),
      can('alarms') ? muteBtn : null,
      h('select', { class: 'lang', 'aria-label': 'language', onchange: (e) => setLang(e.target.value) },
        h('option', { value: 'zh', selected: lang() === 'zh' }, '中文'),
        h('option', { value: 'en', selected: lang() === 'en' }, 'English')),
      h('span', { class: 'who', title: session.enterprises ? session.enterprises.join(', ') : '' },
        session.user, ' · ', t(`role.${session.role}`),
        session.enterprises ? ` · ${session.enterprises.join(', ')}` : ''),
      h('button', { class: 'secondary', onclick: changePassword }, t('password.change')),
      h('button', { class: 'secondary', id: 'logout', onclick: logout }, t('logout'))));
  const old = root.querySelector('header.topbar');
  if (old && document.getElementById('main')) { old.replaceWith(header); } else {
    fill(root, header, h('main', { id: 'main' }));
  }
  tick();
}

function tick() {
  const el = document.getElementById('clock');
  if (el) el.textContent = new Date().toLocaleString(lang() === 'zh' ? 'zh-CN' : 'en-GB', { hour12: false });
  const conn = document.getElementById('conn');
  if (conn && conn.textContent !== t(`conn.${live.connection()}`)) conn.replaceWith(statusBadge());
}

async function changePassword() {
  const v = await dialog(t('password.change'), [
    { name: 'old', label: t('password.old'), type: 'password', required: true },
    { name: 'new', label: t('password.new'), type: 'password', required: true },
    { name: 'again', label: t('password.again'), type: 'password', required: true },
  ], t('ok'), t('cancel'));
  if (!v) return;
  if (v.new !== v.again) { toast(t('password.mismatch'), 'error'); return; }
  try {
    await post('/auth/password', { old: v.old, new: v.new });
    toast(t('password.changed'));
  } catch (e) { toast(e.message, 'error'); }
}

async function logout() {
  try { await post('/auth/logout'); } catch { /* the session may already be gone */ }
  endSession();
}

function endSession() {
  session = null;
  setToken(null);
  live.stop();
  route();
}

function loggedIn(s) {
  session = s;
  if (can('alarms')) live.start().catch((e) => toast(e.message, 'error'));
  const warnDays = s.password_expires_at_ms ? (s.password_expires_at_ms - Date.now()) / 86400000 : Infinity;
  if (warnDays < 14) toast(t('password.expires_soon', { days: Math.max(0, Math.floor(warnDays)) }), 'warn');
  route();
}

onUnauthorized(() => { if (session) { toast(t('session.ended'), 'error'); endSession(); } });
onLang(() => { document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en'; route(); });
window.addEventListener('hashchange', route);
document.addEventListener('click', () => sound.unlock(), { once: true });
document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
clockTimer = setInterval(tick, 1000);
live.subscribe(() => tick());

// A session survives a reload (cookie or the tab's token): ask who we are.
get('/auth/me').then(loggedIn, () => route());

// For the e2e test and for debugging from the console.
window.vigil = { live, sound, get session() { return session; }, clockTimer };
