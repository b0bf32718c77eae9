// Cluster: the nodes, their heartbeat, configuration hash (nodes that differ drift), binds,
// carrier bind slots and queue share (admin API GET /api/v1/cluster).
import { api, h, num, onSample, status, table } from './lib.js';

export const title = 'Cluster';

export async function render(main) {
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const holder = h('div', { id: 'cluster' });
  main.replaceChildren(h('h1', {}, 'Cluster'), note, holder);
  const load = async () => {
    try {
      const c = await api('GET', '/api/v1/cluster');
      const hashes = new Set(c.nodes.filter(n => n.alive).map(n => n.config_hash));
      status(note, c.shared
        ? `This is node ${c.node_id}; ${c.nodes.filter(n => n.alive).length} alive` +
          (hashes.size > 1 ? ' — their configurations differ.' : '.') +
          (c.reachable ? '' : ' The shared store cannot be reached.')
        : `This node (${c.node_id}) runs alone: no cluster configured.`,
        hashes.size > 1 || !c.reachable ? 'warn' : '');
      holder.replaceChildren(table([
        ['Node', n => (n.node_id === c.node_id ? h('strong', {}, `${n.node_id} (this one)`) : n.node_id)],
        ['Alive', n => h('span', { class: n.alive ? 'ok' : n.left ? '' : 'bad' },
          n.alive ? 'yes' : n.left ? 'left' : 'no')],
        ['Heartbeat', n => `${num(n.heartbeat_age, 1)} s ago`],
        ['Address', n => `${n.address} (${n.ports.filter(p => p).join(', ')})`],
        ['Config', n => n.config_hash.slice(0, 12)],
        ['ESME binds', n => num(n.esme_binds)],
        ['Bind slots', n => Object.entries(n.bind_slots).map(([k, v]) => `${k} ${v}`).join(' · ') || '–'],
        ['Queue', n => num(n.queue_share)],
      ], c.nodes, { id: 'nodes' }));
    } catch (err) {
      status(note, err.message, 'bad');
    }
  };
  let ticks = 0;
  onSample(sample => {
    ticks += 1;
    if (sample && ticks % 3 === 0) load();
  });
  await load();
}
