// presence:update counts a user once however many sockets (tabs) the user has in a room.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Inbox, connectAs, disconnected, join, ok, readMetric, send, uniqueRoom, uniqueUser, waitUntil,
} from './lib.mjs';

function person(prefix, name) {
  return { id: uniqueUser(prefix), name };
}

async function open(user) {
  const socket = await connectAs(user.id, { name: user.name });
  return { socket, inbox: new Inbox(socket) };
}

function presenceOf(inbox, room, user, status) {
  return inbox.of('presence:update', (update) => update.room === room && update.user?.id === user.id
    && (status === undefined || update.status === status));
}

/** Close `socket` and wait until the server has counted the connection as gone. */
async function closeAndSettle(socket) {
  const before = await readMetric('huddle_connections');
  socket.disconnect();
  await disconnected(socket);
  await waitUntil(async () => (await readMetric('huddle_connections')) <= before - 1,
    'huddle_connections to drop after closing a socket');
}

test('first socket announces online', async () => {
  const room = uniqueRoom('online');
  const alice = person('alice', 'Alice');
  const bob = person('bob', 'Bob');
  const watcher = await open(bob);
  await join(watcher.socket, room);

  const tab = await open(alice);
  const ack = await join(tab.socket, room);

  const update = await watcher.inbox.waitFor('presence:update', (payload) => payload.user?.id === alice.id);
  assert.deepEqual(update, { room, user: alice, status: 'online' });
  const ids = ack.members.map((member) => member.id).sort();
  assert.deepEqual(ids, [alice.id, bob.id].sort());

  // Bob's message reaches Alice after any presence:update about herself would have.
  const marker = await send(watcher.socket, room, 'welcome');
  await tab.inbox.waitFor('message:new', (message) => message.id === marker.id);
  assert.deepEqual(presenceOf(tab.inbox, room, alice), [], 'a joiner must not get its own presence:update');
});

test('two tabs count as one user', async () => {
  const room = uniqueRoom('tabs');
  const alice = person('alice', 'Alice');
  const bob = person('bob', 'Bob');
  const carol = person('carol', 'Carol');
  const watcher = await open(bob);
  await join(watcher.socket, room);

  const firstTab = await open(alice);
  await join(firstTab.socket, room);
  await watcher.inbox.waitFor('presence:update', (payload) => payload.user?.id === alice.id);

  const secondTab = await open(alice);
  const secondAck = await join(secondTab.socket, room);
  const aliceEntries = secondAck.members.filter((member) => member.id === alice.id);
  assert.deepEqual(aliceEntries, [alice], 'a user with two sockets should be listed once');

  // Carol's arrival is announced after anything the second tab's join could have caused.
  const third = await open(carol);
  await join(third.socket, room);
  await watcher.inbox.waitFor('presence:update', (payload) => payload.user?.id === carol.id);
  assert.equal(presenceOf(watcher.inbox, room, alice).length, 1, 'the second tab must not announce Alice again');

  await closeAndSettle(firstTab.socket);
  const marker = await send(third.socket, room, 'is Alice still here?');
  await watcher.inbox.waitFor('message:new', (message) => message.id === marker.id);
  assert.deepEqual(presenceOf(watcher.inbox, room, alice, 'offline'), [],
    'closing one of two tabs must not announce Alice offline');

  const check = await join(third.socket, room);
  assert.ok(check.members.some((member) => member.id === alice.id), 'Alice should still be a member');

  secondTab.socket.disconnect();
  const offline = await watcher.inbox.waitFor('presence:update',
    (payload) => payload.user?.id === alice.id && payload.status === 'offline');
  assert.deepEqual(offline, { room, user: alice, status: 'offline' });

  const later = await send(third.socket, room, 'bye Alice');
  await watcher.inbox.waitFor('message:new', (message) => message.id === later.id);
  assert.equal(presenceOf(watcher.inbox, room, alice, 'offline').length, 1, 'Alice went offline more than once');
});

test('joining twice from one socket', async () => {
  const room = uniqueRoom('twice');
  const alice = person('alice', 'Alice');
  const bob = person('bob', 'Bob');
  const watcher = await open(bob);
  await join(watcher.socket, room);
  const tab = await open(alice);

  await join(tab.socket, room);
  const again = await join(tab.socket, room);
  assert.deepEqual(again.members.filter((member) => member.id === alice.id), [alice]);

  const marker = await send(tab.socket, room, 'joined twice');
  await watcher.inbox.waitFor('message:new', (message) => message.id === marker.id);
  assert.equal(presenceOf(watcher.inbox, room, alice, 'online').length, 1, 'a repeated join announced Alice again');
  assert.equal(watcher.inbox.of('message:new', (message) => message.id === marker.id).length, 1);

  await ok(tab.socket, 'room:leave', { room });
  await watcher.inbox.waitFor('presence:update', (payload) => payload.user?.id === alice.id && payload.status === 'offline');
});

test('leave announces offline', async () => {
  const room = uniqueRoom('leave');
  const alice = person('alice', 'Alice');
  const bob = person('bob', 'Bob');
  const watcher = await open(bob);
  await join(watcher.socket, room);
  const tab = await open(alice);
  await join(tab.socket, room);
  await watcher.inbox.waitFor('presence:update', (payload) => payload.user?.id === alice.id);

  await ok(tab.socket, 'room:leave', { room });
  const offline = await watcher.inbox.waitFor('presence:update',
    (payload) => payload.user?.id === alice.id && payload.status === 'offline');
  assert.deepEqual(offline, { room, user: alice, status: 'offline' });

  const rejoin = await join(watcher.socket, room);
  assert.deepEqual(rejoin.members.map((member) => member.id), [bob.id], 'Alice should no longer be listed');

  await join(tab.socket, room);
  const updates = await watcher.inbox.waitForCount('presence:update', 3,
    (payload) => payload.user?.id === alice.id);
  assert.deepEqual(updates.map((update) => update.status), ['online', 'offline', 'online']);
});

test('one tab leaves, other stays', async () => {
  const room = uniqueRoom('stay');
  const alice = person('alice', 'Alice');
  const bob = person('bob', 'Bob');
  const watcher = await open(bob);
  await join(watcher.socket, room);
  const firstTab = await open(alice);
  const secondTab = await open(alice);
  await join(firstTab.socket, room);
  await join(secondTab.socket, room);

  await ok(firstTab.socket, 'room:leave', { room });
  const marker = await send(secondTab.socket, room, 'still here in the other tab');
  await watcher.inbox.waitFor('message:new', (message) => message.id === marker.id);

  assert.equal(presenceOf(watcher.inbox, room, alice, 'online').length, 1);
  assert.deepEqual(presenceOf(watcher.inbox, room, alice, 'offline'), [],
    'leaving from one tab must not announce offline while another tab stays');

  await ok(secondTab.socket, 'room:leave', { room });
  await watcher.inbox.waitFor('presence:update',
    (payload) => payload.user?.id === alice.id && payload.status === 'offline');
});

test('presence stays in its room', async () => {
  const room = uniqueRoom('here');
  const elsewhere = uniqueRoom('there');
  const alice = person('alice', 'Alice');
  const bob = person('bob', 'Bob');
  const carol = person('carol', 'Carol');
  const outsider = await open(carol);
  await join(outsider.socket, elsewhere);
  const watcher = await open(bob);
  await join(watcher.socket, room);
  await join(watcher.socket, elsewhere);

  const tab = await open(alice);
  await join(tab.socket, room);
  await watcher.inbox.waitFor('presence:update', (payload) => payload.user?.id === alice.id);

  const marker = await send(watcher.socket, elsewhere, 'marker');
  await outsider.inbox.waitFor('message:new', (message) => message.id === marker.id);
  assert.deepEqual(presenceOf(outsider.inbox, room, alice), [], 'a user outside the room got its presence');
  assert.deepEqual(outsider.inbox.of('presence:update', (payload) => payload.user?.id === alice.id), []);
});
