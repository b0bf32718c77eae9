// Small helpers shared by the pages: the API call (session cookie + CSRF header), a DOM
// builder that never parses data as HTML, tables, the confirmation dialog, number formats.
export const csrf = document.querySelector('meta[name="csrf"]').content;

export class ApiError extends Error {}

export async function api(method, path, body) {
  const options = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') options.headers['X-CSRF-Token'] = csrf;
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    location.assign('/console/login?next=' + encodeURIComponent(location.pathname));
    throw new ApiError('logged out');
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(data.error || `${response.status} ${response.statusText}`);
  return data;
}

// h('td', {class: 'x'}, 'text', child, ...): an element; strings become text nodes.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// columns: [[heading, row => cell]]; a cell is text or a node.
export function table(columns, rows, attrs = {}) {
  return h('div', { class: 'scroll' },
    h('table', attrs,
      h('thead', {}, h('tr', {}, columns.map(([name]) => h('th', { scope: 'col' }, name)))),
      h('tbody', {}, rows.map(row => h('tr', {}, columns.map(([, cell]) => h('td', {}, cell(row))))))));
}

export function confirmAction(text) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  dialog.returnValue = '';
  return new Promise(resolve => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    document.getElementById('confirm-ok').focus();
  });
}

export function status(node, text, kind = '') {
  node.textContent = text;
  node.className = `status ${kind}`;
}

export const num = (value, digits = 0) =>
  value === null || value === undefined ? '–' : Number(value).toLocaleString('en', {
    maximumFractionDigits: digits, minimumFractionDigits: 0 });
export const pct = value => (value === null || value === undefined ? '–' : `${(value * 100).toFixed(1)} %`);
export const time = unix => (unix ? new Date(unix * 1000).toLocaleString() : '–');
export const ms = seconds => (seconds === null || seconds === undefined ? '–' : `${(seconds * 1000).toFixed(1)} ms`);

// The overview's sample stream, shared by the pages that refresh on it.
let source = null;
const listeners = new Set();
export function onSample(listener) {
  listeners.add(listener);
  if (!source) {
    source = new EventSource('/console/events');
    const live = document.getElementById('live');
    source.addEventListener('history', event => {
      const samples = JSON.parse(event.data);
      for (const fn of listeners) fn(null, samples);
    });
    source.onmessage = event => {
      const sample = JSON.parse(event.data);
      live.textContent = `live · ${new Date(sample.t * 1000).toLocaleTimeString()}`;
      for (const fn of listeners) fn(sample, null);
    };
    source.onerror = () => { live.textContent = 'reconnecting…'; };
  }
  return () => listeners.delete(listener);
}
