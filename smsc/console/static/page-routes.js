// Routes: the route table, and why a destination routes the way it does for an account
// (the candidates, as `smsc route` shows them).
import { api, h, pct, status, table } from './lib.js';

export const title = 'Routes';

export async function render(main) {
  const { routes } = await api('GET', '/api/v1/routes');
  const destination = h('input', { name: 'destination', id: 'explain-destination', required: true,
    inputmode: 'numeric', pattern: '\\+?[0-9]{1,20}', placeholder: '447700900123' });
  const account = h('input', { name: 'account', id: 'explain-account', required: true, placeholder: 'system_id' });
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const result = h('div', { id: 'explain-result' });
  const form = h('form', { class: 'inline', id: 'explain-form' },
    h('label', {}, 'Destination', destination), h('label', {}, 'Account', account),
    h('button', { class: 'primary', type: 'submit' }, 'Explain'));
  form.addEventListener('submit', async event => {
    event.preventDefault();
    const query = new URLSearchParams({ destination: destination.value.replace(/^\+/, ''), account: account.value });
    try {
      const e = await api('GET', `/api/v1/routes/explain?${query}`);
      status(note, '');
      result.replaceChildren(
        h('p', {}, 'Route ', h('strong', {}, e.prefix === null ? 'none' : (e.prefix || '(any)')),
          ' → choice ', h('strong', { id: 'explain-choice' }, e.choice ?? 'none'),
          e.price !== null ? ` at ${e.price}` : '',
          e.fallbacks.length ? `; then ${e.fallbacks.join(', ')}` : '',
          e.reason ? ` (${e.reason})` : ''),
        table([
          ['Carrier', c => c.carrier],
          ['Role', c => h('span', { class: c.role === 'excluded' ? 'bad' : 'ok' }, c.role)],
          ['Price', c => `${c.price} (${c.price_source})`],
          ['Delivery', c => pct(c.delivery)],
          ['Cost / delivered', c => c.cost_per_delivered ?? '–'],
          ['Why', c => [c.why, c.reasons.length ? ` (${c.reasons.join('; ')})` : ''].join('')],
        ], e.candidates, { id: 'explain-candidates' }));
    } catch (err) {
      status(note, err.message, 'bad');
    }
  });
  main.replaceChildren(h('h1', {}, 'Routes'),
    table([
      ['Prefix', r => r.prefix || '(any)'],
      ['Accounts', r => (r.accounts.length ? r.accounts.join(', ') : 'all')],
      ['Carriers (price per part)', r => r.carriers.map(c => `${c.carrier} ${c.price}`).join(' · ')],
    ], routes, { id: 'routes' }),
    h('h2', {}, 'Explain'), form, note, result);
}
