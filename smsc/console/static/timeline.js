// A message's timeline (accepted, failovers, routed with the carrier's id, final state),
// shared by the Messages and Send pages.
import { api, confirmAction, h, status, time } from './lib.js';

export function timelineView(t, onChange) {
  const m = t.message;
  const note = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const cancel = t.cancellable
    ? h('button', { type: 'button', class: 'danger', id: 'cancel-message', onclick: async () => {
        if (!(await confirmAction(`Cancel message ${m.id} (not sent yet)?`))) return;
        try {
          await api('POST', `/console/api/messages/${encodeURIComponent(m.id)}/cancel`);
          status(note, 'Cancelled.', 'ok');
          if (onChange) onChange();
        } catch (err) {
          status(note, err.message, 'bad');
        }
      } }, 'Cancel message')
    : null;
  return h('section', { class: 'card', id: 'timeline', 'data-id': m.id, 'data-state': m.state },
    h('h2', {}, `Message ${m.id}`),
    h('p', { class: 'muted' }, `${m.account}: ${m.source || '-'} → ${m.destination} · “${t.text}”`),
    h('ol', { class: 'timeline' }, t.steps.map(step =>
      h('li', { 'data-step': step.what },
        h('span', { class: 'what' }, step.what),
        step.at ? h('span', { class: 'muted' }, `${time(step.at)} · `) : null,
        step.detail))),
    cancel, note);
}
