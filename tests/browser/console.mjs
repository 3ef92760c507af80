// The operator console in a real browser: Debian's Chromium driven by playwright-core.
//
//   node tests/browser/console.mjs <base-url> <api-key>
//
// Run by the Rust test `console_browser::the_console_works_in_a_real_browser` (feature
// `opscore-tests/browser`), which starts the local stack, a fake AgentKit and simulated agents,
// stores the workflows and leaves one failed session and one deregistered agent behind (see
// tests/tests/suite/console_browser.rs for what this script expects). Exit code 0: every step
// passed; anything else: a step failed (the reason on stderr, a screenshot of the page
// `opscore-console-failure.png` in the screenshot directory or the temporary one).
//
// Screenshots go to $CONSOLE_SCREENSHOTS when it is set (docs/console/ holds the committed ones).

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const [base, key] = process.argv.slice(2);
if (!base || !key) {
  console.error('usage: node tests/browser/console.mjs <base-url> <api-key>');
  process.exit(2);
}
const shots = process.env.CONSOLE_SCREENSHOTS;
if (shots) mkdirSync(shots, { recursive: true });
const STEP_TIMEOUT = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const context = await browser.newContext({ viewport: { width: 1000, height: 720 }, deviceScaleFactor: 1 });
context.setDefaultTimeout(STEP_TIMEOUT);
const page = await context.newPage();

// Nothing may leave 127.0.0.1: every request is checked (and anything else refused), and the
// page must log no error. A wrong key makes Chromium log the 401 of the check: allowed while
// that step runs, and only that.
const offsite = [];
const errors = [];
let expect401 = false;
await context.route('**/*', (route) => {
  const url = new URL(route.request().url());
  if (url.hostname === '127.0.0.1') return route.continue();
  offsite.push(url.href);
  return route.abort();
});
page.on('request', (r) => {
  const url = new URL(r.url());
  if (url.protocol !== 'data:' && url.hostname !== '127.0.0.1') offsite.push(url.href);
});
page.on('console', (m) => {
  if (m.type() !== 'error') return;
  if (expect401 && m.text().includes('401')) return;
  errors.push(`console: ${m.text()}`);
});
page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));

let step = 'start';
async function shot(name) {
  // Every screenshot is also a check that no view wrote an absent value as text.
  const text = await page.locator('#view').innerText();
  assert.ok(!/^(null|undefined|\[object Object\])$/m.test(text), `${name}: a line reads null/undefined:\n${text}`);
  if (shots) await page.screenshot({ path: join(shots, `${name}.png`) });
}
const status = () => page.locator('[data-status]').getAttribute('data-status');
async function waitForStatus(want) {
  await page.waitForFunction((w) => document.querySelector('[data-status]')?.dataset.status === w, want, {
    timeout: STEP_TIMEOUT,
  });
}
async function openAgent(name) {
  await page.getByRole('link', { name: 'Agents', exact: true }).click();
  await page.getByRole('heading', { level: 1, name: 'Agents' }).waitFor();
  await page.getByRole('link', { name, exact: true }).click();
  await page.getByRole('heading', { level: 1, name: `Agent ${name}` }).waitFor();
}

try {
  step = 'the page and its headers';
  const resp = await page.goto(`${base}/console`);
  assert.equal(resp.status(), 200);
  const csp = resp.headers()['content-security-policy'];
  for (const directive of ["script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "default-src 'none'"]) {
    assert.ok(csp.includes(directive), `CSP ${csp} lacks ${directive}`);
  }
  assert.ok(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), csp);
  assert.equal(resp.headers()['x-frame-options'], 'DENY');
  const keyInput = page.getByLabel('API key');
  await keyInput.waitFor();
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'api-key', 'the key field has the focus');

  step = 'a wrong key is refused, plainly';
  expect401 = true;
  await keyInput.fill('not-the-key');
  await keyInput.press('Enter');
  await page.getByText('The API key was refused (401 Unauthorized)').waitFor();
  expect401 = false;
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused key is not kept');
  await shot('connect-refused');

  step = 'connect and see the agents';
  await keyInput.fill(key);
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.getByRole('heading', { level: 1, name: 'Agents' }).waitFor();
  for (const name of ['worker', 'slow-worker', 'failing-worker', 'retired-worker']) {
    await page.getByRole('link', { name, exact: true }).waitFor();
  }
  const retired = page.getByRole('row').filter({ has: page.getByRole('link', { name: 'retired-worker', exact: true }) });
  await retired.getByText('deregistered', { exact: true }).waitFor();
  const worker = page.getByRole('row').filter({ has: page.getByRole('link', { name: 'worker', exact: true }) });
  await worker.getByText('idle', { exact: true }).waitFor();
  const stored = await page.evaluate(() => ({
    session: Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)),
    local: localStorage.length,
    cookie: document.cookie,
    url: location.href,
  }));
  assert.deepEqual(stored.session, [key], 'the key is in sessionStorage');
  assert.equal(stored.local, 0, 'nothing in localStorage');
  assert.equal(stored.cookie, '', 'no cookie');
  assert.ok(!stored.url.includes(key), 'the key is not in the URL');
  await shot('agents');

  step = 'filter the agents by state';
  await page.getByLabel('State').selectOption('error');
  await page.getByText('No agent is in state error.').waitFor();
  await page.getByLabel('State').selectOption('');
  await page.getByRole('link', { name: 'retired-worker', exact: true }).waitFor();

  step = 'start a workflow and watch it complete live';
  await openAgent('worker');
  await page.getByRole('list', { name: 'State history, newest first' }).getByText('idle').first().waitFor();
  await page.getByLabel('Workflow').selectOption('console-demo@1.0');
  await page.getByRole('button', { name: 'Run workflow' }).click();
  await page.waitForURL(/#\/sessions\/[0-9a-f-]{36}$/);
  await page.getByRole('heading', { level: 1, name: /^Session / }).waitFor();
  const first = await status();
  assert.ok(['started', 'running'].includes(first), `a new session is open, not ${first}`);
  await page.getByRole('button', { name: 'Cancel session' }).waitFor();
  await waitForStatus('running');
  await page.getByRole('cell').getByText('running', { exact: true }).first().waitFor();
  await shot('session-running');
  await waitForStatus('completed');
  const tasks = page.getByRole('row').filter({ hasText: 'Attempt 1' });
  assert.equal(await tasks.count(), 2, 'one row per task, each with its attempt');
  assert.equal(await page.getByRole('cell').getByText('succeeded', { exact: true }).count(), 4, 'task and attempt succeeded, twice');
  assert.equal(await page.getByRole('button', { name: 'Cancel session' }).count(), 0, 'no cancel once ended');
  await shot('session-completed');

  step = 'cancel a running session';
  await openAgent('slow-worker');
  await page.getByLabel('Workflow').selectOption('long-task@1.0');
  await page.getByRole('button', { name: 'Run workflow' }).click();
  await page.waitForURL(/#\/sessions\/[0-9a-f-]{36}$/);
  await waitForStatus('running');
  await page.getByRole('button', { name: 'Cancel session' }).click();
  await waitForStatus('cancelled');
  await page.getByRole('heading', { name: 'Why it was cancelled' }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Cancel session' }).count(), 0);
  await shot('session-cancelled');

  step = 'find the failed session and its cause';
  await page.getByRole('link', { name: 'Sessions', exact: true }).click();
  await page.getByRole('heading', { level: 1, name: 'Sessions' }).waitFor();
  await page.getByLabel('Status').selectOption('failed');
  const failedRows = page.locator('tbody tr');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('tbody tr')];
    return rows.length > 0 && rows.every((r) => r.textContent.includes('failed'));
  });
  assert.equal(await failedRows.count(), 1, 'one failed session');
  await shot('sessions-failed');
  await failedRows.first().getByRole('link', { name: /^Session / }).click();
  await waitForStatus('failed');
  const cause = page.getByRole('region', { name: 'Why it failed' });
  await cause.getByText('retries_exhausted').waitFor();
  await cause.getByText('simulated failure').first().waitFor();
  await shot('session-failed');

  step = 'the latest sessions of every agent';
  await page.getByRole('link', { name: 'Sessions', exact: true }).click();
  await page.getByLabel('Status').selectOption('');
  await page.waitForFunction(() => document.querySelectorAll('tbody tr').length === 3);
  const listed = await page.locator('tbody tr td:nth-child(4)').allTextContents();
  assert.deepEqual(listed, ['cancelled', 'completed', 'failed'], 'newest first');

  step = 'the workflows and their task graphs';
  await page.getByRole('link', { name: 'Workflows', exact: true }).click();
  await page.getByRole('heading', { level: 1, name: 'Workflows' }).waitFor();
  const demo = page.getByRole('img', { name: 'Task graph of console-demo 1.0: fetch then summarize' });
  await demo.waitFor();
  assert.equal(await demo.locator('rect').count(), 2);
  assert.equal(await demo.locator('path.edge').count(), 1, 'one arrow along nextTaskId');
  await page.getByRole('img', { name: /^Task graph of long-task 1\.0/ }).waitFor();
  await page.getByText('timeout 30 s').first().waitFor();
  await shot('workflows');

  step = 'start a routed session without naming an agent';
  assert.equal(await page.getByRole('button', { name: /^Start routed session/ }).count(), 1, 'only the routed definition offers it');
  await page.getByRole('button', { name: 'Start routed session of routed-demo 1.0' }).click();
  await page.waitForURL(/#\/sessions\/[0-9a-f-]{36}$/);
  await page.getByRole('heading', { level: 1, name: /^Session / }).waitFor();
  await waitForStatus('completed');
  await page.getByText('routed by console-routed').waitFor();
  await shot('session-routed');
  await page.getByRole('row').filter({ hasText: 'routed by console-routed' }).getByRole('link').click();
  await page.getByRole('heading', { level: 1, name: 'Agent worker' }).waitFor();

  step = 'the keyboard reaches the views';
  await page.getByRole('link', { name: 'Agents', exact: true }).focus();
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { level: 1, name: 'Agents' }).waitFor();

  step = 'nothing left 127.0.0.1 and nothing was logged as an error';
  assert.deepEqual(offsite, [], 'requests off 127.0.0.1');
  assert.deepEqual(errors, [], 'console errors');
  console.log('console browser test: every step passed');
  await browser.close();
} catch (e) {
  console.error(`console browser test failed at step "${step}": ${e.stack || e}`);
  if (offsite.length) console.error(`requests off 127.0.0.1: ${offsite.join(', ')}`);
  if (errors.length) console.error(`errors: ${errors.join(' | ')}`);
  const failure = join(shots || tmpdir(), 'opscore-console-failure.png');
  await page.screenshot({ path: failure }).catch(() => {});
  console.error(`the page as it was: ${failure}`);
  await browser.close();
  process.exit(1);
}
