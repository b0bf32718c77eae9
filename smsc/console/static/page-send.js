// Send: submit a test message for an account (admin API) and follow it live to its
// receipt (a Server-Sent Events stream of its timeline).
import { api, h, status } from './lib.js';
import { timelineView } from './timeline.js';

export const title = 'Send';

export async function render(main) {
  const account = h('input', { name: 'account', id: 'send-account', required: true, placeholder: 'system_id' });
  const destination = h('input', { name: 'destination', id: 'send-destination', required: true,
    inputmode: 'numeric', pattern: '\\+?[0-9]{1,20}', placeholder: '447700900123' });
  const source = h('input', { name: 'source', id: 'send-source', placeholder: 'optional' });
  const text = h('input', { name: 'text', id: 'send-text', required: true, value: 'Hello from the smsc console' });
  const receipt = h('input', { type: 'checkbox', name: 'receipt', id: 'send-receipt', checked: true });
  const form = h('form', { class: 'inline', id: 'send-form' },
    h('label', {}, 'Account', account), h('label', {}, 'Destination', destination),
    h('label', {}, 'Source', source), h('label', {}, 'Text', text),
    h('label', {}, 'Receipt', receipt),
    h('button', { class: 'primary', type: 'submit' }, 'Send'));
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite', id: 'send-status' });
  const follow = h('div', { id: 'follow' });
  main.replaceChildren(h('h1', {}, 'Send a test message'), form, note, follow);
  let stream = null;
  form.addEventListener('submit', async event => {
    event.preventDefault();
    if (stream) stream.close();
    follow.replaceChildren();
    try {
      const { message_id: id } = await api('POST', '/api/v1/messages', {
        account: account.value, destination: destination.value, text: text.value,
        source: source.value, registered_delivery: receipt.checked ? 1 : 0 });
      status(note, `Accepted as ${id}; following it…`, 'ok');
      stream = new EventSource(`/console/api/messages/${encodeURIComponent(id)}/follow`);
      stream.onmessage = e => follow.replaceChildren(timelineView(JSON.parse(e.data)));
      stream.addEventListener('end', () => {
        stream.close();
        status(note, `${id}: final.`, 'ok');
      });
    } catch (err) {
      status(note, err.message, 'bad');
    }
  });
}
