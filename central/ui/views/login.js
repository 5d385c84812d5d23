// Login. Shows the API's own words for wrong credentials (attempts left), lockout (until when) and
// an expired password (then asks for a new one, the policy's refusal shown as the API words it).

import { post, setToken } from '../api.js';
import { h, fill, fmtTime } from '../dom.js';
import { t, lang, setLang } from '../i18n.js';
import { unlock } from '../sound.js';

export function render(root, { onLogin }) {
  const msg = h('div', { class: 'login-msg', id: 'login-msg', role: 'alert' });
  const user = h('input', { id: 'login-user', name: 'user', autocomplete: 'username', required: true, maxlength: 64 });
  const pass = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true, maxlength: 256 });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'login-submit' }, t('login.submit'));
  const extra = h('div', { class: 'login-extra' });

  function show(kind, ...text) { msg.className = `login-msg ${kind}`; fill(msg, ...text); }

  function expired(userName, oldPw) {
    const nw = h('input', { id: 'login-new', type: 'password', autocomplete: 'new-password', required: true });
    const again = h('input', { id: 'login-again', type: 'password', autocomplete: 'new-password', required: true });
    const form = h('form', { class: 'login-form' },
      h('label', {}, h('span', {}, t('password.new')), nw),
      h('label', {}, h('span', {}, t('password.again')), again),
      h('button', { type: 'submit', class: 'primary' }, t('password.change')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (nw.value !== again.value) { show('error', t('password.mismatch')); return; }
      try {
        await post('/auth/password', { user: userName, old: oldPw, new: nw.value });
        fill(extra);
        pass.value = '';
        show('ok', t('password.changed_login'));
      } catch (err) {
        show('error', t('password.refused'), ' ', err.message);
      }
    });
    fill(extra, form);
    nw.focus();
  }

  const form = h('form', { class: 'login-form', id: 'login-form' },
    h('label', { for: 'login-user' }, h('span', {}, t('login.user')), user),
    h('label', { for: 'login-password' }, h('span', {}, t('login.password')), pass),
    submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    unlock();
    submit.disabled = true;
    show('', t('login.checking'));
    try {
      const s = await post('/auth/login', { user: user.value.trim(), password: pass.value });
      setToken(s.token);
      pass.value = '';
      onLogin(s);
    } catch (err) {
      const p = err.problem || {};
      if (err.status === 423) {
        show('error', t('login.locked', { until: p.locked_until_ms ? fmtTime(p.locked_until_ms) : '?' }), h('br'), err.message);
      } else if (err.status === 403 && p.password_expired) {
        show('warn', t('login.expired'), h('br'), err.message);
        expired(user.value.trim(), pass.value);
      } else if (err.status === 401) {
        show('error', t('login.wrong'), h('br'), err.message);
      } else if (err.status === 0) {
        show('error', t('login.network'), h('br'), err.message);
      } else {
        show('error', err.message);
      }
    } finally {
      submit.disabled = false;
    }
  });

  fill(root, h('div', { class: 'login-page' },
    h('div', { class: 'login-box' },
      h('div', { class: 'login-head' },
        h('span', { class: 'logo' }, 'Vigil'),
        h('select', { class: 'lang', 'aria-label': 'language', onchange: (e) => setLang(e.target.value) },
          h('option', { value: 'zh', selected: lang() === 'zh' }, '中文'),
          h('option', { value: 'en', selected: lang() === 'en' }, 'English'))),
      h('h1', {}, t('login.title')),
      form, msg, extra,
      h('p', { class: 'login-note' }, t('login.note')))));
  user.focus();
}
