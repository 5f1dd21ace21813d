// typing indicators go to the other sockets in the room only.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Inbox, connectAs, join, ok, request, send, uniqueRoom, uniqueUser } from './lib.mjs';

async function room3() {
  const room = uniqueRoom('typing');
  const alice = { id: uniqueUser('alice'), name: 'Alice' };
  const bob = { id: uniqueUser('bob'), name: 'Bob' };
  const aliceSocket = await connectAs(alice.id, { name: alice.name });
  const bobSocket = await connectAs(bob.id, { name: bob.name });
  const outsider = await connectAs(uniqueUser('outsider'));
  const inboxes = { alice: new Inbox(aliceSocket), bob: new Inbox(bobSocket), outsider: new Inbox(outsider) };
  await join(aliceSocket, room);
  await join(bobSocket, room);
  return { room, alice, bob, aliceSocket, bobSocket, outsider, inboxes };
}

test('typing start and stop', async () => {
  const { room, alice, aliceSocket, inboxes } = await room3();

  const started = await ok(aliceSocket, 'typing', { room, typing: true });
  assert.equal(started.ok, true);
  const first = await inboxes.bob.waitFor('typing');
  assert.deepEqual(first, { room, user: alice, typing: true });

  await ok(aliceSocket, 'typing', { room, typing: false });
  const updates = await inboxes.bob.waitForCount('typing', 2);
  assert.deepEqual(updates[1], { room, user: alice, typing: false });
});

test('typing is not echoed to sender', async () => {
  const { room, bob, aliceSocket, bobSocket, inboxes } = await room3();

  await ok(aliceSocket, 'typing', { room, typing: true });
  await ok(bobSocket, 'typing', { room, typing: true });

  // Bob's indicator reaches Alice after any echo of her own would have.
  const fromBob = await inboxes.alice.waitFor('typing');
  assert.deepEqual(fromBob.user, bob, `Alice got her own typing event: ${JSON.stringify(fromBob)}`);
  assert.equal(inboxes.alice.of('typing').length, 1);
});

test('typing requires membership', async () => {
  const { room, aliceSocket, outsider, inboxes } = await room3();

  const ack = await request(outsider, 'typing', { room, typing: true });
  // The contract names forbidden for sending without membership, and typing follows the same rule.
  assert.equal(ack.ok, false, `typing in a room the socket has not joined was accepted: ${JSON.stringify(ack)}`);
  assert.equal(ack.error?.code, 'forbidden');
  assert.equal(outsider.connected, true);

  const marker = await send(aliceSocket, room, 'marker');
  await inboxes.bob.waitFor('message:new', (message) => message.id === marker.id);
  assert.deepEqual(inboxes.bob.of('typing'), [], 'a non-member typing event reached the room');
});

test('typing stays in its room', async () => {
  const { room, aliceSocket, outsider, inboxes } = await room3();
  const otherRoom = uniqueRoom('typing-other');
  await join(outsider, otherRoom);
  await join(aliceSocket, otherRoom);

  await ok(aliceSocket, 'typing', { room, typing: true });
  await inboxes.bob.waitFor('typing');
  const marker = await send(aliceSocket, otherRoom, 'marker');
  await inboxes.outsider.waitFor('message:new', (message) => message.id === marker.id);

  assert.deepEqual(inboxes.outsider.of('typing'), [], 'a typing event leaked into another room');
});
