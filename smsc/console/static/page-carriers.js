// Carriers: binds, window use, adaptive rate, health (acceptance, delivery, latency,
// breaker), prices by route; pause, resume and drain, each after a confirmation.
import { api, confirmAction, h, ms, num, onSample, pct, status, table } from './lib.js';

export const title = 'Carriers';

export async function render(main) {
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const holder = h('div');
  const prices = h('div');
  main.replaceChildren(h('h1', {}, 'Carriers'), note, holder, h('h2', {}, 'Prices by route'), prices);
  let routes = [];
  const state = c => (c.drained ? 'drained' : c.paused ? 'paused' : c.health.available ? 'available' : 'unavailable');
  const load = async () => {
    try {
      const { carriers } = await api('GET', '/api/v1/carriers');
      holder.replaceChildren(table([
        ['Carrier', c => h('strong', {}, c.name)],
        ['State', c => h('span', { class: c.health.available && !c.paused ? 'ok' : 'warn',
                                   'data-state': state(c) }, state(c))],
        ['Binds up', c => `${c.bound} / ${c.binds}`],
        ['In flight', c => num(c.in_flight)],
        ['Rate /s', c => (c.rate === null ? 'no limit' : num(c.rate, 1))],
        ['Acceptance', c => pct(c.health.acceptance)],
        ['Delivery', c => pct(c.health.delivery)],
        ['Latency', c => ms(c.health.latency)],
        ['Breaker', c => h('span', { class: c.health.breaker === 'closed' ? 'ok' : 'bad' }, c.health.breaker)],
        ['Actions', c => h('span', {},
          c.paused || c.drained
            ? button(c, 'resume', 'Resume', `Resume ${c.name}: route messages to it again?`)
            : [button(c, 'pause', 'Pause', `Pause ${c.name}: no new messages go to it?`), ' ',
               button(c, 'drain', 'Drain', `Drain ${c.name}: pause it, wait for its submits in flight, unbind it?`)])],
      ], carriers, { id: 'carriers' }));
    } catch (err) {
      status(note, err.message, 'bad');
    }
  };
  const button = (c, action, label, question) =>
    h('button', { type: 'button', 'data-carrier': c.name, 'data-action': action,
      class: action === 'resume' ? 'primary' : 'danger',
      onclick: async () => {
        if (!(await confirmAction(question))) return;
        try {
          await api('POST', `/api/v1/carriers/${encodeURIComponent(c.name)}/${action}`);
          status(note, `${c.name}: ${action} done.`, 'ok');
        } catch (err) {
          status(note, `${c.name}: ${err.message}`, 'bad');
        }
        await load();
      } }, label);
  ({ routes } = await api('GET', '/api/v1/routes'));
  prices.replaceChildren(table([
    ['Prefix', r => r.prefix || '(any)'],
    ['Accounts', r => (r.accounts.length ? r.accounts.join(', ') : 'all')],
    ['Carriers (price per part)', r => r.carriers.map(c => `${c.carrier} ${c.price}`).join(' · ')],
  ], routes));
  let ticks = 0;
  onSample(sample => {
    ticks += 1;
    if (sample && ticks % 2 === 0) load();
  });
  await load();
}
