// Simulators: the simulated carriers inside this node (sessions, last messages with their
// planned outcome and receipt time, counters), and an MO to inject at each (admin API).
import { api, h, num, onSample, status, table, time } from './lib.js';

export const title = 'Simulators';

export async function render(main) {
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite', id: 'sim-status' });
  const holder = h('div', { id: 'simulators' });
  const moCarrier = h('select', { name: 'carrier', id: 'mo-carrier', required: true });
  const moSource = h('input', { name: 'source', id: 'mo-source', placeholder: 'from the profile' });
  const moDestination = h('input', { name: 'destination', id: 'mo-destination', placeholder: 'from the profile' });
  const moText = h('input', { name: 'text', id: 'mo-text', required: true, value: 'Hello from a simulated carrier' });
  const form = h('form', { class: 'inline', id: 'mo-form' },
    h('label', {}, 'Carrier', moCarrier), h('label', {}, 'From', moSource),
    h('label', {}, 'To', moDestination), h('label', {}, 'Text', moText),
    h('button', { class: 'primary', type: 'submit' }, 'Inject MO'));
  form.addEventListener('submit', async event => {
    event.preventDefault();
    const body = { text: moText.value };
    if (moSource.value) body.source = moSource.value;
    if (moDestination.value) body.destination = moDestination.value;
    try {
      const r = await api('POST', `/api/v1/carriers/${encodeURIComponent(moCarrier.value)}/mo`, body);
      status(note, `MO injected at ${r.carrier} for ${r.system_id} (${r.parts} part${r.parts > 1 ? 's' : ''}).`, 'ok');
    } catch (err) {
      status(note, err.message, 'bad');
    }
  });
  main.replaceChildren(h('h1', {}, 'Simulated carriers'),
    h('h2', {}, 'Inject an MO'), form, note, holder);
  let names = '';
  const load = async () => {
    const { simulators } = await api('GET', '/console/api/simulators');
    const entries = Object.entries(simulators);
    if (entries.map(([n]) => n).join() !== names) {
      names = entries.map(([n]) => n).join();
      moCarrier.replaceChildren(...entries.map(([n]) => h('option', { value: n }, n)));
    }
    holder.replaceChildren(...(entries.length ? entries.map(([name, s]) => {
      const c = s.counters;
      const sessions = s.accounts.flatMap(a => a.sessions.map(x => `${a.system_id} ${x.bind_type} ${x.peer}`));
      return h('section', { class: 'card', 'data-simulator': name },
        h('h2', {}, name),
        h('p', { class: 'muted' },
          `accepted ${num(c.submits.ESME_ROK ?? 0)} · throttled ${num(c.submits.ESME_RTHROTTLED ?? 0)}`,
          ` · receipts ${num(Object.values(c.receipts).reduce((a, b) => a + b, 0))} · MO ${num(c.mo_sent)}`,
          ` · binds: ${sessions.length ? sessions.join(', ') : 'none'}`),
        s.messages.length ? table([
          ['Id', m => m.id], ['Received', m => time(m.submitted_at)], ['To', m => m.destination],
          ['Planned', m => m.planned], ['State', m => m.state], ['Receipt at', m => time(m.receipt_at)],
        ], s.messages.slice(0, 10)) : h('p', { class: 'muted' }, 'No message yet.'));
    }) : [h('p', { class: 'muted' }, 'This node runs no simulated carrier.')]));
  };
  let ticks = 0;
  onSample(sample => {
    ticks += 1;
    if (sample && ticks % 2 === 0) load().catch(err => status(note, err.message, 'bad'));
  });
  await load();
}
