// The console's views, built with DOM calls only (no HTML from strings: nothing the API returns
// can become markup). Every status is written out as text; colour only repeats it.

import { api, all, paths } from './api.js';

// ----- building blocks -----

/** An element: `props` are attributes (`class`, `text`, `on<event>` handlers too). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Replaces the children of `el` (`null` and `false` children are left out, not written). */
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : String(c));
  return el;
}

const enc = encodeURIComponent;
/** The reserved agent id a session started without an agent is listed under. */
const ROUTED_SESSIONS = 'opscore.routed';
const OPEN = new Set(['started', 'running']);
const SESSION_STATUSES = ['started', 'running', 'completed', 'failed', 'cancelled'];
const AGENT_STATES = ['UNKNOWN', 'initializing', 'idle', 'active', 'error', 'finished'];

/** A status as text, with a class per value for colour. */
function badge(status, extra) {
  const cls = String(status).toLowerCase().replace(/[^a-z0-9_-]/g, '-');
  return h('span', { class: `status status-${cls}${extra ? ` ${extra}` : ''}` }, String(status));
}

function pad(n) {
  return String(n).padStart(2, '0');
}

/** An instant as `YYYY-MM-DD HH:MM:SS` (local time), its ISO form in `datetime` and the title. */
function when(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', {}, iso);
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h('time', { datetime: iso, title: iso }, text);
}

/** How long ago, in words (`12 s ago`). */
function ago(iso) {
  if (!iso) return '';
  const secs = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (Number.isNaN(secs)) return '';
  if (secs < 60) return `${Math.max(secs, 0)} s ago`;
  if (secs < 3600) return `${Math.round(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.round(secs / 3600)} h ago`;
  return `${Math.round(secs / 86400)} d ago`;
}

function json(v) {
  return h('pre', { class: 'json' }, JSON.stringify(v, null, 2));
}

function link(hash, text, label) {
  return h('a', { href: hash, 'aria-label': label }, text);
}

function table(caption, headers, rows, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h(
    'table',
    {},
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows),
  );
}

function details(pairs) {
  return h(
    'dl',
    { class: 'details' },
    pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
  );
}

function refreshed(text) {
  return h('p', { class: 'refresh muted', 'aria-live': 'off' }, text);
}

function stamp(el, text) {
  el.textContent = `${text} Last updated ${when(new Date().toISOString()).textContent}.`;
}

function select(id, label, options, value, onchange) {
  return h(
    'div',
    { class: 'field inline' },
    h('label', { for: id }, label),
    h(
      'select',
      { id, onchange },
      options.map(([v, t]) => h('option', { value: v, selected: v === value }, t)),
    ),
  );
}

export function notFound(hash) {
  return h('section', {}, h('h1', {}, 'Not found'), h('p', {}, `No view at ${hash}. `, link('#/agents', 'Agents')));
}

// ----- agents -----

export async function agents(ctx) {
  let state = '';
  // Pages of 100 shown (each refresh reads them again: on DynamoDB a page is 33 requests, so
  // more pages are read only when the operator asks for them).
  let pages = 1;
  const body = h('div', {});
  const status = refreshed('');
  const load = async () => {
    const { items, complete } = await all(paths.agents, { state }, pages);
    const rows = items.map((a) =>
      h(
        'tr',
        { class: a.deregistered ? 'deregistered' : '' },
        h('td', {}, link(`#/agents/${enc(a.agentId)}`, a.agentName || a.agentId), h('div', { class: 'muted id' }, a.agentId)),
        h('td', {}, badge(a.state.state)),
        h('td', {}, when(a.state.timestamp), h('div', { class: 'muted' }, ago(a.state.timestamp))),
        h('td', {}, a.deregistered ? badge('deregistered') : 'registered'),
        h('td', {}, a.inflightTask ? h('span', { class: 'id' }, a.inflightTask) : h('span', { class: 'muted' }, 'none')),
        h('td', {}, a.version),
      ),
    );
    fill(body,
      table(
        'Agents',
        ['Agent', 'State', 'Reported', 'Registration', 'Task in flight', 'Version'],
        rows,
        state ? `No agent is in state ${state}.` : 'No agent has registered yet.',
      ),
      complete
        ? null
        : h(
            'button',
            {
              type: 'button',
              onclick: async () => {
                pages += 1;
                await load().catch((e) => ctx.fail(e, 'Loading failed'));
              },
            },
            'Show more agents',
          ),
    );
    body.setAttribute('data-count', String(items.length));
    stamp(status, `${items.length} agent${items.length === 1 ? '' : 's'}. Refreshes every 5 s.`);
  };
  const filter = select(
    'agent-state',
    'State',
    [['', 'All states'], ...AGENT_STATES.map((st) => [st, st])],
    state,
    async (e) => {
      state = e.target.value;
      pages = 1;
      await load().catch((err) => ctx.fail(err, 'Loading failed'));
    },
  );
  ctx.root.append(h('section', {}, h('h1', {}, 'Agents'), h('div', { class: 'toolbar' }, filter), status, body));
  await load();
  ctx.every(5000, load);
}

// ----- one agent -----

export async function agent(ctx, id) {
  const [a, wfs] = await Promise.all([api(paths.agent(id)), all(paths.workflows)]);
  const stateBox = h('div', {});
  const timeline = h('div', {});
  const sessions = h('div', {});
  const status = refreshed('');
  const renderState = (a) => {
    fill(stateBox,
      details([
        ['Agent id', h('span', { class: 'id' }, a.agentId)],
        ['Name', a.agentName],
        ['Version', a.version],
        ['Capabilities', a.capabilities.length ? a.capabilities.join(', ') : h('span', { class: 'muted' }, 'none')],
        ['Contact endpoint', h('span', { class: 'id' }, a.contactEndpoint)],
        ['Registered', when(a.registeredAt)],
        ['Registration time (AgentKit)', when(a.registrationTime)],
        ['Registration', a.deregistered ? [badge('deregistered'), ' since ', when(a.deregisteredAt)] : 'registered'],
        ['Current state', [badge(a.state.state), ' reported ', when(a.state.timestamp), ` (${ago(a.state.timestamp)})`]],
        ['Task in flight', a.inflightTask ? h('span', { class: 'id' }, a.inflightTask) : h('span', { class: 'muted' }, 'none')],
        ['Metadata', json(a.metadata)],
      ]),
    );
  };
  const load = async () => {
    const [fresh, history, list] = await Promise.all([
      api(paths.agent(id)),
      api(paths.history(id, { limit: 50 })),
      api(paths.agentSessions(id, { limit: 20 })),
    ]);
    renderState(fresh);
    fill(timeline,
      history.items.length
        ? h(
            'ol',
            { class: 'timeline', 'aria-label': 'State history, newest first' },
            history.items.map((e) =>
              h(
                'li',
                { class: e.applied ? '' : 'stale' },
                when(e.timestamp),
                ' ',
                badge(e.state),
                e.applied ? null : h('span', { class: 'muted' }, ' stale: arrived after a newer report, not applied'),
                e.details && Object.keys(e.details).length ? h('code', { class: 'inline-json' }, JSON.stringify(e.details)) : null,
              ),
            ),
          )
        : h('p', { class: 'empty' }, 'No state report yet.'),
    );
    fill(sessions, sessionTable(list.items, 'No session has run on this agent.', false));
    stamp(status, 'Refreshes every 5 s.');
  };

  const choices = wfs.items.map((w) => [`${w.id}@${w.version}`, `${w.name} (${w.id} ${w.version})`]);
  const runForm = startSessionForm(
    ctx,
    'The workflow did not start',
    (form) => {
      const value = form.querySelector('select').value;
      const at = value.lastIndexOf('@');
      return {
        path: paths.trigger(id),
        body: { workflowDefinitionId: value.slice(0, at), workflowVersion: value.slice(at + 1) },
      };
    },
    choices.length
      ? [
          select('run-workflow', 'Workflow', choices, choices[0][0]),
          h('button', { type: 'submit', disabled: a.deregistered }, 'Run workflow'),
          a.deregistered ? h('p', { class: 'muted' }, 'A deregistered agent takes no workflow.') : null,
        ]
      : h('p', { class: 'empty' }, 'No workflow definition is stored yet (POST /v1/opscore/workflows).'),
  );

  ctx.root.append(
    h(
      'section',
      {},
      h('h1', {}, `Agent ${a.agentName || a.agentId}`),
      status,
      h('h2', {}, 'Run a workflow'),
      runForm,
      h('h2', {}, 'Registration and state'),
      stateBox,
      h('h2', {}, 'Sessions'),
      sessions,
      h('h2', {}, 'State history'),
      timeline,
    ),
  );
  await load();
  ctx.every(5000, load);
}

// ----- sessions -----

function sessionTable(items, empty, withAgent = true) {
  const rows = items.map((x) =>
    h(
      'tr',
      {},
      h('td', {}, link(`#/sessions/${enc(x.sessionId)}`, x.sessionId.slice(0, 8), `Session ${x.sessionId}`)),
      withAgent ? h('td', {}, x.agentId === ROUTED_SESSIONS ? h('span', { class: 'muted' }, 'routed') : link(`#/agents/${enc(x.agentId)}`, x.agentId)) : null,
      h('td', {}, `${x.workflowId} ${x.workflowVersion}`),
      h('td', {}, badge(x.status)),
      h('td', {}, when(x.startTime)),
      h('td', {}, when(x.endTime)),
    ),
  );
  const headers = ['Session', withAgent ? 'Agent' : null, 'Workflow', 'Status', 'Started', 'Ended'].filter(Boolean);
  return table('Sessions', headers, rows, empty);
}

export async function sessions(ctx) {
  let status = '';
  let limit = 50;
  const body = h('div', {});
  const info = refreshed('');
  const load = async () => {
    const page = await api(paths.sessions({ status, limit }));
    fill(body,
      sessionTable(page.items, status ? `No session is ${status}.` : 'No session has run yet.'),
      page.nextCursor && limit < 100
        ? h(
            'button',
            {
              type: 'button',
              onclick: async () => {
                limit = 100;
                await load().catch((e) => ctx.fail(e, 'Loading failed'));
              },
            },
            'Show more',
          )
        : null,
    );
    stamp(info, `The latest ${page.items.length} session${page.items.length === 1 ? '' : 's'}, newest first. Refreshes every 5 s.`);
  };
  const filter = select(
    'session-status',
    'Status',
    [['', 'All statuses'], ...SESSION_STATUSES.map((st) => [st, st])],
    status,
    async (e) => {
      status = e.target.value;
      await load().catch((err) => ctx.fail(err, 'Loading failed'));
    },
  );
  ctx.root.append(h('section', {}, h('h1', {}, 'Sessions'), h('div', { class: 'toolbar' }, filter), info, body));
  await load();
  ctx.every(5000, load);
}

function attemptList(attempts) {
  if (!attempts.length) return h('span', { class: 'muted' }, 'not dispatched yet');
  return h(
    'ol',
    { class: 'attempts' },
    attempts.map((at) =>
      h(
        'li',
        {},
        h('span', {}, `Attempt ${at.attempt}: `),
        at.outcome ? badge(at.outcome) : badge('in progress'),
        h('div', {}, 'dispatched ', when(at.claimedAt), at.endedAt ? [' · ended ', when(at.endedAt)] : null),
        at.error ? h('div', { class: 'error' }, `Error: ${at.error}`) : null,
      ),
    ),
  );
}

export async function session(ctx, id) {
  const head = h('div', {});
  const cause = h('div', {});
  const tasks = h('div', {});
  const actions = h('div', { class: 'actions' });
  const info = refreshed('');
  let last = null;
  const render = (v) => {
    last = v;
    const open = OPEN.has(v.status);
    fill(head,
      details([
        ['Status', badge(v.status)],
        ['Agent', v.agentId === ROUTED_SESSIONS ? h('span', {}, 'none: its tasks are routed by capability (', h('code', {}, ROUTED_SESSIONS), ')') : link(`#/agents/${enc(v.agentId)}`, v.agentId)],
        ['Workflow', link('#/workflows', `${v.workflowId} ${v.workflowVersion}`)],
        ['Started', when(v.startTime)],
        ['Ended', v.endTime ? when(v.endTime) : h('span', { class: 'muted' }, 'not yet')],
        ['Result', v.result === null || v.result === undefined ? undefined : json(v.result)],
      ]),
    );
    fill(cause,
      v.error
        ? h(
            'section',
            { class: 'cause', 'aria-labelledby': 'cause-title' },
            h('h2', { id: 'cause-title' }, v.status === 'cancelled' ? 'Why it was cancelled' : 'Why it failed'),
            details([
              ['Code', h('code', {}, v.error.code)],
              ['Message', v.error.message],
              ['Task', v.error.taskId],
              ['Attempts', v.error.attempts === undefined || v.error.attempts === null ? undefined : String(v.error.attempts)],
              ['Last error', v.error.lastError || undefined],
            ]),
          )
        : null,
    );
    fill(tasks,
      table(
        'Tasks',
        ['Task', 'Agent', 'Status', 'Attempts', 'Last error'],
        v.tasks.map((t) =>
          h(
            'tr',
            {},
            h('td', {}, h('span', { class: 'id' }, t.taskId), h('div', { class: 'muted' }, t.name)),
            h(
              'td',
              {},
              t.agentId ? link(`#/agents/${enc(t.agentId)}`, t.agentId) : h('span', { class: 'muted' }, 'not claimed yet'),
              t.capability ? h('div', { class: 'muted' }, `routed by ${t.capability}`) : null,
            ),
            h('td', {}, badge(t.status)),
            h('td', {}, h('div', { class: 'muted' }, `${t.attempts.length} of at most ${t.maxRetries + 1}`), attemptList(t.attempts)),
            h('td', {}, t.lastError ? h('span', { class: 'error' }, t.lastError) : h('span', { class: 'muted' }, 'none')),
          ),
        ),
        'No task yet.',
      ),
    );
    fill(actions,
      open
        ? h(
            'button',
            {
              type: 'button',
              class: 'danger',
              onclick: async (e) => {
                e.target.disabled = true;
                try {
                  render(await api(paths.cancel(id), { method: 'POST' }));
                  ctx.clearNotice();
                } catch (err) {
                  e.target.disabled = false;
                  ctx.fail(err, 'The session was not cancelled');
                }
              },
            },
            'Cancel session',
          )
        : null,
    );
    info.textContent = open ? 'The session is open: refreshes every 2 s.' : 'The session has ended.';
    ctx.root.setAttribute('data-status', v.status);
  };
  render(await api(paths.session(id)));
  ctx.root.append(
    h(
      'section',
      {},
      h('h1', {}, 'Session ', h('span', { class: 'id' }, id)),
      info,
      actions,
      head,
      cause,
      h('h2', {}, 'Tasks'),
      tasks,
    ),
  );
  ctx.every(2000, async () => {
    if (!OPEN.has(last.status)) return false;
    render(await api(paths.session(id)));
    return OPEN.has(last.status);
  });
}

// ----- workflows -----

/** The tasks in the order the chain runs them (entry task, then `nextTaskId`), then any other. */
function chain(def) {
  const byId = new Map(def.tasks.map((t) => [t.taskId, t]));
  const order = [];
  const seen = new Set();
  let next = def.entryTaskId || (def.tasks[0] && def.tasks[0].taskId);
  while (next && byId.has(next) && !seen.has(next)) {
    seen.add(next);
    order.push(byId.get(next));
    next = byId.get(next).nextTaskId;
  }
  for (const t of def.tasks) if (!seen.has(t.taskId)) order.push(t);
  return order;
}

function seconds(v) {
  return v === undefined || v === null ? null : `${v} s`;
}

/** The task graph as SVG: one box per task, an arrow along each `nextTaskId`. */
function graph(def, key) {
  const tasks = chain(def);
  const W = 300;
  const H = 54;
  const GAP = 34;
  const X = 20;
  const y = (i) => 10 + i * (H + GAP);
  const index = new Map(tasks.map((t, i) => [t.taskId, i]));
  const marker = `arrow-${key}`;
  const height = y(tasks.length) - GAP + 10;
  const label = `Task graph of ${def.id} ${def.version}: ${tasks.map((t) => t.taskId).join(' then ')}`;
  const svg = s(
    'svg',
    { class: 'graph', viewBox: `0 0 ${W + 2 * X + 40} ${height}`, width: W + 2 * X + 40, height, role: 'img', 'aria-label': label },
    s('defs', {}, s('marker', { id: marker, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))),
  );
  tasks.forEach((t, i) => {
    const settings = [
      t.timeoutSeconds !== undefined ? `timeout ${t.timeoutSeconds} s` : null,
      t.maxRetries !== undefined ? `retries ${t.maxRetries}` : null,
      t.agentCapability ? `needs ${t.agentCapability}` : null,
    ].filter(Boolean);
    svg.append(
      s(
        'g',
        { class: 'task' },
        s('rect', { x: X, y: y(i), width: W, height: H, rx: 6 }),
        s('text', { x: X + 12, y: y(i) + 22, class: 'task-id' }, `${t.taskId} · ${t.name}`),
        s('text', { x: X + 12, y: y(i) + 42, class: 'task-settings' }, settings.join(' · ') || 'workflow defaults'),
      ),
    );
    if (t.nextTaskId && index.has(t.nextTaskId)) {
      const j = index.get(t.nextTaskId);
      const d =
        j === i + 1
          ? `M${X + W / 2},${y(i) + H} L${X + W / 2},${y(j) - 2}`
          : `M${X + W},${y(i) + H / 2} C${X + W + 40},${y(i) + H / 2} ${X + W + 40},${y(j) + H / 2} ${X + W + 2},${y(j) + H / 2}`;
      svg.append(s('path', { d, class: 'edge', 'marker-end': `url(#${marker})` }));
    }
  });
  return svg;
}

/** Every task routed by capability: the definition can start without naming an agent. */
function startsWithoutAgent(def) {
  return def.routeByCapability === true && def.tasks.length > 0 && def.tasks.every((t) => t.agentCapability);
}

/**
 * A form that starts a session: on submit it POSTs what `request(form)` gives ({ path, body })
 * with a new Idempotency-Key and opens the new session. A refusal is shown under the form as
 * "`failure`: why" (a refused key brings the key form back instead).
 */
function startSessionForm(ctx, failure, request, ...children) {
  const error = h('p', { class: 'error', role: 'alert' });
  return h(
    'form',
    {
      class: 'run',
      onsubmit: async (e) => {
        e.preventDefault();
        const button = e.target.querySelector('button');
        button.disabled = true;
        error.textContent = '';
        try {
          const { path, body } = request(e.target);
          const started = await api(path, {
            method: 'POST',
            body,
            headers: { 'Idempotency-Key': crypto.randomUUID() },
          });
          ctx.go(`#/sessions/${enc(started.sessionId)}`);
        } catch (err) {
          button.disabled = false;
          if (err.status === 401) ctx.fail(err, failure);
          else error.textContent = `${failure}: ${err.message}`;
        }
      },
    },
    ...children,
    error,
  );
}

/** "Start routed session" (POST /v1/opscore/workflows/{id}/sessions), then the new session. */
function startRoutedForm(ctx, def) {
  return startSessionForm(
    ctx,
    'The session did not start',
    () => ({ path: paths.startRouted(def.id), body: { workflowVersion: def.version } }),
    h('button', { type: 'submit', 'aria-label': `Start routed session of ${def.id} ${def.version}` }, 'Start routed session'),
    h('span', { class: 'muted' }, ' each task goes to an available agent announcing its capability'),
  );
}

function definitionView(ctx, def, createdAt, key) {
  const retry = def.retryPolicy || {};
  return h(
    'article',
    { class: 'workflow', 'aria-labelledby': `wf-${key}` },
    h('h3', { id: `wf-${key}` }, `${def.name} — ${def.id} ${def.version}`),
    def.description ? h('p', {}, def.description) : null,
    h(
      'div',
      { class: 'workflow-body' },
      graph(def, key),
      h(
        'div',
        {},
        details([
          ['Stored', when(createdAt)],
          ['Entry task', def.entryTaskId || (def.tasks[0] && def.tasks[0].taskId)],
          ['Retries per task', retry.maxRetries === undefined ? '3 (default)' : String(retry.maxRetries)],
          ['Retry delay', retry.baseDelaySeconds === undefined ? '2 s doubling, at most 300 s (default)' : `${retry.baseDelaySeconds} s doubling, at most ${retry.maxDelaySeconds} s`],
          ['Dispatch timeout', seconds(def.dispatchTimeoutSeconds) || 'service default'],
          ['Task timeout', seconds(def.taskTimeoutSeconds) || 'service default'],
          ['Runs on', def.routeByCapability ? 'any available agent announcing the task\'s capability (routed)' : 'the agent the session is started for'],
        ]),
        startsWithoutAgent(def) ? startRoutedForm(ctx, def) : null,
        table(
          `Tasks of ${def.id} ${def.version}`,
          ['Task', 'Next', 'Timeout', 'Retries'],
          chain(def).map((t) =>
            h(
              'tr',
              {},
              h('td', {}, h('span', { class: 'id' }, t.taskId), h('div', { class: 'muted' }, t.name)),
              h('td', {}, t.nextTaskId || h('span', { class: 'muted' }, 'end')),
              h('td', {}, seconds(t.timeoutSeconds) || h('span', { class: 'muted' }, 'workflow')),
              h('td', {}, t.maxRetries === undefined ? h('span', { class: 'muted' }, 'workflow') : String(t.maxRetries)),
            ),
          ),
          'No task.',
        ),
      ),
    ),
  );
}

export async function workflows(ctx) {
  const { items } = await all(paths.workflows);
  const full = await Promise.all(items.map((w) => api(paths.workflow(w.id, w.version))));
  const byId = new Map();
  full.forEach((w) => {
    if (!byId.has(w.id)) byId.set(w.id, []);
    byId.get(w.id).push(w);
  });
  const sections = [...byId.entries()].map(([id, versions], n) =>
    h(
      'section',
      { class: 'workflow-group' },
      h('h2', {}, `${versions[0].name} (${id})`),
      h('p', { class: 'muted' }, `${versions.length} version${versions.length === 1 ? '' : 's'}: ${versions.map((v) => v.version).join(', ')}`),
      versions.map((w, i) => definitionView(ctx, w, w.createdAt, `${n}-${i}`)),
    ),
  );
  ctx.root.append(
    h(
      'section',
      {},
      h('h1', {}, 'Workflows'),
      sections.length ? sections : h('p', { class: 'empty' }, 'No workflow definition is stored yet.'),
    ),
  );
}
