// The web chat page in a real browser: Debian's Chromium driven by playwright-core.
//
// Starts the `switchboard` binary in development mode on a free loopback port with a
// fresh data directory, opens two pages (alice and bob), and checks, each step with a
// bounded wait: alice opens the dm with bob and sends a message; bob's page shows it;
// bob opens the conversation (a `read` receipt); alice's message shows the read tick;
// bob's typing shows on alice's page and goes away when he empties the field; bob
// replies; alice creates a group with bob and her message there reaches bob; and neither
// page logged a script error or a Content-Security-Policy violation along the way.
// Screenshots of both pages go to target/browser/. The server and the browser are
// stopped at the end, also on failure.
//
// Usage: node tests/browser/chat.test.mjs [path/to/switchboard]
// (default: $SWITCHBOARD_BIN, else target/debug/switchboard). Prints one
// `test browser::<name> ... ok|FAILED` line per test, like cargo, and exits non-zero on
// failure.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const binary = process.argv[2] ?? process.env.SWITCHBOARD_BIN ?? join(root, 'target', 'debug', 'switchboard');
const shots = join(root, 'target', 'browser');
const STEP_MS = 15_000;

/** Starts the server; resolves with its address once it prints `switchboard listening on`. */
function startServer(dataDir) {
  const server = spawn(binary, ['serve', '--dev', '--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    env: { ...process.env, SWITCHBOARD_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  server.stderr.on('data', (chunk) => { log += chunk; });
  const ready = new Promise((resolveAddr, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 30 s:\n${log}`)), 30_000);
    let out = '';
    server.stdout.on('data', (chunk) => {
      out += chunk;
      const match = out.match(/switchboard listening on (\S+)/);
      if (match) {
        clearTimeout(timer);
        resolveAddr(match[1]);
      }
    });
    server.on('exit', (code) => reject(new Error(`server exited (${code}):\n${log}`)));
  });
  return { server, ready, log: () => log };
}

/**
 * Collects what must not happen on a page: uncaught script errors, console errors, and
 * Content-Security-Policy violations (also reported as console errors by Chromium; the
 * event makes each one explicit, with the directive it broke).
 */
async function watchForProblems(page, name, problems) {
  page.on('pageerror', (error) => problems.push(`${name}: script error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`${name}: console error: ${message.text()}`);
  });
  // Init scripts are injected by the browser itself, so the page's CSP does not block it.
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      console.error(`csp violation: ${event.violatedDirective} blocked ${event.blockedURI || 'inline code'}`);
    });
  });
}

async function login(page, base, user) {
  await page.goto(`${base}/`);
  await page.getByTestId('login-user').fill(user);
  await page.getByTestId('login-device').fill('web');
  await page.getByTestId('login-connect').click();
  await page.locator('[data-testid=status][data-state=online]').waitFor({ timeout: STEP_MS });
}

async function main() {
  mkdirSync(shots, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), 'switchboard-browser-'));
  const { server, ready, log } = startServer(dataDir);
  let browser;
  const results = [];
  try {
    const addr = await ready;
    const base = `http://${addr}`;
    // playwright gives every launch a fresh, empty profile of its own.
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    const alice = await (await browser.newContext({ viewport: { width: 1100, height: 700 } })).newPage();
    const bob = await (await browser.newContext({ viewport: { width: 1100, height: 700 } })).newPage();
    const problems = [];
    await watchForProblems(alice, 'alice', problems);
    await watchForProblems(bob, 'bob', problems);
    const step = async (name, body) => {
      try {
        await body();
        results.push([name, true]);
        console.log(`test browser::${name} ... ok`);
      } catch (error) {
        results.push([name, false]);
        console.log(`test browser::${name} ... FAILED\n${error.stack ?? error}`);
        throw error;
      }
    };

    await step('pages_log_in_in_dev_mode', async () => {
      await login(alice, base, 'alice');
      await login(bob, base, 'bob');
    });
    const text = `hello bob, it is ${new Date().toISOString()}`;
    await step('a_message_reaches_the_other_page', async () => {
      await alice.getByTestId('new-dm-user').fill('bob');
      await alice.getByTestId('new-dm-open').click();
      await alice.getByTestId('composer-input').fill(text);
      await alice.getByTestId('composer-send').click();
      // Acked: the pending bubble becomes a stored message with its seq.
      await alice.locator('[data-testid=message][data-seq="1"]', { hasText: text }).waitFor({ timeout: STEP_MS });
      await bob.locator('[data-testid=conv-item][data-conv="dm:alice:bob"]').waitFor({ timeout: STEP_MS });
    });
    await step('opening_it_shows_the_read_tick_to_the_sender', async () => {
      await bob.locator('[data-testid=conv-item][data-conv="dm:alice:bob"]').click();
      await bob.locator('[data-testid=message][data-from=alice]', { hasText: text }).waitFor({ timeout: STEP_MS });
      await alice.locator('[data-testid=message][data-seq="1"][data-state=read]').waitFor({ timeout: STEP_MS });
    });
    await step('typing_shows_on_the_other_page_then_clears', async () => {
      await bob.getByTestId('composer-input').pressSequentially('hi al', { delay: 30 });
      await alice.locator('[data-testid=typing]', { hasText: 'bob is typing' }).waitFor({ timeout: STEP_MS });
      // Emptying the field sends `stop`, which clears the indicator (long before its timeout).
      await bob.getByTestId('composer-input').fill('');
      await alice.locator('[data-testid=typing]', { hasText: /^$/ }).waitFor({ timeout: STEP_MS });
    });
    await step('a_reply_comes_back', async () => {
      await bob.getByTestId('composer-input').fill('hi alice');
      await bob.getByTestId('composer-send').click();
      await alice.locator('[data-testid=message][data-from=bob]', { hasText: 'hi alice' }).waitFor({ timeout: STEP_MS });
    });
    await step('a_group_message_reaches_the_members', async () => {
      await alice.getByText('New group').click();
      await alice.getByTestId('new-group-name').fill('Trip');
      await alice.getByTestId('new-group-members').fill('bob');
      await alice.getByTestId('new-group-create').click();
      const group = '[data-testid=conv-item][data-conv^="group:"]';
      await alice.locator(group).waitFor({ timeout: STEP_MS });
      await bob.locator(group).waitFor({ timeout: STEP_MS });
      await alice.locator(group).click();
      await alice.getByTestId('composer-input').fill('packing list?');
      await alice.getByTestId('composer-send').click();
      await bob.locator(group).click();
      await bob.locator('[data-testid=message][data-from=alice]', { hasText: 'packing list?' }).waitFor({ timeout: STEP_MS });
    });
    await step('no_script_errors_or_csp_violations', async () => {
      if (problems.length > 0) throw new Error(problems.join('\n'));
    });
    await alice.screenshot({ path: join(shots, 'alice.png') });
    await bob.screenshot({ path: join(shots, 'bob.png') });
    console.log(`screenshots: ${join(shots, 'alice.png')}, ${join(shots, 'bob.png')}`);
  } catch (error) {
    if (!results.some(([, passed]) => !passed)) {
      results.push(['setup', false]);
      console.log(`test browser::setup ... FAILED\n${error.stack ?? error}\n--- server log ---\n${log()}`);
    }
  } finally {
    if (browser) await browser.close().catch(() => {});
    server.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  }
  const failed = results.filter(([, passed]) => !passed).length;
  console.log(`test result: ${failed ? 'FAILED' : 'ok'}. ${results.length - failed} passed; ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
