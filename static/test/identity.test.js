// Unit tests of identity.js: the token taken from the fragment (and removed from it), its
// unverified claims for display, refresh timing, and how speakers are labelled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  authorLabel, isOwn, refreshDelay, systemLine, takeFragmentToken, tokenProblem,
  unverifiedClaims,
} from '../identity.js';

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
const token = `${b64url({ alg: 'HS256' })}.${b64url({ sub: 'alice', name: 'Alicé', exp: 2 })}.sig`;

test('the token is taken from the fragment and the rest of the fragment is kept', () => {
  assert.deepEqual(takeFragmentToken(`#token=${token}`), { token, rest: '' });
  assert.deepEqual(takeFragmentToken(`#room=x&token=${token}`), { token, rest: '#room=x' });
  assert.deepEqual(takeFragmentToken('#room=x'), { token: null, rest: '#room=x' });
  assert.equal(takeFragmentToken('#token=not a jwt').token, null);
  assert.deepEqual(takeFragmentToken(''), { token: null, rest: '' });
});

test('claims are read for display, and garbage reads as nothing', () => {
  assert.equal(unverifiedClaims(token).name, 'Alicé');
  assert.equal(unverifiedClaims('a.b.c'), null);
  assert.equal(unverifiedClaims('nope'), null);
});

test('a fresh token is asked for a minute before expiry, at once when late', () => {
  const now = Date.parse('2026-11-28T15:00:00Z');
  assert.equal(refreshDelay('2026-11-28T15:10:00Z', now), 9 * 60_000);
  assert.equal(refreshDelay('2026-11-28T15:00:30Z', now), 0);
  assert.equal(refreshDelay('garbage', now), 0);
});

test('guests are labelled as such and cannot pass for the verified user of their name', () => {
  const guest = { v: 2, type: 'message', user: 'alice', guest: true };
  const verified = { v: 2, type: 'message', user: 'alice', name: 'Alice' };
  assert.equal(authorLabel(guest), 'alice (guest)');
  assert.equal(authorLabel(verified), 'Alice');
  assert.equal(authorLabel({ v: 1, user: 'old' }), 'old (guest)');
  const me = { user: 'alice', verified: true };
  assert.equal(isOwn(verified, me), true);
  assert.equal(isOwn(guest, me), false);
  assert.equal(isOwn(guest, { user: 'alice', verified: false }), true);
});

test('membership events have their own lines', () => {
  const by = { v: 2, user: 'alice', name: 'Alice' };
  assert.equal(systemLine({ ...by, type: 'room_created', visibility: 'private' }),
    'Alice created the room (private)');
  assert.equal(systemLine({ ...by, type: 'member_added', member: 'bob' }), 'Alice added bob');
  assert.equal(systemLine({ ...by, type: 'member_removed', member: 'bob' }), 'Alice removed bob');
  assert.equal(systemLine({ ...by, type: 'join' }), 'Alice joined');
  assert.equal(systemLine({ ...by, type: 'reaction' }), null);
});

test('the token close codes tell the user what to do', () => {
  assert.match(tokenProblem(4002), /expired/);
  assert.match(tokenProblem(4001), /refused/);
  assert.equal(tokenProblem(1012), null);
});
