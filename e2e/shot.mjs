// Takes docs/screenshot.png: two people chatting across the two gateways of
// `scripts/run.sh` (gw-1 on :3001, gw-2 on :3002), as a new user would see it.
// Usage: node e2e/shot.mjs [base1] [base2]   (with scripts/run.sh running)
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const [one = 'http://127.0.0.1:3001', two = 'http://127.0.0.1:3002'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const open = async (base, name) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(`${base}/`, { waitUntil: 'load' });
  await page.fill('#name', name);
  await page.fill('#room', 'lobby');
  await page.click('#join-button');
  await page.waitForSelector('#status[data-state="connected"]');
  return page;
};
const say = async (page, text) => {
  await page.click('#text');
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i += 1) {
    if (i > 0) await page.keyboard.press('Shift+Enter');
    await page.keyboard.insertText(lines[i]);
  }
  await page.keyboard.press('Enter');
  await page.waitForFunction((t) => [...document.querySelectorAll('.msg')]
    .some((m) => m.textContent.includes(t.split('\n')[0])), text);
  await page.waitForTimeout(400);
};
const alice = await open(one, 'alice');
const bob = await open(two, 'bob');
await say(alice, 'Morning! Is the deploy still on for 10:00?');
await say(bob, 'Yes, gateway 2 is drained already.');
await say(bob, 'Archiver and logger are on the new build too.');
await say(alice, 'Great, I will watch the dashboards.\nPing me if the lag goes above 1 s.');
await say(bob, 'Will do, thanks!');
await alice.waitForTimeout(800);
await alice.screenshot({ path: path.join(HERE, '..', 'docs', 'screenshot.png') });
await browser.close();
