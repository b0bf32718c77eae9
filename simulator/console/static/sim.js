// The simulator's page: a snapshot a second over Server-Sent Events; the MO form posts to
// the admin endpoint's POST /mo.
const $ = id => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

function table(columns, rows, id) {
  return h('div', { class: 'scroll' }, h('table', { id },
    h('thead', {}, h('tr', {}, columns.map(([n]) => h('th', { scope: 'col' }, n)))),
    h('tbody', {}, rows.map(r => h('tr', {}, columns.map(([, f]) => h('td', {}, f(r))))))));
}

const time = t => (t ? new Date(t * 1000).toLocaleTimeString() : '–');
let accounts = '';

function show(s) {
  $('system-id').textContent = s.system_id;
  const c = s.counters;
  const receipts = Object.values(c.receipts).reduce((a, b) => a + b, 0);
  const cards = [
    ['Accepted', c.submits.ESME_ROK ?? 0, 'accepted'],
    ['Throttled', c.submits.ESME_RTHROTTLED ?? 0, 'throttled'],
    ['Receipts sent', receipts, 'receipts'],
    ['MO sent', c.mo_sent, 'mo'],
    ['Awaiting a final state', c.pending, 'pending'],
  ];
  $('counters').replaceChildren(...cards.map(([label, value, key]) => h('div', { class: 'card' },
    h('div', { class: 'label' }, label), h('div', { class: 'value', id: `count-${key}` }, value))));
  const sessions = s.accounts.flatMap(a => a.sessions.map(x => ({ ...x, system_id: a.system_id })));
  $('sessions').replaceChildren(sessions.length ? table([
    ['Account', x => x.system_id], ['Bind', x => x.bind_type], ['Peer', x => x.peer],
  ], sessions, 'sim-sessions') : h('p', { class: 'muted' }, 'Nothing is bound.'));
  const names = s.accounts.map(a => a.system_id).join(',');
  if (names !== accounts) {
    accounts = names;
    const select = $('mo-system-id');
    const was = select.value;
    select.replaceChildren(...s.accounts.map(a => h('option', { value: a.system_id }, a.system_id)));
    if (was) select.value = was;
  }
  $('messages').replaceChildren(s.messages.length ? table([
    ['Id', m => m.id], ['Account', m => m.system_id], ['Received', m => time(m.submitted_at)],
    ['To', m => m.destination], ['Text', m => m.text], ['Planned', m => m.planned],
    ['State', m => m.state], ['Receipt at', m => time(m.receipt_at)],
  ], s.messages, 'sim-messages') : h('p', { class: 'muted' }, 'No message yet.'));
  $('profiles').replaceChildren(...s.accounts.map(a => h('details', {},
    h('summary', {}, `${a.system_id}: profile ${a.profile}; ${a.held} held`),
    h('pre', {}, JSON.stringify(s.profiles[a.profile], null, 2)))));
}

const source = new EventSource('/console/events');
source.onmessage = e => {
  show(JSON.parse(e.data));
  $('live').textContent = `live · ${new Date().toLocaleTimeString()}`;
};
source.onerror = () => { $('live').textContent = 'reconnecting…'; };

$('mo-form').addEventListener('submit', async event => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = { system_id: form.get('system_id'), text: form.get('text') };
  if (form.get('source')) body.source = form.get('source');
  if (form.get('destination')) body.destination = form.get('destination');
  const status = $('mo-status');
  try {
    const r = await fetch('/mo', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    status.textContent = `MO sent to ${data.system_id} (${data.parts} part${data.parts > 1 ? 's' : ''}).`;
    status.className = 'status ok';
  } catch (err) {
    status.textContent = err.message;
    status.className = 'status bad';
  }
});
