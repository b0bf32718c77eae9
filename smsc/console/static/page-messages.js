// Messages: find by our id, the carrier's id, destination, account and time range; a
// message's timeline from the store; cancel one not sent yet.
import { api, h, status, table, time } from './lib.js';
import { timelineView } from './timeline.js';

export const title = 'Messages';

export async function render(main) {
  const field = (name, label, attrs = {}) => h('label', {}, label, h('input', { name, id: `find-${name}`, ...attrs }));
  const form = h('form', { class: 'inline', id: 'find-form' },
    field('id', 'Message id'), field('carrier_id', 'Carrier id'),
    field('destination', 'Destination', { inputmode: 'numeric', pattern: '\\+?[0-9]{0,20}' }),
    field('account', 'Account'),
    field('since', 'From', { type: 'datetime-local', step: '1' }),
    field('until', 'To', { type: 'datetime-local', step: '1' }),
    h('button', { class: 'primary', type: 'submit' }, 'Find'));
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const results = h('div', { id: 'find-results' });
  const detail = h('div', { id: 'detail' });
  main.replaceChildren(h('h1', {}, 'Messages'), form, note, detail, results);

  const show = async id => {
    try {
      const t = await api('GET', `/console/api/messages/${encodeURIComponent(id)}`);
      detail.replaceChildren(timelineView(t, () => show(id)));
      detail.querySelector('h2').setAttribute('tabindex', '-1');
      detail.querySelector('h2').focus();
    } catch (err) {
      status(note, err.message, 'bad');
    }
  };
  form.addEventListener('submit', async event => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (!value) continue;
      query.set(key, key === 'since' || key === 'until' ? String(new Date(value).getTime() / 1000) : value);
    }
    try {
      const { messages } = await api('GET', `/console/api/messages?${query}`);
      status(note, `${messages.length} found${messages.length ? ' (newest first)' : ''}.`);
      results.replaceChildren(table([
        ['Id', m => h('a', { href: `#${m.id}`, 'data-message': m.id,
          onclick: e => { e.preventDefault(); show(m.id); } }, m.id)],
        ['Submitted', m => time(m.submitted_at)],
        ['Account', m => m.account],
        ['Destination', m => m.destination],
        ['State', m => m.state],
        ['Carrier', m => m.carrier || '–'],
        ['Carrier id', m => m.carrier_message_id || '–'],
      ], messages, { id: 'found' }));
    } catch (err) {
      status(note, err.message, 'bad');
    }
  });
  const wanted = location.hash.slice(1);
  if (wanted) await show(wanted);
}
