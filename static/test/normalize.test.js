// Unit tests of normalize.js: the page's copy of chat-core's rules agrees with the Rust
// tests of chat-core/src/normalize.rs on the same inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  charCount, checkName, checkRoom, normalizeName, normalizeRoom, normalizeText, outgoingText,
  rustTrim, textProblem,
} from '../normalize.js';

test('rooms are ascii words of at most 64 bytes', () => {
  assert.equal(normalizeRoom('lobby'), 'lobby');
  assert.equal(normalizeRoom('a-b_C9'), 'a-b_C9');
  assert.equal(normalizeRoom('x'.repeat(64)), 'x'.repeat(64));
  for (const bad of ['x'.repeat(65), '', 'lob by', 'lobby.events', 'café']) {
    assert.equal(normalizeRoom(bad), null, JSON.stringify(bad));
  }
});

test('the room field forgives surrounding spaces but nothing else', () => {
  assert.deepEqual(checkRoom('  lobby '), ['lobby', null]);
  const [v, err] = checkRoom('lob by');
  assert.equal(v, null);
  assert.match(err, /1 to 64 characters/);
});

test('names are nfc, trimmed and free of control characters', () => {
  // "e" + combining acute accent becomes the single precomposed character.
  assert.equal(normalizeName(' Rene\u0301 ', 32), 'Ren\u00e9');
  assert.equal(normalizeName('al\nice', 32), null);
  assert.equal(normalizeName('al\u202Eice', 32), null);
  assert.equal(normalizeName('al\u2066ice', 32), null);
  assert.equal(normalizeName('al\u061Cice', 32), null);
  assert.equal(normalizeName('   ', 32), null);
  assert.equal(normalizeName('é'.repeat(32), 32), 'é'.repeat(32));
  assert.equal(normalizeName('é'.repeat(33), 32), null);
  // Characters outside the BMP count once, as Rust's chars().count().
  assert.equal(normalizeName('😀'.repeat(32), 32), '😀'.repeat(32));
  assert.equal(normalizeName('😀'.repeat(33), 32), null);
});

test('names are trimmed the way rust trims, not the way javascript does', () => {
  // U+FEFF is not White_Space: Rust keeps it (String#trim would drop it).
  assert.equal(normalizeName('\uFEFFbob', 32), '\uFEFFbob');
  // U+3000 and U+00A0 are White_Space in both.
  assert.equal(normalizeName('\u3000bob\u00A0', 32), 'bob');
  assert.equal(rustTrim('\u0085x\u0085'), 'x');
  assert.equal(rustTrim('\uFEFFx'), '\uFEFFx');
});

test('the name field says what is wrong with the configured limit', () => {
  assert.deepEqual(checkName(' alice ', 32), ['alice', null]);
  const [v, err] = checkName('a'.repeat(9), 8);
  assert.equal(v, null);
  assert.match(err, /1 to 8 characters/);
});

test('text keeps newlines but no other control characters', () => {
  assert.equal(normalizeText('a\r\nb\rc\td\u0007e'), 'a\nb\nc de');
  assert.equal(normalizeText('x\u2028y'), 'xy');
  assert.equal(normalizeText('l\u200Er\u202Ai\u2069'), 'lri');
  assert.equal(normalizeText('Rene\u0301'), 'Ren\u00e9');
  assert.equal(textProblem(' \n '), 'empty');
  assert.equal(textProblem('\u0007'), 'empty');
  assert.equal(textProblem('a'.repeat(4000)), null);
  assert.match(textProblem('a'.repeat(4001)), /Too long: 4001 \/ 4000/);
  assert.equal(textProblem('a'.repeat(9), 8), 'Too long: 9 / 8 characters.');
});

test('text is not trimmed by the server, but the page drops blank edges before sending', () => {
  assert.equal(normalizeText('  hi  '), '  hi  ');
  assert.equal(outgoingText('\n  \nhi\n  there  \n'), 'hi\n  there');
});

test('characters are counted as unicode scalar values', () => {
  assert.equal(charCount(''), 0);
  assert.equal(charCount('abc'), 3);
  assert.equal(charCount('é😀'), 2);
  assert.equal(charCount('\uD800'), 1);
});
