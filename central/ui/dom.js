// Small DOM helpers. Every text from the server goes in as a text node (never innerHTML), so data
// cannot inject markup.

/** Creates an element: h('div', {class: 'x', onclick: f, dataset: {id: 1}}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = tag.includes(':')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.split(':')[1])
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else if (k === 'checked' || k === 'selected' || k === 'disabled') el[k] = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** Local date and time `YYYY-MM-DD HH:mm:ss` of a UTC millisecond time ('' when absent). */
export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A duration as `1d 2h`, `3h 4m`, `5m 6s` or `7s`. */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '';
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const txt = d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  return neg ? `-${txt}` : txt;
}

/** A number with at most `digits` decimals, '' when not a number. */
export function fmtNum(v, digits = 3) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return v === null || v === undefined ? '' : String(v);
  return String(Math.round(v * 10 ** digits) / 10 ** digits);
}

/** Value for a `datetime-local` input from UTC ms (local time). */
export function toLocalInput(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A little modal dialog with a form; resolves with the form's values or null when cancelled. */
export function dialog(title, fields, okLabel, cancelLabel) {
  return new Promise((resolve) => {
    const inputs = {};
    const form = h('form', { class: 'dialog-form', method: 'dialog' },
      h('h2', {}, title),
      fields.map((f) => {
        const id = `dlg-${f.name}`;
        let input;
        if (f.type === 'select') {
          input = h('select', { id, name: f.name }, f.options.map(([v, label]) => h('option', { value: v, selected: v === f.value }, label)));
        } else if (f.type === 'textarea') {
          input = h('textarea', { id, name: f.name, rows: 3, required: f.required, maxlength: 2000 }, f.value || '');
        } else {
          input = h('input', { id, name: f.name, type: f.type || 'text', required: f.required, value: f.value, step: f.step, maxlength: 500 });
        }
        inputs[f.name] = input;
        return h('label', { for: id }, h('span', {}, f.label), input);
      }),
      h('div', { class: 'dialog-buttons' },
        h('button', { type: 'button', class: 'secondary', onclick: () => close(null) }, cancelLabel),
        h('button', { type: 'submit', class: 'primary' }, okLabel)));
    const dlg = h('dialog', { class: 'dialog' }, form);
    function close(v) { dlg.close(); dlg.remove(); resolve(v); }
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const out = {};
      for (const [k, el] of Object.entries(inputs)) out[k] = el.value;
      close(out);
    });
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); close(null); });
    document.body.append(dlg);
    dlg.showModal();
    const first = Object.values(inputs)[0];
    if (first) first.focus();
  });
}

/** A transient message at the bottom of the screen. */
export function toast(text, kind = 'info') {
  const el = h('div', { class: `toast ${kind}`, role: 'status' }, text);
  document.body.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}
