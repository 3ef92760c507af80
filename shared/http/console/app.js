// The console's shell: the connect form, the hash routes and the life of a view (its refresh
// timers stop when the operator leaves it).

import { api, auth, ApiError, paths } from './api.js';
import * as views from './views.js';

const routes = [
  [/^#\/agents$/, views.agents],
  [/^#\/agents\/([^/?]+)$/, views.agent],
  [/^#\/sessions$/, views.sessions],
  [/^#\/sessions\/([^/?]+)$/, views.session],
  [/^#\/workflows$/, views.workflows],
];

const $ = (id) => document.getElementById(id);

/** What a view may do: render into its root, refresh itself while it is shown, go elsewhere. */
class ViewContext {
  constructor(root) {
    this.root = root;
    this.alive = true;
    this.timers = new Set();
  }

  /** Runs `fn` every `ms` while the view is shown; the first run is after `ms`. */
  every(ms, fn) {
    const tick = async () => {
      this.timers.delete(handle);
      if (!this.alive) return;
      try {
        if ((await fn()) === false) return;
      } catch (e) {
        if (!this.alive) return;
        if (handleUnauthorized(e)) return;
        this.notice(`Refresh failed: ${e.message}. Trying again.`);
      }
      if (this.alive) {
        handle = setTimeout(tick, ms);
        this.timers.add(handle);
      }
    };
    let handle = setTimeout(tick, ms);
    this.timers.add(handle);
  }

  /** A short message at the top of the view (an error the operator should see). */
  notice(text) {
    let n = this.root.querySelector('.notice');
    if (!n) {
      n = document.createElement('p');
      n.className = 'notice error';
      n.setAttribute('role', 'alert');
      this.root.prepend(n);
    }
    n.textContent = text;
  }

  /** An action failed: a 401 asks for the key again, anything else is shown as `what: …`. */
  fail(e, what) {
    if (handleUnauthorized(e)) return;
    this.notice(`${what}: ${e.message}`);
  }

  clearNotice() {
    const n = this.root.querySelector('.notice');
    if (n) n.remove();
  }

  go(hash) {
    location.hash = hash;
  }

  stop() {
    this.alive = false;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}

let current = null;

function showConnect(message) {
  if (current) current.stop();
  current = null;
  $('nav').hidden = true;
  $('view').replaceChildren();
  $('connect').hidden = false;
  $('connect-error').textContent = message || '';
  document.title = 'Connect · Ops-Core console';
  $('api-key').focus();
}

/** A 401 anywhere means the key is wrong (or was revoked): forget it and ask again. */
function handleUnauthorized(e) {
  if (e instanceof ApiError && e.status === 401) {
    auth.clear();
    showConnect('The API key was refused (401 Unauthorized). Check the key and connect again.');
    return true;
  }
  return false;
}

async function route() {
  if (current) current.stop();
  if (!auth.get()) {
    showConnect();
    return;
  }
  $('connect').hidden = true;
  $('nav').hidden = false;
  const hash = location.hash || '#/agents';
  const match = routes.map(([re, view]) => [hash.match(re), view]).find(([m]) => m);
  for (const a of document.querySelectorAll('#nav a')) {
    if (hash.startsWith(a.getAttribute('href'))) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const root = document.createElement('div');
  $('view').replaceChildren(root);
  const ctx = new ViewContext(root);
  current = ctx;
  if (!match) {
    root.append(views.notFound(hash));
    return;
  }
  const [m, view] = match;
  const params = m.slice(1).map(decodeURIComponent);
  try {
    await view(ctx, ...params);
    const heading = root.querySelector('h1');
    if (heading && ctx.alive) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
      document.title = `${heading.textContent} · Ops-Core console`;
    }
  } catch (e) {
    if (!ctx.alive || handleUnauthorized(e)) return;
    ctx.notice(e instanceof ApiError ? `${e.message} (HTTP ${e.status})` : `Failed: ${e.message}`);
  }
}

async function connect(event) {
  event.preventDefault();
  const input = $('api-key');
  const key = input.value.trim();
  if (!key) {
    $('connect-error').textContent = 'Enter the API key.';
    return;
  }
  $('connect-error').textContent = 'Checking the key…';
  try {
    // Any authenticated read tells whether the key is accepted.
    await api(paths.workflows({ limit: 1 }), { key });
  } catch (e) {
    $('connect-error').textContent =
      e instanceof ApiError && e.status === 401
        ? 'The API key was refused (401 Unauthorized). Check the key and try again.'
        : `Could not reach the API: ${e.message}`;
    input.select();
    return;
  }
  auth.set(key);
  input.value = '';
  $('connect-error').textContent = '';
  if (!location.hash) location.hash = '#/agents';
  else route();
}

function disconnect() {
  auth.clear();
  showConnect('Disconnected: the key is forgotten.');
}

$('connect').addEventListener('submit', connect);
$('disconnect').addEventListener('click', disconnect);
window.addEventListener('hashchange', route);
route();
