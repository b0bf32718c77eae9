// Sessions: every ESME bind, with kick (unbind). Refreshed when the bind count changes.
import { api, confirmAction, h, num, onSample, status, table, time } from './lib.js';

export const title = 'Sessions';

export async function render(main) {
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const holder = h('div');
  main.replaceChildren(h('h1', {}, 'Sessions'), note, holder);
  let busy = false;
  const load = async () => {
    if (busy) return;
    busy = true;
    try {
      const { binds } = await api('GET', '/api/v1/binds');
      holder.replaceChildren(binds.length === 0 ? h('p', { class: 'muted' }, 'No ESME is bound.') :
        table([
          ['Account', b => b.account],
          ['Bind', b => b.bind_type],
          ['Peer', b => b.peer],
          ['Since', b => time(b.since)],
          ['In flight', b => num(b.in_flight)],
          ['Pending', b => num(b.pending)],
          ['', b => h('button', { type: 'button', class: 'danger', 'data-bind': b.id,
            'aria-label': `Kick ${b.account} from ${b.peer}`,
            onclick: () => kick(b) }, 'Kick')],
        ], binds, { id: 'binds' }));
    } catch (err) {
      status(note, err.message, 'bad');
    } finally {
      busy = false;
    }
  };
  const kick = async bind => {
    if (!(await confirmAction(`Unbind ${bind.account} (${bind.bind_type}) from ${bind.peer}?`))) return;
    try {
      await api('DELETE', `/api/v1/binds/${encodeURIComponent(bind.id)}`);
      status(note, `${bind.account} from ${bind.peer} unbound.`, 'ok');
    } catch (err) {
      status(note, err.message, 'bad');
    }
    await load();
  };
  let binds = null;
  let ticks = 0;
  onSample(sample => {
    ticks += 1;
    if (sample && (sample.binds !== binds || ticks % 5 === 0)) {
      binds = sample.binds;
      load();
    }
  });
  await load();
}
