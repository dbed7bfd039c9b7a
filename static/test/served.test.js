// The gateway serves only the files gateway/src/routes.rs embeds: every module of the page,
// and everything a module imports, must be in its list, or the page breaks in the browser
// while every unit test passes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const STATIC = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const ROUTES = path.join(STATIC, '..', 'gateway', 'src', 'routes.rs');

const embedded = () => new Set([...fs.readFileSync(ROUTES, 'utf8')
  .matchAll(/\("([\w.-]+\.js)", include_str!\("\.\.\/\.\.\/static\/([\w.-]+\.js)"\)\)/g)]
  .map((m) => {
    assert.equal(m[1], m[2], 'each script is served under its own file name');
    return m[1];
  }));

test('every module in static/ is embedded and served by the gateway', () => {
  const served = embedded();
  const modules = fs.readdirSync(STATIC).filter((f) => f.endsWith('.js'));
  assert.deepEqual([...served].sort(), modules.sort());
});

test('every import of a module is a served file', () => {
  const served = embedded();
  for (const file of served) {
    const source = fs.readFileSync(path.join(STATIC, file), 'utf8');
    for (const [, spec] of source.matchAll(/^\s*(?:import|export)[^'"]*from\s+'([^']+)'/gm)) {
      assert.match(spec, /^\.\/[\w.-]+\.js$/, `${file} imports ${spec}: only ./<file>.js is served`);
      assert.ok(served.has(spec.slice(2)), `${file} imports ${spec}, which is not served`);
    }
  }
});

test('the page loads app.js as a module', () => {
  const html = fs.readFileSync(path.join(STATIC, 'index.html'), 'utf8');
  assert.match(html, /<script src="\/app\.js" type="module"><\/script>/);
  assert.doesNotMatch(html, /<script>/, 'no inline script (the CSP forbids it)');
});
