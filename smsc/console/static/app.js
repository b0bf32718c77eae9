// The shell: which page this is (by path), its module, the navigation and logging out.
import { api } from './lib.js';

const name = location.pathname.replace(/^\/console\//, '') || 'overview';
for (const link of document.querySelectorAll('nav a')) {
  if (link.getAttribute('href') === `/console/${name}`) link.setAttribute('aria-current', 'page');
}
document.getElementById('logout').addEventListener('click', async () => {
  await api('POST', '/console/logout').catch(() => {});
  location.assign('/console/login');
});
const main = document.getElementById('main');
const module = await import(`./page-${name}.js`);
document.title = `smsc · ${module.title}`;
await module.render(main);
