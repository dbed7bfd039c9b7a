// chat.mjs — browser end-to-end check of the chat page against two running gateways.
//
//   node chat.mjs [baseA] [baseB]     (defaults http://127.0.0.1:3001 http://127.0.0.1:3002)
//
// Six phases, each reported even when an earlier one failed:
//
// 1. chat: page A (alice) on gateway A and page B (bob) on gateway B join room "lobby" and
//    exchange messages, including HTML/script payloads that must show as plain text. Checks:
//    each side sees the other's messages once, own messages get acked (no longer .pending,
//    data-id set), no dialog opens, no <img>/<script> appears in #messages, no CSP violation
//    or page error, and after a reload page B shows the history. Then, by keyboard and
//    across the gateways: bob reacts 👍 to alice's message (alice sees "👍 1: bob"), bob is
//    offered no Edit or Delete on it, alice edits it (bob sees the new text marked edited)
//    and deletes it (both pages show the tombstone; after a reload B's history has it, and
//    neither text).
// 2. metrics (needs E2E_ARCHIVER_URL and E2E_LOGGER_URL, the archiver's and the logger's
//    HTTP base URLs): after the chat, /metrics of both gateways, the archiver and the logger
//    must show the traffic: chat_events_published_total{type="message"} (gateways summed),
//    chat_events_delivered_total, chat_events_archived_total, chat_events_logged_total all
//    above 0, chat_clients_connected on both gateways (one open page each) and
//    chat_broker_connected on every service. Each assertion counts in the totals.
// 3. heartbeat: page G (gina, on A, with ?ping_ms=1500&dead_ms=1000) pings when the server
//    is quiet and gets `pong`; then everything her socket receives is hidden from her page
//    (a connection that died without a FIN): the page must give the socket up by itself
//    within ping + deadline + backoff, reconnect, rejoin with `since` and show the two
//    messages hank (H, on B) sent meanwhile exactly once.
// 4. reload: page I (ivy, on A) sends a message whose `say` is swallowed on its way out, so
//    it stays pending; it must be in localStorage with a UUIDv7; after a reload and Join it
//    is shown pending at once, sent again after the `joined` with the same id, acked under
//    that id, and shown once on both pages and once in the archive (E2E_ARCHIVER_URL). Then
//    a message that reached the server while the page heard nothing back: after a reload
//    the rejoin's history confirms it by id, and the page sends nothing again.
// 5. alarm: RabbitMQ's memory alarm is raised (rabbitmqctl set_vm_memory_high_watermark
//    0.000001; always lifted again with 0.4, also on a watchdog timeout or a signal). Both
//    gateways' /readyz must answer 503; page E's (erin, on A) message must show as failed
//    (`unavailable`) within 2 s, with a Retry that says retrying is safe; after the alarm,
//    Retry posts it exactly once, under its first id: on her page, on frank's (F, on B) and
//    in the archive. Screenshots alarm-failed-*.png and alarm-retried-*.png (desktop, phone).
// 6. private (needs E2E_TOKEN_GW1/E2E_TOKEN_GW2, two gateways in AUTH_MODE=token on the same
//    broker, and E2E_TOKEN_ALICE/BOB/MALLORY, tokens `gateway token` minted for them): alice
//    signs in on token gateway 1 through `#token=` (which must leave the address bar), creates
//    a private room and adds bob; bob, on token gateway 2, sees the lock and her message;
//    mallory, also on gateway 2, is refused the room (`forbidden`) and sees none of it; a page
//    without a token is asked to sign in. Screenshots private-*.png (desktop, phone).
// 7. failover (needs E2E_GW1_PID, the process id of gateway A; it runs last because it stops
//    that gateway): page C (carol) is opened on gateway A with ?gw=<A>/ws,<B>/ws and page D
//    (dave) on gateway B, both in a room of their own. Dave keeps sending; gateway A gets
//    SIGTERM. Carol must get close code 1012, reconnect to gateway B by herself (#gateway,
//    #status), rejoin with `since` = the last event id she saw, and show every message of
//    dave's exactly once and in order (.msg[data-id] unique), including three he sent while
//    she was disconnected, which can only reach her through the rejoin's history. To make
//    that window certain, carol's page runs on Playwright's clock, held from just before the
//    SIGTERM until those three are acked: her page's own reconnect timer (50-300 ms after a
//    1012) fires when the clock is released. A WebSocket wrapper installed with
//    addInitScript records her sockets (URL, close code, `since`, frames) for the checks.
//
// Screenshots go to e2e/screenshots/ (failover-carol.png/failover-dave.png after the
// failover, fail-*.png when a phase fails). Uses the system Chromium (/usr/bin/chromium, or
// $CHROMIUM_PATH) through playwright-core. Prints `ok N - ...` / `not ok N - ...` lines and
// ends with `chat e2e: P passed, F failed`; exits non-zero when anything failed.
// E2E_PHASES=private (a comma-separated list) runs only the phases named. A phase
// stops at its first failed check (metrics assertions are all evaluated).

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [baseA = 'http://127.0.0.1:3001', baseB = 'http://127.0.0.1:3002'] = process.argv.slice(2);
const ROOM = 'lobby';
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS || 15000); // per wait
const WATCHDOG_MS = Number(process.env.E2E_WATCHDOG_MS || 300000); // whole run
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARCHIVER_URL = process.env.E2E_ARCHIVER_URL || '';
const LOGGER_URL = process.env.E2E_LOGGER_URL || '';
const GW1_PID = Number(process.env.E2E_GW1_PID || 0);
// Ids the gateways were started with (scripts/e2e.sh: GATEWAY_ID).
const GW1_ID = process.env.E2E_GW1_ID || 'gw-e2e-1';
const GW2_ID = process.env.E2E_GW2_ID || 'gw-e2e-2';
const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(HERE, 'screenshots');

let passed = 0;
let failed = 0;

class CheckFailed extends Error {}

function pass(what) {
  passed += 1;
  console.log(`ok ${passed + failed} - ${what}`);
}

function fail(what) {
  failed += 1;
  console.log(`not ok ${passed + failed} - ${what}`);
}

function check(cond, what, detail = '') {
  if (!cond) throw new CheckFailed(detail ? `${what} (${detail})` : what);
  pass(what);
}

/** Like check, but a failure is counted and the phase goes on. */
function softCheck(cond, what, detail = '') {
  if (cond) pass(what);
  else fail(detail ? `${what} (${detail})` : what);
}

/** Runs an async wait/assertion; a timeout or error becomes a failed check named `what`. */
async function step(what, fn) {
  let value;
  try {
    value = await fn();
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    throw new CheckFailed(`${what}: ${String(err.message || err).split('\n')[0]}`);
  }
  pass(what);
  return value;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

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

/** Opens `url` (default: the page at `base`) and joins `room` as `name`. */
async function join(page, base, name, { url = `${base}/`, room = ROOM } = {}) {
  await step(`${name}: page loads at ${url}`, async () => {
    const res = await page.goto(url, { waitUntil: 'load', timeout: TIMEOUT });
    if (!res || !res.ok()) throw new Error(`HTTP ${res ? res.status() : 'no response'}`);
    await page.waitForSelector('#join-form', { state: 'visible', timeout: TIMEOUT });
  });
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join-button');
  return joined(page, name, room);
}

/** Waits until the page is connected and the join's history has been rendered. */
async function joined(page, name, room = ROOM) {
  await step(`${name}: joined #${room} and connected`, async () => {
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
  return gw;
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

/** Waits until the page's own copy of `text` is acked; returns its event id. */
async function ackedId(page, text) {
  const handle = await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .msg')].find((m) => m.querySelector('.text')
      ?.textContent === t && !m.classList.contains('pending') && m.dataset.id)?.dataset.id,
    text, { timeout: TIMEOUT },
  );
  return handle.jsonValue();
}

/** Sends from `from`, checks it is acked there and shown once on both pages, by `author`. */
async function exchange(from, fromName, to, toName, text) {
  await say(from, text);
  await waitForText(to, text, toName);
  await step(`${fromName}'s own copy of ${JSON.stringify(text)} is acked`, () => ackedId(from, text));
  // Give a duplicate live event a moment to (wrongly) show up before counting.
  await from.waitForTimeout(300);
  const mine = await find(from, text);
  const theirs = await find(to, text);
  check(mine.length === 1, `${fromName} shows ${JSON.stringify(text)} exactly once`, `${mine.length} copies`);
  check(theirs.length === 1, `${toName} shows ${JSON.stringify(text)} exactly once`, `${theirs.length} copies`);
  // Open mode: the page marks every author as a guest (identity.js authorLabel).
  const author = theirs[0].author;
  check(author === fromName || author === `${fromName} (guest)`,
    `${toName} shows ${fromName} as the author`, `author ${author}`);
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

async function newPage(browser) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  return ctx.newPage();
}

// ---------------------------------------------------------------- phase 1: chat

/** Alice on gateway A and bob on gateway B chat; returns the two pages, still open. */
async function chatPhase(browser, pages) {
  const a = await newPage(browser);
  const b = await newPage(browser);
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

  // Presence across the gateways: each page lists both (within a presence flush), and
  // typing on A shows "alice is typing…" on B, which goes away when A sends.
  for (const [page, label] of [[a, 'page A'], [b, 'page B']]) {
    await step(`${label} lists alice and bob online`, () => page.waitForFunction(() => {
      const names = [...document.querySelectorAll('#members-list li')].map((li) => li.textContent);
      return names.includes('alice') && names.includes('bob')
        && /^\d+ online$/.test(document.querySelector('#members-summary').textContent);
    }, null, { timeout: TIMEOUT }));
  }
  await a.fill('#text', `typing ${tag}`);
  await step('page B shows "alice is typing…"', () => b.waitForFunction(
    () => document.querySelector('#typing').textContent === 'alice is typing…',
    null, { timeout: TIMEOUT }));
  await a.press('#text', 'Enter');
  await step('the typing line on page B clears once alice sends', () => b.waitForFunction(
    () => document.querySelector('#typing').textContent === '', null, { timeout: TIMEOUT }));
  await waitForText(b, `typing ${tag}`, 'bob sees the message typed');
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

  // Edits, deletions and reactions across the gateways, by keyboard: bob reacts to
  // alice's message, alice edits it, then deletes it; each shows on the other page live,
  // and a reload of B shows the tombstone from history.
  const original = `edit me ${tag}`;
  const edited = `edited ${tag}`;
  await say(a, original);
  await waitForText(b, original, 'bob');
  const id = await ackedId(a, original);
  const on = (page, selector) => page.locator(`#messages .msg[data-id="${id}"] ${selector}`);
  await step('bob reacts 👍 with the keyboard', async () => {
    await on(b, '.tool.react[aria-label="React with 👍"]').focus();
    await b.keyboard.press('Enter');
  });
  await step('alice sees "👍 1" from bob', () => a.waitForFunction((i) => {
    const r = document.querySelector(`#messages .msg[data-id="${i}"] .reaction`);
    return r && r.textContent === '👍 1' && r.getAttribute('aria-label') === '👍 1: bob';
  }, id, { timeout: TIMEOUT }));
  const bobTools = await on(b, '.tool').evaluateAll((els) => els.map((e) => e.textContent));
  check(!bobTools.includes('Edit') && !bobTools.includes('Delete'),
    'bob is offered no Edit or Delete on alice\'s message', JSON.stringify(bobTools));
  await step('alice edits her message (Edit, type, Enter)', async () => {
    await on(a, '.tool.edit').click();
    await on(a, '.editor').fill(edited);
    await on(a, '.editor').press('Enter');
  });
  await step('bob sees the new text, marked edited', () => b.waitForFunction((i) => {
    const m = document.querySelector(`#messages .msg[data-id="${i}"]`);
    return m && m.querySelector('.text').textContent.startsWith('edited ') && m.querySelector('.edited');
  }, id, { timeout: TIMEOUT }));
  await step('alice deletes it (Delete, then confirm)', async () => {
    await on(a, '.tool.delete').click();
    await on(a, '.really-delete').press('Enter');
  });
  for (const [page, label] of [[a, 'page A'], [b, 'page B']]) {
    await step(`${label} shows the message as deleted`, () => page.waitForFunction((i) => {
      const m = document.querySelector(`#messages .msg[data-id="${i}"]`);
      return m && m.classList.contains('deleted')
        && m.querySelector('.text').textContent === 'This message was deleted'
        && !m.querySelector('.reaction');
    }, id, { timeout: TIMEOUT }));
  }
  await step('page B reloads again', () => b.reload({ waitUntil: 'load', timeout: TIMEOUT }));
  await b.click('#join-button');
  await joined(b, 'bob');
  await step('the history on page B has the tombstone and neither text', () => b.waitForFunction(
    ([i, t1, t2]) => {
      const m = document.querySelector(`#messages .msg[data-id="${i}"]`);
      const texts = [...document.querySelectorAll('#messages .text')].map((e) => e.textContent);
      return m && m.classList.contains('deleted') && !texts.includes(t1) && !texts.includes(t2);
    }, [id, original, edited], { timeout: TIMEOUT }));
  noTrouble(allTrouble());

  await a.screenshot({ path: path.join(SHOTS, 'desktop-a.png') });
  await b.screenshot({ path: path.join(SHOTS, 'desktop-b.png') });
  await a.setViewportSize({ width: 375, height: 740 });
  await a.waitForTimeout(200);
  await a.screenshot({ path: path.join(SHOTS, 'phone.png') });
  const overflow = await a.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  check(!overflow, 'phone viewport (375 px) has no horizontal overflow');
  noTrouble(allTrouble());
}

// ---------------------------------------------------------------- phase 2: metrics

/** Parses the Prometheus text format into [{name, labels: {k: v}, value}]. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2];
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

async function scrape(base) {
  const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`${base}/metrics: HTTP ${res.status}`);
  return parseMetrics(await res.text());
}

/** Samples of `name` whose labels include `labels`. */
function pick(samples, name, labels = {}) {
  return samples.filter((s) => s.name === name
    && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

const sum = (samples) => samples.reduce((acc, s) => acc + s.value, 0);
const show = (samples) => (samples.length ? String(sum(samples)) : 'absent');

/**
 * After the chat: the four services' /metrics must show the traffic. The counters are
 * bumped asynchronously (the subscribers count a batch once it is durable), so the scrape
 * is repeated until every assertion holds or TIMEOUT has passed; then each assertion is
 * reported on its own.
 */
async function metricsPhase() {
  if (!ARCHIVER_URL || !LOGGER_URL) {
    console.log('# SKIP metrics: E2E_ARCHIVER_URL and E2E_LOGGER_URL are not set');
    return;
  }
  const services = { gw1: baseA, gw2: baseB, archiver: ARCHIVER_URL, logger: LOGGER_URL };
  const evaluate = async () => {
    const m = {};
    for (const [key, base] of Object.entries(services)) m[key] = await scrape(base);
    const gws = [...m.gw1, ...m.gw2];
    const published = pick(gws, 'chat_events_published_total', { type: 'message' });
    const delivered = pick(gws, 'chat_events_delivered_total');
    const archived = pick(m.archiver, 'chat_events_archived_total');
    const logged = pick(m.logger, 'chat_events_logged_total');
    const clients1 = pick(m.gw1, 'chat_clients_connected');
    const clients2 = pick(m.gw2, 'chat_clients_connected');
    const broker = Object.fromEntries(Object.keys(services)
      .map((key) => [key, pick(m[key], 'chat_broker_connected')]));
    const checks = [
      [sum(published) > 0, 'metrics: chat_events_published_total{type="message"} > 0 (gateways summed)',
        `gw1 ${show(pick(m.gw1, 'chat_events_published_total', { type: 'message' }))}, `
        + `gw2 ${show(pick(m.gw2, 'chat_events_published_total', { type: 'message' }))}`],
      [sum(delivered) > 0, 'metrics: chat_events_delivered_total > 0 (gateways summed)',
        `gw1 ${show(pick(m.gw1, 'chat_events_delivered_total'))}, `
        + `gw2 ${show(pick(m.gw2, 'chat_events_delivered_total'))}`],
      [sum(archived) > 0, 'metrics: chat_events_archived_total > 0 on the archiver', show(archived)],
      [sum(logged) > 0, 'metrics: chat_events_logged_total > 0 on the logger', show(logged)],
      // One page is open on each gateway (alice on gateway A, bob on gateway B).
      [clients1.length > 0 && sum(clients1) === 1,
        'metrics: chat_clients_connected appears on gateway A and counts its 1 page', show(clients1)],
      [clients2.length > 0 && sum(clients2) === 1,
        'metrics: chat_clients_connected appears on gateway B and counts its 1 page', show(clients2)],
      ...Object.entries(broker).map(([key, s]) => [s.length > 0,
        `metrics: chat_broker_connected appears on ${key}`,
        s.length ? s.map((x) => `${JSON.stringify(x.labels)} ${x.value}`).join(', ') : 'absent']),
    ];
    const summary = `published=${show(published)} delivered=${show(delivered)} `
      + `archived=${show(archived)} logged=${show(logged)} `
      + `clients=${show(clients1)}+${show(clients2)} `
      + `broker_connected=${Object.entries(broker)
        .map(([k, s]) => `${k}:${s.length ? s.map((x) => x.value).join('+') : 'absent'}`).join(',')}`;
    return { checks, summary };
  };

  const deadline = Date.now() + TIMEOUT;
  let result;
  let error = null;
  for (;;) {
    try {
      result = await evaluate();
      error = null;
    } catch (err) {
      error = err;
    }
    if ((result && !error && result.checks.every(([ok]) => ok)) || Date.now() > deadline) break;
    await sleep(500);
  }
  if (error) {
    softCheck(false, 'metrics: /metrics of the gateways, the archiver and the logger answer',
      String(error.message || error));
    return;
  }
  console.log(`# metrics: ${result.summary}`);
  for (const [ok, what, detail] of result.checks) softCheck(ok, what, ok ? '' : `got ${detail}`);
}

// ---------------------------------------------------------------- phase 6: failover

/**
 * Installed before the page's own scripts: wraps WebSocket to record, per socket, its URL,
 * open/close times, close code, the `join`, `say` and `ping` frames sent and a digest of the
 * frames received. It changes what the page does only when a test asks it to:
 * `window.__e2eMuteUpTo = n` hides from the page every frame that arrives on its first n
 * sockets (connections that went silent; later sockets work), `window.__e2eDropSays = true`
 * swallows the page's `say` frames (a message that never reaches the gateway). Both are off
 * on every page load.
 */
function spyOnSockets() {
  const Native = window.WebSocket;
  const log = [];
  const records = new WeakMap();
  Object.defineProperty(window, '__e2eSockets', { value: log });
  window.__e2eMuteUpTo = 0;
  window.__e2eDropSays = false;
  class Recorded extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const rec = {
        url: String(url), created: Date.now(), opened: null, closed: null, code: null,
        joins: [], says: [], pings: [], frames: [],
      };
      rec.index = log.length;
      log.push(rec);
      records.set(this, rec);
      this.addEventListener('open', () => { rec.opened = Date.now(); });
      this.addEventListener('close', (e) => {
        rec.closed = Date.now();
        rec.code = e.code;
      });
      // Registered before the page's own listener, so it can hide a frame from the page.
      this.addEventListener('message', (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch { m = null; }
        const f = { t: Date.now(), type: m && m.type };
        if (f.type === 'event') f.id = m.event && m.event.id;
        if (f.type === 'joined') f.ids = (m.history || []).map((ev) => ev.id);
        if (f.type === 'error') f.code = m.code;
        if (f.type === 'hello') f.gateway = m.gateway;
        if (f.type === 'ack') f.id = m.id;
        if (m && m.ref !== undefined) f.ref = m.ref;
        if (rec.index < window.__e2eMuteUpTo) {
          f.muted = true;
          e.stopImmediatePropagation();
        }
        rec.frames.push(f);
      });
    }

    send(data) {
      try {
        const m = JSON.parse(data);
        const rec = records.get(this);
        if (m && m.type === 'join' && rec) rec.joins.push({ since: m.since ?? null, t: Date.now() });
        if (m && m.type === 'ping' && rec) rec.pings.push({ ref: m.ref ?? null, t: Date.now() });
        if (m && m.type === 'say' && rec) {
          const dropped = !!window.__e2eDropSays;
          rec.says.push({ id: m.id ?? null, ref: m.ref ?? null, text: m.text, t: Date.now(), dropped });
          if (dropped) return undefined;
        }
      } catch { /* not JSON: not ours to judge */ }
      return super.send(data);
    }
  }
  window.WebSocket = Recorded;
}

/** Whether something still answers HTTP at `base`. */
async function answers(base) {
  try {
    await fetch(`${base}/livez`, { signal: AbortSignal.timeout(2000) });
    return true;
  } catch {
    return false;
  }
}

async function failoverPhase(browser, pages) {
  if (!GW1_PID) {
    console.log('# SKIP failover: E2E_GW1_PID (the process id of gateway A) is not set');
    return;
  }
  const tag = Math.random().toString(36).slice(2, 8);
  const room = `failover-${tag}`;
  const wsA = `${baseA.replace(/^http/, 'ws')}/ws`;
  const wsB = `${baseB.replace(/^http/, 'ws')}/ws`;

  const c = await newPage(browser);
  const d = await newPage(browser);
  pages.push(['carol', c], ['dave', d]);
  const tc = watch(c, 'page C');
  const td = watch(d, 'page D');
  await c.addInitScript(spyOnSockets);
  // Carol's timers run on Playwright's clock, which flows like the real one except while it
  // is held (below). That is how the test keeps her disconnected for a while.
  await c.clock.install();

  const carolGw = await join(c, baseA, 'carol', { url: `${baseA}/?gw=${wsA},${wsB}`, room });
  check(carolGw === GW1_ID, `carol (?gw=<A>,<B>) starts on gateway A (${GW1_ID})`, `got ${carolGw}`);
  const daveGw = await join(d, baseB, 'dave', { room });
  check(daveGw === GW2_ID, `dave starts on gateway B (${GW2_ID})`, `got ${daveGw}`);

  // Dave keeps talking through the failover. His sends are sequential and each waits for its
  // ack, so their order is the order of the events.
  const sent = [];
  const daveSays = async (phase) => {
    const text = `failover ${tag} #${String(sent.length + 1).padStart(3, '0')}`;
    await say(d, text);
    let id;
    try {
      id = await ackedId(d, text);
    } catch (err) {
      throw new CheckFailed(`dave's ${JSON.stringify(text)} is acked: ${String(err.message || err).split('\n')[0]}`);
    }
    sent.push({ text, id, phase });
    return text;
  };
  const carolState = () => c.evaluate(() => ({
    state: document.querySelector('#status').dataset.state,
    gateway: document.querySelector('#gateway').textContent.trim(),
    sockets: window.__e2eSockets.length,
    code: window.__e2eSockets[0]?.code ?? null,
    // the newest socket got its `joined`: live events from here on
    joined: !!window.__e2eSockets.at(-1)?.frames.some((f) => f.type === 'joined'),
  }));

  // 1. Carol is on gateway A and gets dave's messages live.
  await waitForText(c, await daveSays('before'), 'carol (on gateway A, before the stop)');
  await waitForText(c, await daveSays('before'), 'carol (on gateway A, before the stop)');

  // 2. Hold carol's clock, so that the reconnect her page schedules on close waits until the
  //    clock is released (after a 1012 her page retries within 50-300 ms, too short to
  //    publish something in between reliably). Then stop gateway A; dave goes on at once.
  const now = await c.evaluate(() => Date.now());
  await c.clock.pauseAt(now + 250);
  process.kill(GW1_PID, 'SIGTERM');
  const stoppedAt = Date.now();
  console.log(`#   sent SIGTERM to gateway A (pid ${GW1_PID}); carol's clock is held`);
  await daveSays('racing the stop');
  await step('carol loses gateway A (close code recorded, #status no longer connected)', async () => {
    const until = Date.now() + TIMEOUT;
    for (;;) {
      const st = await carolState();
      if (st.code !== null && st.state !== 'connected') return;
      if (Date.now() > until) throw new Error(`still ${JSON.stringify(st)}`);
      await sleep(50);
    }
  });

  // 3. While carol is disconnected, dave sends three more.
  for (let k = 0; k < 3; k += 1) await daveSays('while disconnected');
  const during = await carolState();
  check(during.state !== 'connected' && during.sockets === 1,
    'carol was still disconnected while dave sent three messages', JSON.stringify(during));

  // 4. Release the clock: carol's page reconnects by itself (to the next ?gw= URL). Dave
  //    goes on every 120 ms until she is back on gateway B (and joined there) and has been
  //    for three messages.
  await c.clock.resume();
  const resumedAt = Date.now();
  let back = 0;
  let backAt = 0;
  const deadline = Date.now() + 2 * TIMEOUT;
  while (back < 3) {
    const st = await carolState();
    const isBack = st.state === 'connected' && st.gateway === GW2_ID && st.sockets > 1 && st.joined;
    if (isBack && !backAt) backAt = Date.now();
    await daveSays(isBack ? 'after' : 'reconnecting');
    if (isBack) back += 1;
    if (Date.now() > deadline) {
      throw new CheckFailed(`carol is back on gateway B within ${2 * TIMEOUT} ms (${JSON.stringify(st)})`);
    }
    await sleep(120);
  }
  console.log(`#   carol was back on ${GW2_ID} ${backAt - stoppedAt} ms after the SIGTERM, `
    + `${backAt - resumedAt} ms after her clock was released`);

  await step('gateway A has stopped (its HTTP port no longer answers)', async () => {
    const until = Date.now() + TIMEOUT;
    while (await answers(baseA)) {
      if (Date.now() > until) throw new Error(`${baseA} still answers`);
      await sleep(200);
    }
  });

  const sockets = await c.evaluate(() => window.__e2eSockets);
  const first = sockets[0];
  check(first && first.url === wsA && first.opened, 'carol first connected to gateway A', first?.url);
  check(first.code === 1012, 'carol got close code 1012 (service restart) from gateway A',
    `code ${first.code}`);
  const resumed = sockets.find((s) => s.url === wsB && s.opened
    && s.frames.some((f) => f.type === 'joined'));
  check(!!resumed, 'carol reconnected to gateway B by herself and rejoined',
    sockets.map((s) => `${s.url} opened=${!!s.opened} code=${s.code}`).join('; '));
  await step(`carol's #gateway shows ${GW2_ID} and #status is connected`, () => c.waitForFunction(
    (gw) => document.querySelector('#status')?.dataset.state === 'connected'
      && document.querySelector('#gateway')?.textContent.trim() === gw,
    GW2_ID, { timeout: TIMEOUT },
  ));
  const lastSeenBefore = [...first.frames].reverse().find((f) => f.type === 'event')?.id
    ?? first.frames.find((f) => f.type === 'joined')?.ids.at(-1);
  const rejoin = resumed.joins[0];
  check(rejoin && rejoin.since && rejoin.since === lastSeenBefore,
    'carol rejoined with since = the last event id she saw on gateway A',
    `since ${rejoin?.since} vs last seen ${lastSeenBefore}`);
  const warnings = sockets.flatMap((s) => s.frames.filter((f) => f.type === 'error').map((f) => f.code));
  check(warnings.length === 0, 'carol got no error frame (no bad_since, no history_unavailable)',
    warnings.join(', '));

  // Every message of dave's, once each and in order, on carol's page.
  for (const { text } of sent) {
    await waitForText(c, text, 'carol after the failover');
  }
  await c.waitForTimeout(500); // let a (wrong) duplicate show up before counting
  const list = await c.evaluate(() => [...document.querySelectorAll('#messages .msg[data-id]')]
    .map((m) => ({ id: m.dataset.id, text: m.querySelector('.text')?.textContent ?? '' })));
  const ids = list.map((m) => m.id);
  const dupes = ids.filter((id, i) => ids.indexOf(id) !== i);
  check(dupes.length === 0, 'carol: every .msg[data-id] is unique', `repeated: ${dupes.join(', ')}`);
  const shown = list.filter((m) => m.text.startsWith(`failover ${tag} #`));
  check(shown.length === sent.length, `carol shows all ${sent.length} of dave's messages, none twice`,
    `${shown.length} shown`);
  const outOfOrder = sent.findIndex((s, i) => shown[i]?.text !== s.text || shown[i]?.id !== s.id);
  check(outOfOrder === -1, 'carol shows them in the order dave sent them, with his event ids',
    outOfOrder === -1 ? '' : `first difference at #${outOfOrder + 1}: ${JSON.stringify(shown[outOfOrder])}`);

  // How each message reached carol: live on gateway A, in the resumed history, live on B.
  const liveA = new Set(first.frames.filter((f) => f.type === 'event').map((f) => f.id));
  const replay = new Set(resumed.frames.filter((f) => f.type === 'joined').flatMap((f) => f.ids));
  const liveB = new Set(resumed.frames.filter((f) => f.type === 'event').map((f) => f.id));
  const how = { liveA: 0, replay: 0, liveB: 0, none: 0 };
  for (const m of sent) {
    if (liveA.has(m.id)) m.how = 'liveA';
    else if (replay.has(m.id)) m.how = 'replay';
    else if (liveB.has(m.id)) m.how = 'liveB';
    else m.how = 'none';
    how[m.how] += 1;
  }
  console.log(`#   failover: dave sent ${sent.length} messages; carol got ${how.liveA} live on ${GW1_ID}, `
    + `${how.replay} in the history of her rejoin (since), ${how.liveB} live on ${GW2_ID}`);
  check(how.none === 0, 'each message reached carol live or in the resumed history', `${how.none} did not`);
  const early = sent.filter((m) => m.phase === 'before' && m.how !== 'liveA');
  check(early.length === 0, 'the messages sent before the stop reached carol live on gateway A',
    early.map((m) => `${m.text}: ${m.how}`).join(', '));
  const gap = sent.filter((m) => m.phase === 'while disconnected');
  const missed = gap.filter((m) => m.how !== 'replay');
  check(gap.length === 3 && missed.length === 0,
    'the 3 messages sent while carol was disconnected came with her rejoin\'s history',
    missed.map((m) => `${m.text}: ${m.how}`).join(', '));
  const late = sent.filter((m) => m.phase === 'after' && m.how !== 'liveB');
  check(late.length === 0, 'the messages sent once she had rejoined reached her live on gateway B',
    late.map((m) => `${m.text}: ${m.how}`).join(', '));

  await c.screenshot({ path: path.join(SHOTS, 'failover-carol.png') });
  await d.screenshot({ path: path.join(SHOTS, 'failover-dave.png') });

  // Carol can talk again, through gateway B.
  await exchange(c, 'carol', d, 'dave', `carol is back ${tag}`);
  noTrouble(tc.concat(td));
}

// ---------------------------------------------------------------- phase 3: heartbeat

/** Waits until `fn()` (run in the page) returns something truthy; returns it. */
async function until(page, fn, arg, what, timeout = TIMEOUT) {
  const handle = await page.waitForFunction(fn, arg, { timeout, polling: 50 })
    .catch((err) => { throw new CheckFailed(`${what}: ${String(err.message || err).split('\n')[0]}`); });
  return handle.jsonValue();
}

/**
 * Issue 16: a connection that goes silent is noticed. Gina's page runs with a short
 * heartbeat (?ping_ms=1500&dead_ms=1000). While quiet it pings and the gateway answers
 * `pong`. Then every frame of her socket is hidden from her page (a network that dropped
 * without a FIN): her page must give that socket up by itself within ping + dead time,
 * reconnect, rejoin with `since` = the last event it saw, and show the two messages hank
 * sent meanwhile exactly once.
 */
async function heartbeatPhase(browser, pages) {
  const tag = Math.random().toString(36).slice(2, 8);
  const room = `heartbeat-${tag}`;
  const PING = 1500;
  const DEAD = 1000;
  const g = await newPage(browser);
  const h = await newPage(browser);
  pages.push(['gina', g], ['hank', h]);
  const tg = watch(g, 'page G');
  const th = watch(h, 'page H');
  await g.addInitScript(spyOnSockets);
  await join(g, baseA, 'gina', { url: `${baseA}/?ping_ms=${PING}&dead_ms=${DEAD}`, room });
  await join(h, baseB, 'hank', { room });
  await exchange(h, 'hank', g, 'gina', `before the silence ${tag}`);

  // Quiet: the page pings after PING ms without a frame, and the gateway answers.
  const pong = await until(g, () => {
    const s = window.__e2eSockets[0];
    return s.pings.length > 0 && s.frames.some((f) => f.type === 'pong') && s.pings;
  }, null, 'gina: after a quiet spell the page sends a ping and gets a pong', 3 * PING + 2 * DEAD);
  pass(`gina: after ${PING} ms of quiet the page sends a ping (${pong[0].ref}) and gets a pong`);
  await g.waitForTimeout(PING + DEAD);
  check(await g.evaluate(() => window.__e2eSockets.length === 1
    && document.querySelector('#status').dataset.state === 'connected'),
  'gina: answered pings keep the connection (still the first socket, connected)');

  // Silence: hide everything the first socket receives from now on.
  const mutedAt = Date.now();
  await g.evaluate(() => { window.__e2eMuteUpTo = window.__e2eSockets.length; });
  const silent = [`said into the silence 1 ${tag}`, `said into the silence 2 ${tag}`];
  for (const t of silent) {
    await say(h, t);
    await step(`hank's ${JSON.stringify(t)} is acked`, () => ackedId(h, t));
  }
  await until(g, () => window.__e2eSockets.length > 1 && window.__e2eSockets[1].opened,
    null, 'gina: the page gives up the silent socket and opens a new one', PING + DEAD + 5000);
  const gaveUp = Date.now() - mutedAt;
  console.log(`#   gina's page opened a new socket ${gaveUp} ms after her first went silent `
    + `(ping after ${PING} ms, deadline ${DEAD} ms, then the reconnect backoff)`);
  check(gaveUp < PING + DEAD + 3000, 'gina: the silent connection is replaced within ping + deadline + backoff',
    `${gaveUp} ms`);
  for (const t of silent) await waitForText(g, t, 'gina after the reconnect');
  await joined(g, 'gina', room);
  const sockets = await g.evaluate(() => window.__e2eSockets);
  const lastSeen = sockets[0].frames.filter((f) => !f.muted && f.type === 'event').at(-1)?.id;
  const since = sockets[1].joins[0]?.since;
  check(!!since && since === lastSeen, 'gina rejoined with since = the last event id her page saw',
    `since ${since} vs ${lastSeen}`);
  check(sockets[0].pings.length > 0 && sockets[0].frames.some((f) => f.muted),
    'gina: the first socket pinged into the silence', `${sockets[0].pings.length} pings`);
  await g.waitForTimeout(300);
  for (const t of silent) {
    const copies = await find(g, t);
    check(copies.length === 1, `gina shows ${JSON.stringify(t)} exactly once`, `${copies.length} copies`);
  }
  await exchange(g, 'gina', h, 'hank', `back from the silence ${tag}`);
  noTrouble(tg.concat(th));
}

// ---------------------------------------------------------------- phase 4: reload

/** The archived events of `room` (all of them, up to 1000), from the archiver's HTTP API. */
async function archived(room) {
  const res = await fetch(`${ARCHIVER_URL}/api/rooms/${encodeURIComponent(room)}/events?limit=1000`,
    { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`archiver: HTTP ${res.status}`);
  return (await res.json()).events;
}

/** Waits until the archive holds `text` in `room`, lets a (wrong) copy arrive, returns the copies. */
async function archivedCopies(room, text) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const hits = (await archived(room)).filter((ev) => ev.type === 'message' && ev.text === text);
    if (hits.length) {
      await sleep(1000);
      return (await archived(room)).filter((ev) => ev.type === 'message' && ev.text === text);
    }
    if (Date.now() > deadline) return hits;
    await sleep(200);
  }
}

/** Asserts one copy of `text` in the archive of `room`, with event id `id`. */
async function onceInArchive(room, text, id) {
  if (!ARCHIVER_URL) {
    console.log('# SKIP archive count: E2E_ARCHIVER_URL is not set');
    return;
  }
  const copies = await archivedCopies(room, text);
  check(copies.length === 1 && copies[0].id === id,
    `the archive (HTTP API) holds ${JSON.stringify(text)} exactly once, under its id`,
    `${copies.length} copies: ${copies.map((c) => c.id).join(', ')} (want ${id})`);
}

/** The page's stored outbox of `room`: [{id, text, ...}]. */
const storedOutbox = (page, room) => page.evaluate(
  (r) => JSON.parse(localStorage.getItem(`chat.pending.${r}`) || '[]'), room,
);

/**
 * Issue 15: a message still pending when the page is reloaded is shown as pending after the
 * reload and sent again, with its id, once the room is joined. Ivy's first `say` is
 * swallowed on its way out (so it is certainly pending and unknown to the server); she
 * reloads; after the rejoin her page sends it with the same id; it shows once on both
 * pages and in the archive.
 */
async function reloadPhase(browser, pages) {
  const tag = Math.random().toString(36).slice(2, 8);
  const room = `reload-${tag}`;
  const i = await newPage(browser);
  const j = await newPage(browser);
  pages.push(['ivy', i], ['jack', j]);
  const ti = watch(i, 'page I');
  const tj = watch(j, 'page J');
  await i.addInitScript(spyOnSockets);
  await join(i, baseA, 'ivy', { room });
  await join(j, baseB, 'jack', { room });

  const text = `sent just before a reload ${tag}`;
  await i.evaluate(() => { window.__e2eDropSays = true; });
  await say(i, text);
  await i.waitForTimeout(500);
  const before = await find(i, text);
  check(before.length === 1 && before[0].pending && !before[0].id,
    'ivy: a message that got no answer shows as pending', JSON.stringify(before));
  const stored = await storedOutbox(i, room);
  const id = stored[0]?.id;
  check(stored.length === 1 && stored[0].text === text && /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id),
    'ivy: the pending message is stored (localStorage) with a UUIDv7', JSON.stringify(stored));
  const firstSay = await i.evaluate(() => window.__e2eSockets[0].says[0]);
  check(firstSay && firstSay.id === id && firstSay.dropped, 'ivy: its say carried that id',
    JSON.stringify(firstSay));

  await step('page I reloads', () => i.reload({ waitUntil: 'load', timeout: TIMEOUT }));
  await i.waitForSelector('#join-button', { state: 'visible', timeout: TIMEOUT });
  await i.waitForSelector('#status[data-state="connected"]', { timeout: TIMEOUT });
  // Click Join and look at once, in the same task: the message is back, pending, before the
  // `joined` that lets it go out.
  const restored = await i.evaluate((t) => {
    document.querySelector('#join-button').click();
    const m = [...document.querySelectorAll('#messages .msg')]
      .find((x) => x.querySelector('.text')?.textContent === t);
    return m ? { pending: m.classList.contains('pending'), sent: window.__e2eSockets.at(-1).says.length } : null;
  }, text);
  check(restored && restored.pending && restored.sent === 0,
    'ivy after the reload: the message is shown as pending as soon as she joins', JSON.stringify(restored));
  await joined(i, 'ivy', room);
  await waitForText(j, text, 'jack');
  const ackId = await step(`ivy's ${JSON.stringify(text)} is acked after the reload`, () => ackedId(i, text));
  const resent = await i.evaluate(() => window.__e2eSockets.at(-1));
  const joinedAt = resent.frames.find((f) => f.type === 'joined')?.t;
  check(resent.says.length === 1 && resent.says[0].id === id && resent.says[0].t >= joinedAt,
    'ivy after the reload: sent again once, after the rejoin, with the same id',
    JSON.stringify(resent.says));
  check(ackId === id, 'the ack carries the id the page made', `${ackId} vs ${id}`);
  await i.waitForTimeout(300);
  const mine = await find(i, text);
  const theirs = await find(j, text);
  check(mine.length === 1 && theirs.length === 1 && theirs[0].id === id,
    `${JSON.stringify(text)} shows once on each page, under its id`,
    `${mine.length} and ${theirs.length} copies, ${theirs[0]?.id}`);
  check((await storedOutbox(i, room)).length === 0, 'ivy: the confirmed message left the storage');
  await onceInArchive(room, text, id);

  // Second case: the message reaches the server, but its ack and event never reach the page
  // (everything the socket receives is hidden), so it is still pending at the reload. The
  // rejoin's history holds its event under its id: the page shows that and sends nothing.
  const text2 = `posted, but the page never heard ${tag}`;
  await i.evaluate(() => { window.__e2eMuteUpTo = window.__e2eSockets.length; });
  await say(i, text2);
  await waitForText(j, text2, 'jack');
  const pending2 = await find(i, text2);
  check(pending2.length === 1 && pending2[0].pending, 'ivy: with no answer heard, it shows as pending',
    JSON.stringify(pending2));
  const id2 = (await storedOutbox(i, room))[0]?.id;
  await step('page I reloads again', () => i.reload({ waitUntil: 'load', timeout: TIMEOUT }));
  await i.waitForSelector('#status[data-state="connected"]', { timeout: TIMEOUT });
  await i.click('#join-button');
  await joined(i, 'ivy', room);
  await until(i, () => window.__e2eSockets.at(-1).frames.some((f) => f.type === 'joined'),
    null, 'ivy: the rejoin is answered');
  await i.waitForTimeout(500);
  const after = await i.evaluate(() => window.__e2eSockets.at(-1).says);
  check(after.length === 0, 'ivy after the reload: the history showed it posted, so nothing is sent again',
    JSON.stringify(after));
  const mine2 = await find(i, text2);
  const theirs2 = await find(j, text2);
  check(mine2.length === 1 && !mine2[0].pending && mine2[0].id === id2 && theirs2.length === 1
    && theirs2[0].id === id2, `${JSON.stringify(text2)} shows once on each page, under its id`,
  `${JSON.stringify(mine2)} / ${JSON.stringify(theirs2)} (want ${id2})`);
  check((await storedOutbox(i, room)).length === 0, 'ivy: it left the storage');
  await onceInArchive(room, text2, id2);
  noTrouble(ti.concat(tj));
}

// ---------------------------------------------------------------- phase 5: broker alarm

function rabbitmqctl(...args) {
  return execFileSync('rabbitmqctl', ['-q', ...args], { encoding: 'utf8', timeout: 60000 });
}

/** Whether this run may have raised the memory alarm and not lifted it yet. */
let alarmRaised = false;

/**
 * Lifts the memory alarm (the broker's default watermark, 0.4) if this run raised it. Called
 * after the alarm step whatever its outcome, and on the way out of the process (watchdog,
 * SIGINT/SIGTERM), so a broken run never leaves every publisher on the broker blocked.
 */
function liftAlarm() {
  if (!alarmRaised) return;
  try {
    rabbitmqctl('set_vm_memory_high_watermark', '0.4');
    alarmRaised = false;
    console.log('#   lifted the memory alarm (vm_memory_high_watermark 0.4)');
  } catch (err) {
    console.error(`FAIL: could not lift the memory alarm: ${err.message}`);
  }
}

/** The HTTP status of `base`/readyz (0 when it does not answer). */
async function readyz(base) {
  try {
    return (await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(2000) })).status;
  } catch {
    return 0;
  }
}

async function waitReadyz(bases, status, what) {
  await step(what, async () => {
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      const got = await Promise.all(bases.map(readyz));
      if (got.every((s) => s === status)) return;
      if (Date.now() > deadline) throw new Error(`readyz ${got.join(', ')}`);
      await sleep(100);
    }
  });
}

/**
 * Issue 15: RabbitMQ's memory alarm blocks every publisher. Erin's message during the alarm
 * must fail fast as `unavailable` (not posted), with a Retry that says it is safe; after the
 * alarm, Retry posts it exactly once: on erin's page, on frank's (other gateway) and in the
 * archive. The alarm is always lifted again, whatever happens.
 */
async function alarmPhase(browser, pages) {
  const tag = Math.random().toString(36).slice(2, 8);
  const room = `alarm-${tag}`;
  const e = await newPage(browser);
  const f = await newPage(browser);
  pages.push(['erin', e], ['frank', f]);
  const te = watch(e, 'page E');
  const tf = watch(f, 'page F');
  await e.addInitScript(spyOnSockets);
  await join(e, baseA, 'erin', { room });
  await join(f, baseB, 'frank', { room });
  await exchange(e, 'erin', f, 'frank', `before the alarm ${tag}`);

  const text = `said during a memory alarm ${tag}`;
  try {
    alarmRaised = true; // before the command: a timeout may still have raised it
    rabbitmqctl('set_vm_memory_high_watermark', '0.000001');
    console.log('#   raised the memory alarm (vm_memory_high_watermark 0.000001)');
    await waitReadyz([baseA, baseB], 503, 'both gateways report the blocked broker (/readyz 503)');
    const sentAt = Date.now();
    await say(e, text);
    await step('erin: the message shows as failed (unavailable)', () => e.waitForFunction(
      (t) => [...document.querySelectorAll('#messages .msg.failed')]
        .some((m) => m.querySelector('.text')?.textContent === t),
      text, { timeout: TIMEOUT, polling: 20 },
    ));
    const took = Date.now() - sentAt;
    console.log(`#   the page showed the failure ${took} ms after Enter`);
    check(took < 2000, 'erin: the failure shows quickly (under 2 s), not after the publish timeout', `${took} ms`);
    const shown = await e.evaluate((t) => {
      const m = [...document.querySelectorAll('#messages .msg')]
        .find((x) => x.querySelector('.text')?.textContent === t);
      return {
        error: m.querySelector('.error-text')?.textContent ?? '',
        safe: m.querySelector('.error-safe')?.textContent ?? '',
        retry: !!m.querySelector('button.retry'),
        codes: window.__e2eSockets.at(-1).frames.filter((x) => x.type === 'error').map((x) => x.code),
      };
    }, text);
    check(shown.codes.includes('unavailable'), 'erin got the error code unavailable', shown.codes.join(','));
    check(shown.retry && /safe/i.test(shown.safe) && /twice/i.test(shown.safe),
      'erin: a Retry button, and the page says retrying is safe', JSON.stringify(shown));
    const stored = await storedOutbox(e, room);
    check(stored.length === 1 && stored[0].code === 'unavailable',
      'erin: the failed message stays stored with its id', JSON.stringify(stored));
    await e.screenshot({ path: path.join(SHOTS, 'alarm-failed-desktop.png') });
    await e.setViewportSize({ width: 375, height: 740 });
    await e.waitForTimeout(200);
    await e.screenshot({ path: path.join(SHOTS, 'alarm-failed-phone.png') });
    await e.setViewportSize({ width: 1280, height: 800 });
  } finally {
    liftAlarm();
  }
  await waitReadyz([baseA, baseB], 200, 'both gateways are ready again after the alarm (/readyz 200)');
  check((await find(f, text)).length === 0, 'frank never got the refused message before the retry');

  const firstId = await e.evaluate(() => window.__e2eSockets.at(-1).says.at(-1)?.id);
  await e.click('#messages .msg.failed button.retry');
  await waitForText(f, text, 'frank after the retry');
  const id = await step("erin's retried message is acked", () => ackedId(e, text));
  check(id === firstId, 'the retry carried the id of the first attempt, and the ack has it', `${id} vs ${firstId}`);
  await e.waitForTimeout(500);
  const mine = await find(e, text);
  const theirs = await find(f, text);
  check(mine.length === 1 && !mine[0].failed && !mine[0].pending, 'erin shows it once, sent', JSON.stringify(mine));
  check(theirs.length === 1 && theirs[0].id === id, 'frank (gateway B) shows it once, under the same id',
    JSON.stringify(theirs));
  check((await storedOutbox(e, room)).length === 0, 'erin: the confirmed message left the storage');
  await onceInArchive(room, text, id);
  await e.screenshot({ path: path.join(SHOTS, 'alarm-retried-desktop.png') });
  await f.screenshot({ path: path.join(SHOTS, 'alarm-retried-frank.png') });
  await e.setViewportSize({ width: 375, height: 740 });
  await e.waitForTimeout(200);
  await e.screenshot({ path: path.join(SHOTS, 'alarm-retried-phone.png') });
  noTrouble(te.concat(tf));
}

// ---------------------------------------------------------------- private rooms

async function privatePhase(browser, pages) {
  const gw1 = process.env.E2E_TOKEN_GW1;
  const gw2 = process.env.E2E_TOKEN_GW2;
  const token = (who) => process.env[`E2E_TOKEN_${who}`];
  if (!gw1 || !gw2 || !token('ALICE') || !token('BOB') || !token('MALLORY')) {
    throw new CheckFailed('E2E_TOKEN_GW1/GW2 and E2E_TOKEN_ALICE/BOB/MALLORY are needed');
  }
  const room = `vault${Date.now().toString(36)}`;
  const secret = 'the plan nobody else may read';
  const trouble = [];
  const open = async (label, url, viewport) => {
    const page = await newPage(browser);
    pages.push([label, page]);
    trouble.push(...watch(page, label));
    if (viewport) await page.setViewportSize(viewport);
    await page.goto(url, { waitUntil: 'load', timeout: TIMEOUT });
    return page;
  };
  const anonymous = await open('private-anonymous', `${gw1}/`);
  await step('a page without a token is asked to sign in', () => anonymous.waitForSelector(
    '#login-view:not([hidden])', { timeout: TIMEOUT }));

  const alice = await open('private-alice', `${gw1}/#token=${token('ALICE')}`);
  await step('the token leaves the address bar', async () => {
    await alice.waitForSelector('#private-field:not([hidden])', { timeout: TIMEOUT });
    check(!alice.url().includes('token'), 'no token in the URL', alice.url());
  });
  await step('alice creates a private room', async () => {
    await alice.fill('#room', room);
    await alice.check('#private');
    await alice.click('#join-button');
    await alice.waitForSelector('#lock:not([hidden])', { timeout: TIMEOUT });
  });
  check((await alice.textContent('#whoami')).includes('(alice)'), 'alice is shown verified');
  await step('alice adds bob', async () => {
    await alice.fill('#member', 'bob');
    await alice.click('#member-add');
    await alice.waitForSelector('text=Alice added bob', { timeout: TIMEOUT });
  });
  await say(alice, secret);
  await step('her message is acked', () => ackedId(alice, secret));

  const bob = await open('private-bob', `${gw2}/#token=${token('BOB')}`, { width: 375, height: 740 });
  await step('bob, on the other gateway, joins the private room and sees the lock', async () => {
    await bob.waitForSelector('#private-field:not([hidden])', { timeout: TIMEOUT });
    await bob.fill('#room', room);
    await bob.click('#join-button');
    await bob.waitForSelector('#lock:not([hidden])', { timeout: TIMEOUT });
  });
  await waitForText(bob, secret, 'bob');

  const mallory = await open('private-mallory', `${gw2}/#token=${token('MALLORY')}`);
  await step('mallory is refused the room', async () => {
    await mallory.waitForSelector('#private-field:not([hidden])', { timeout: TIMEOUT });
    await mallory.fill('#room', room);
    await mallory.click('#join-button');
    await mallory.waitForSelector('#join-error:not([hidden])', { timeout: TIMEOUT });
  });
  check(/private/.test(await mallory.textContent('#join-error')), 'mallory is told it is private');
  await mallory.waitForTimeout(500);
  check(!(await mallory.content()).includes(secret), 'mallory sees nothing of the room');

  await alice.screenshot({ path: path.join(SHOTS, 'private-alice-desktop.png') });
  await bob.screenshot({ path: path.join(SHOTS, 'private-bob-phone.png') });
  await mallory.screenshot({ path: path.join(SHOTS, 'private-mallory-refused.png') });
  noTrouble(trouble);
}

// ---------------------------------------------------------------- main

async function main() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new CheckFailed(`${CHROMIUM} not found: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
  fs.mkdirSync(SHOTS, { recursive: true });
  // fail-*.png of an earlier run would be mistaken for this one's.
  for (const f of fs.readdirSync(SHOTS)) if (/^fail-.*\.png$/.test(f)) fs.rmSync(path.join(SHOTS, f));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // E2E_PHASES=private,chat runs only those phases (all by default).
  const only = (process.env.E2E_PHASES || '').split(',').map((s) => s.trim()).filter(Boolean);
  /** Runs one phase; its failure is counted and reported, and the next phase still runs. */
  const phase = async (name, fn) => {
    const pages = [];
    if (only.length && !only.includes(name)) return pages;
    console.log(`# ${name}`);
    try {
      await fn(pages);
    } catch (err) {
      const what = err instanceof CheckFailed ? err.message : (err.stack || String(err));
      fail(`${name}: ${what.split('\n')[0]}`);
      console.error(`FAIL: ${name}: ${what}`);
      for (const [label, page] of pages) {
        await page.screenshot({ path: path.join(SHOTS, `fail-${label}.png`) }).catch(() => {});
      }
    }
    return pages;
  };
  try {
    // The chat pages stay open through the metrics phase (one client on each gateway).
    const chatPages = await phase('chat', (pages) => chatPhase(browser, pages));
    await phase('metrics', () => metricsPhase());
    for (const [, page] of chatPages) await page.context().close().catch(() => {});
    for (const [name, fn] of [['heartbeat', heartbeatPhase], ['reload', reloadPhase], ['alarm', alarmPhase], ['private', privatePhase]]) {
      const pages = await phase(name, (p) => fn(browser, p));
      for (const [, page] of pages) await page.context().close().catch(() => {});
    }
    await phase('failover', (pages) => failoverPhase(browser, pages));
    console.log(`# screenshots in ${SHOTS}`);
  } finally {
    await browser.close().catch(() => {});
  }
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    liftAlarm();
    console.log(`chat e2e: interrupted by ${signal}`);
    process.exit(1);
  });
}

const watchdog = setTimeout(() => {
  liftAlarm();
  console.error(`FAIL: the run took longer than ${WATCHDOG_MS} ms`);
  console.log(`chat e2e: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}, WATCHDOG_MS);

main().then(() => {
  clearTimeout(watchdog);
  console.log(`chat e2e: ${passed} passed, ${failed} failed`);
  if (failed) process.exit(1);
}, (err) => {
  clearTimeout(watchdog);
  console.error(`FAIL: ${err instanceof CheckFailed ? err.message : (err.stack || err)}`);
  console.log(`chat e2e: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
