// The shell: which page this is (by path), its module, the navigation and logging out.
import { api, ApiError, h } from './lib.js';

const name = location.pathname.replace(/^\/console\//, '') || 'overview';
for (const link of document.querySelectorAll('nav a')) {
  if (link.getAttribute('href') === `/console/${name}`) link.setAttribute('aria-current', 'page');
}
document.getElementById('logout').addEventListener('click', async () => {
  await api('POST', '/console/logout').catch(() => {});
  location.assign('/console/login');
});
const main = document.getElementById('main');
try {
  const module = await import(`./page-${name}.js`);
  document.title = `smsc · ${module.title}`;
  await module.render(main);
} catch (err) {
  // a page that could not load its data says so (a lost session has moved to the login)
  if (!(err instanceof ApiError && err.message === 'logged out')) {
    main.append(h('p', { class: 'status bad', role: 'alert' }, `This page could not load: ${err.message}`));
  }
}
