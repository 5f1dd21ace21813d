// Retrying message:send with the same client_id stores and broadcasts the message once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Inbox, connectAs, join, ok, readMetric, request, send, uniqueRoom, uniqueUser } from './lib.mjs';

async function pair(prefix) {
  const room = uniqueRoom(prefix);
  const sender = await connectAs(uniqueUser('sender'));
  const reader = await connectAs(uniqueUser('reader'));
  const readerInbox = new Inbox(reader);
  await join(sender, room);
  await join(reader, room);
  return { room, sender, reader, readerInbox };
}

test('retry returns the same message', async () => {
  const { room, sender, readerInbox } = await pair('retry');
  const payload = { room, text: 'exactly once', client_id: 'retry-1' };

  const first = await ok(sender, 'message:send', payload);
  const second = await ok(sender, 'message:send', payload);
  const third = await ok(sender, 'message:send', payload);

  assert.equal(first.duplicate, false);
  assert.equal(second.duplicate, true, `a retry should be marked duplicate: ${JSON.stringify(second)}`);
  assert.equal(third.duplicate, true);
  assert.deepEqual(second.message, first.message, 'a retry should return the stored message unchanged');
  assert.deepEqual(third.message, first.message);

  // A later message is broadcast after any broadcast the retries could have caused.
  const marker = await send(sender, room, 'after the retries');
  assert.equal(marker.seq, first.message.seq + 1, 'a retry must not use up a seq');
  await readerInbox.waitFor('message:new', (message) => message.id === marker.id);

  const copies = readerInbox.of('message:new', (message) => message.client_id === 'retry-1');
  assert.equal(copies.length, 1, `the reader got ${copies.length} broadcasts of one message`);
});

test('retry from another socket of the same user', async () => {
  const { room, sender, readerInbox } = await pair('tabs');
  const user = uniqueUser('tabs');
  const firstTab = await connectAs(user);
  const secondTab = await connectAs(user);
  await join(firstTab, room);
  await join(secondTab, room);
  const payload = { room, text: 'sent from a flaky tab', client_id: 'tab-retry' };

  const original = await ok(firstTab, 'message:send', payload);
  const retry = await ok(secondTab, 'message:send', payload);

  assert.equal(retry.duplicate, true, 'the same user and client_id on another socket is a retry');
  assert.deepEqual(retry.message, original.message);

  const marker = await send(sender, room, 'marker');
  await readerInbox.waitFor('message:new', (message) => message.id === marker.id);
  assert.equal(readerInbox.of('message:new', (message) => message.client_id === 'tab-retry').length, 1);
});

test('concurrent retries store one message', async () => {
  const { room, sender, readerInbox } = await pair('race');
  const payload = { room, text: 'double click', client_id: 'race-1' };

  const acks = await Promise.all([1, 2, 3, 4, 5].map(() => request(sender, 'message:send', payload)));

  for (const ack of acks) {
    assert.equal(ack.ok, true, `a concurrent retry failed: ${JSON.stringify(ack)}`);
  }
  const ids = new Set(acks.map((ack) => ack.message.id));
  assert.equal(ids.size, 1, `concurrent retries stored ${ids.size} messages`);
  const originals = acks.filter((ack) => ack.duplicate === false);
  assert.equal(originals.length, 1, `${originals.length} acks claim to be the original`);

  const marker = await send(sender, room, 'marker');
  assert.equal(marker.seq, acks[0].message.seq + 1, 'concurrent retries used up seqs');
  await readerInbox.waitFor('message:new', (message) => message.id === marker.id);
  assert.equal(readerInbox.of('message:new', (message) => message.client_id === 'race-1').length, 1);
});

test('same client_id from two users', async () => {
  const { room, sender, reader } = await pair('users');

  const mine = await ok(sender, 'message:send', { room, text: 'mine', client_id: 'shared-id' });
  const theirs = await ok(reader, 'message:send', { room, text: 'theirs', client_id: 'shared-id' });

  assert.equal(theirs.duplicate, false, 'client_id is scoped to the user, so this is a new message');
  assert.notEqual(theirs.message.id, mine.message.id);
  assert.equal(theirs.message.text, 'theirs');
});

test('same client_id in another room', async () => {
  const { room, sender } = await pair('rooms');
  const otherRoom = uniqueRoom('rooms-b');
  await join(sender, otherRoom);

  const first = await ok(sender, 'message:send', { room, text: 'here', client_id: 'per-room' });
  const second = await ok(sender, 'message:send', { room: otherRoom, text: 'there', client_id: 'per-room' });

  // The contract scopes a retry to one user. A retry also names its room, so the same client_id
  // sent to another room is a new message.
  assert.equal(second.duplicate, false, `a send to another room was treated as a retry: ${JSON.stringify(second)}`);
  assert.equal(second.message.room, otherRoom);
  assert.notEqual(second.message.id, first.message.id);
});

test('retries do not count as stored', async () => {
  const { room, sender } = await pair('metric');
  const before = await readMetric('huddle_messages_stored_total');

  const payload = { room, text: 'count me once', client_id: 'metric-1' };
  await ok(sender, 'message:send', payload);
  await ok(sender, 'message:send', payload);
  await send(sender, room, 'and me');

  const afterSends = await readMetric('huddle_messages_stored_total');
  assert.equal(afterSends - before, 2, 'huddle_messages_stored_total should grow by the 2 new messages only');
});
