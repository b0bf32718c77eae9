// Overview: counters and live charts of the last 15 minutes (one sample a second, from
// the server's ring, streamed as Server-Sent Events).
import { h, num, onSample } from './lib.js';
import { Chart } from './chart.js';

export const title = 'Overview';
const STATES = ['DELIVERED', 'UNDELIVERABLE', 'EXPIRED', 'REJECTED', 'DELETED', 'UNKNOWN'];

export async function render(main) {
  const counters = {
    accepted: ['Submits accepted', s => num(s.accepted)],
    sent: ['Sent to carriers', s => num(s.sent)],
    delivered: ['Delivered', s => num(s.finals.DELIVERED ?? 0)],
    queue: ['Queue depth', s => num(s.queue)],
    binds: ['ESME binds', s => num(s.binds)],
    carriers: ['Carriers up', s => `${s.carriers_up} / ${s.carriers}`],
    held: ['Held receipts', s => num(s.held)],
  };
  const cells = {};
  const cards = h('section', { class: 'cards', 'aria-label': 'Counters' },
    Object.entries(counters).map(([key, [label]]) => {
      cells[key] = h('div', { class: 'value', id: `count-${key}` }, '–');
      return h('div', { class: 'card' }, h('div', { class: 'label' }, label), cells[key]);
    }));
  const charts = [
    [new Chart('chart-accepted', 'Submits accepted /s', [{ key: 'accepted_s', label: 'accepted' }]),
     s => ({ accepted_s: s.accepted_s })],
    [new Chart('chart-sent', 'Sent to carriers /s', [{ key: 'sent_s', label: 'sent' }]),
     s => ({ sent_s: s.sent_s })],
    [new Chart('chart-receipts', 'Final states /s (receipts)',
      STATES.map(state => ({ key: state, label: state.toLowerCase() }))),
     s => Object.fromEntries(STATES.map(state => [state, s.finals_s[state] ?? 0]))],
    [new Chart('chart-queue', 'Queue depth', [{ key: 'queue', label: 'waiting' }]),
     s => ({ queue: s.queue })],
    [new Chart('chart-latency', 'Submit latency', [{ key: 'p50', label: 'p50' }, { key: 'p99', label: 'p99' }], ' ms'),
     s => ({ p50: s.p50_ms, p99: s.p99_ms })],
  ];
  main.replaceChildren(h('h1', {}, 'Overview'), cards,
    h('section', { class: 'charts', 'aria-label': 'Charts' }, charts.map(([chart]) => chart.root)));

  let samples = [];
  let pending = false;
  const redraw = () => {
    pending = false;
    const last = samples[samples.length - 1];
    if (!last) return;
    for (const [key, [, value]] of Object.entries(counters)) cells[key].textContent = value(last);
    for (const [chart, pick] of charts) chart.draw(samples.map(s => [s.t, pick(s)]));
  };
  onSample((sample, history) => {
    if (history) samples = history;
    else {
      samples.push(sample);
      if (samples.length > 900) samples.shift();
    }
    if (!pending) {
      pending = true;
      requestAnimationFrame(redraw);
    }
  });
}
