// Unit tests of uuid.js: the ids the page gives its messages are the UUIDv7s the gateway
// accepts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UUIDV7_RE, uuidv7, uuidv7Time } from '../uuid.js';

test('a uuidv7 is lowercase, hyphenated, version 7 with the rfc 9562 variant', () => {
  for (let i = 0; i < 200; i += 1) {
    const id = uuidv7();
    assert.match(id, UUIDV7_RE);
    assert.equal(id.length, 36);
  }
});

test('its first 48 bits are the time it was made, in milliseconds', () => {
  const now = Date.UTC(2026, 10, 29, 12, 0, 0, 123);
  const id = uuidv7(now);
  assert.equal(uuidv7Time(id), now);
  // Spelled out: 0x019ad0... is this millisecond, big-endian.
  assert.equal(id.slice(0, 8) + id.slice(9, 13), now.toString(16).padStart(12, '0'));
});

test('the version and variant bits are set whatever the random bytes are', () => {
  const ones = (b) => b.fill(0xff);
  const zeros = (b) => b.fill(0);
  assert.equal(uuidv7(0, ones), '00000000-0000-7fff-bfff-ffffffffffff');
  assert.equal(uuidv7(0, zeros), '00000000-0000-7000-8000-000000000000');
});

test('two ids made in the same millisecond differ', () => {
  const ids = new Set(Array.from({ length: 1000 }, () => uuidv7(1700000000000)));
  assert.equal(ids.size, 1000);
});

test('anything else has no time', () => {
  assert.ok(Number.isNaN(uuidv7Time('0193A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B')));
  assert.ok(Number.isNaN(uuidv7Time('0193a1b2-c3d4-4e5f-8a9b-0c1d2e3f4a5b'))); // v4
  assert.ok(Number.isNaN(uuidv7Time('0193a1b2-c3d4-7e5f-ca9b-0c1d2e3f4a5b'))); // variant
  assert.ok(Number.isNaN(uuidv7Time(undefined)));
});
