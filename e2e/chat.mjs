// chat.mjs — browser end-to-end check of the chat page against two running gateways.
//
//   node chat.mjs [baseA] [baseB]     (defaults http://127.0.0.1:3001 http://127.0.0.1:3002)
//
// Page A (alice) on gateway A and page B (bob) on gateway B join room "lobby" and exchange
// messages, including HTML/script payloads that must show as plain text. Checks: each side
// sees the other's messages once, own messages get acked (no longer .pending, data-id set),
// no dialog opens, no <img>/<script> appears in #messages, no CSP violation or page error,
// and after a reload page B shows the history. Screenshots go to e2e/screenshots/.
// Uses the system Chromium (/usr/bin/chromium, or $CHROMIUM_PATH) through playwright-core.
// Exits non-zero with "FAIL: <what>" on the first failed check.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [baseA = 'http://127.0.0.1:3001', baseB = 'http://127.0.0.1:3002'] = process.argv.slice(2);
const ROOM = 'lobby';
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS || 15000); // per wait
const WATCHDOG_MS = Number(process.env.E2E_WATCHDOG_MS || 180000); // whole run
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(HERE, 'screenshots');

let passed = 0;

class CheckFailed extends Error {}

function pass(what) {
  passed += 1;
  console.log(`ok ${passed} - ${what}`);
}

function check(cond, what, detail = '') {
  if (!cond) throw new CheckFailed(detail ? `${what} (${detail})` : what);
  pass(what);
}

/** Runs an async wait/assertion; a timeout or error becomes a failed check named `what`. */
async function step(what, fn) {
  try {
    await fn();
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    throw new CheckFailed(`${what}: ${String(err.message || err).split('\n')[0]}`);
  }
  pass(what);
}

/** Collects what must never happen on a page: dialogs, page errors, CSP violations. */
function watch(page, label) {
  const trouble = [];
  page.on('dialog', async (d) => {
    trouble.push(`${label}: a ${d.type()} dialog opened: ${JSON.stringify(d.message())}`);
    await d.dismiss().catch(() => {});
  });
  page.on('pageerror', (err) => trouble.push(`${label}: page error: ${err.message}`));
  page.on('console', (msg) => {
    const text = msg.text();
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(text)) {
      trouble.push(`${label}: CSP violation: ${text}`);
    }
  });
  return trouble;
}

async function join(page, base, name) {
  await step(`${name}: page loads at ${base}`, async () => {
    const res = await page.goto(`${base}/`, { waitUntil: 'load', timeout: TIMEOUT });
    if (!res || !res.ok()) throw new Error(`HTTP ${res ? res.status() : 'no response'}`);
    await page.waitForSelector('#join-form', { state: 'visible', timeout: TIMEOUT });
  });
  await page.fill('#name', name);
  await page.fill('#room', ROOM);
  await page.click('#join-button');
  await joined(page, name);
}

/** Waits until the page is connected and the join's history has been rendered. */
async function joined(page, name) {
  await step(`${name}: joined #${ROOM} and connected`, async () => {
    await page.waitForSelector('#composer', { state: 'visible', timeout: TIMEOUT });
    await page.waitForSelector('#status[data-state="connected"]', { timeout: TIMEOUT });
    await page.waitForFunction(
      () => document.querySelector('#messages')?.dataset.phase !== 'joining',
      null, { timeout: TIMEOUT },
    );
  });
  const gw = (await page.textContent('#gateway'))?.trim();
  check(gw && gw !== '—', `${name}: #gateway shows the gateway id`, `got ${JSON.stringify(gw)}`);
  console.log(`#   ${name} is on gateway ${gw}`);
}

/** Types `text` into the composer (newlines via Shift+Enter) and sends it with Enter. */
async function say(page, text) {
  await page.click('#text');
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i += 1) {
    if (i > 0) await page.keyboard.press('Shift+Enter');
    await page.keyboard.insertText(lines[i]);
  }
  await page.keyboard.press('Enter');
}

/** All rendered messages whose .text equals `text` exactly: [{id, author, pending, time, title}]. */
function find(page, text) {
  return page.evaluate((t) => [...document.querySelectorAll('#messages .msg:not(.system)')]
    .filter((m) => m.querySelector('.text')?.textContent === t)
    .map((m) => ({
      id: m.dataset.id || null,
      author: m.querySelector('.author')?.textContent ?? null,
      pending: m.classList.contains('pending'),
      failed: m.classList.contains('failed'),
      time: m.querySelector('.time')?.textContent ?? null,
      title: m.querySelector('.time')?.getAttribute('title') ?? null,
    })), text);
}

async function waitForText(page, text, label) {
  await step(`${label} sees ${JSON.stringify(text)}`, () => page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .msg .text')].some((e) => e.textContent === t),
    text, { timeout: TIMEOUT },
  ));
}

/** Sends from `from`, checks it is acked there and shown once on both pages, by `author`. */
async function exchange(from, fromName, to, toName, text) {
  await say(from, text);
  await waitForText(to, text, toName);
  await step(`${fromName}'s own copy of ${JSON.stringify(text)} is acked`, () => from.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .msg')].some((m) => m.querySelector('.text')
      ?.textContent === t && !m.classList.contains('pending') && m.dataset.id),
    text, { timeout: TIMEOUT },
  ));
  // Give a duplicate live event a moment to (wrongly) show up before counting.
  await from.waitForTimeout(300);
  const mine = await find(from, text);
  const theirs = await find(to, text);
  check(mine.length === 1, `${fromName} shows ${JSON.stringify(text)} exactly once`, `${mine.length} copies`);
  check(theirs.length === 1, `${toName} shows ${JSON.stringify(text)} exactly once`, `${theirs.length} copies`);
  check(theirs[0].author === fromName, `${toName} shows ${fromName} as the author`, `author ${theirs[0].author}`);
  check(mine[0].id && mine[0].id === theirs[0].id, 'both pages agree on the event id',
    `${mine[0].id} vs ${theirs[0].id}`);
  check(/^\d{2}:\d{2}$/.test(theirs[0].time || '') && !!theirs[0].title,
    'time is HH:MM with a full timestamp in its title', `${theirs[0].time} / ${theirs[0].title}`);
}

async function noInjectedMarkup(page, label) {
  const counts = await page.evaluate(() => ({
    img: document.querySelectorAll('#messages img').length,
    script: document.querySelectorAll('#messages script').length,
  }));
  check(counts.img === 0, `${label}: no <img> element inside #messages`, `${counts.img} found`);
  check(counts.script === 0, `${label}: no <script> element inside #messages`, `${counts.script} found`);
}

function noTrouble(trouble) {
  check(trouble.length === 0, 'no dialog, page error or CSP violation', trouble.join('; '));
}

async function main() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new CheckFailed(`${CHROMIUM} not found: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const pages = [];
  try {
    const viewport = { width: 1280, height: 800 };
    const ctxA = await browser.newContext({ viewport });
    const ctxB = await browser.newContext({ viewport });
    const a = await ctxA.newPage();
    const b = await ctxB.newPage();
    pages.push(['a', a], ['b', b]);
    const ta = watch(a, 'page A');
    const tb = watch(b, 'page B');
    const allTrouble = () => ta.concat(tb);

    await a.goto(`${baseA}/`, { waitUntil: 'load', timeout: TIMEOUT }).catch(() => {});
    await a.screenshot({ path: path.join(SHOTS, 'join.png') }).catch(() => {});
    await join(a, baseA, 'alice');
    await join(b, baseB, 'bob');

    // A tag per run so that history left by earlier runs cannot satisfy the checks.
    const tag = Math.random().toString(36).slice(2, 8);
    const texts = {
      a1: `hello from alice ${tag}`,
      b1: `hi alice, bob here ${tag}`,
      b2: `<script>alert(1)</script> ${tag}`,
      a2: `<img src=x onerror=alert(1)> ${tag}`,
      a3: `two lines ${tag}\n  and an indented second line`,
    };
    await exchange(a, 'alice', b, 'bob', texts.a1);
    await exchange(b, 'bob', a, 'alice', texts.b1);
    await exchange(b, 'bob', a, 'alice', texts.b2);
    await exchange(a, 'alice', b, 'bob', texts.a2);
    await exchange(a, 'alice', b, 'bob', texts.a3);

    await noInjectedMarkup(a, 'page A');
    await noInjectedMarkup(b, 'page B');
    noTrouble(allTrouble());

    // Reload B: the form remembers bob/lobby, and rejoining shows this run's messages.
    await step('page B reloads', () => b.reload({ waitUntil: 'load', timeout: TIMEOUT }));
    const remembered = await b.evaluate(() => [
      document.querySelector('#name').value, document.querySelector('#room').value]);
    check(remembered[0] === 'bob' && remembered[1] === ROOM,
      'page B remembers name and room', JSON.stringify(remembered));
    await b.click('#join-button');
    await joined(b, 'bob');
    for (const t of Object.values(texts)) {
      await waitForText(b, t, 'bob after reload (history)');
      const copies = await find(b, t);
      check(copies.length === 1, `history shows ${JSON.stringify(t)} once`, `${copies.length} copies`);
    }
    await noInjectedMarkup(b, 'page B after reload');

    await a.screenshot({ path: path.join(SHOTS, 'desktop-a.png') });
    await b.screenshot({ path: path.join(SHOTS, 'desktop-b.png') });
    await a.setViewportSize({ width: 375, height: 740 });
    await a.waitForTimeout(200);
    await a.screenshot({ path: path.join(SHOTS, 'phone.png') });
    const overflow = await a.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    check(!overflow, 'phone viewport (375 px) has no horizontal overflow');
    noTrouble(allTrouble());
    console.log(`# screenshots in ${SHOTS}`);
  } catch (err) {
    for (const [label, page] of pages) {
      await page.screenshot({ path: path.join(SHOTS, `fail-${label}.png`) }).catch(() => {});
    }
    throw err;
  } finally {
    await browser.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => {
  console.error(`FAIL: the run took longer than ${WATCHDOG_MS} ms`);
  console.log(`chat e2e: ${passed} passed, 1 failed`);
  process.exit(1);
}, WATCHDOG_MS);

main().then(() => {
  clearTimeout(watchdog);
  console.log(`chat e2e: ${passed} passed, 0 failed`);
}, (err) => {
  clearTimeout(watchdog);
  console.error(`FAIL: ${err instanceof CheckFailed ? err.message : (err.stack || err)}`);
  console.log(`chat e2e: ${passed} passed, 1 failed`);
  process.exit(1);
});
