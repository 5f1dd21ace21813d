// Two users chatting: acks, broadcast to the others only, ordering, limits, leave and history.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  ACK_TIMEOUT_MS, Inbox, assertConsecutive, assertMessageShape, connectAs, fails, join, ok, request, send, uniqueRoom,
  uniqueUser,
} from './lib.mjs';

const MAX_TEXT_BYTES = 16 * 1024;

async function twoUsers(prefix) {
  const room = uniqueRoom(prefix);
  const alice = { id: uniqueUser('alice'), name: 'Alice' };
  const bob = { id: uniqueUser('bob'), name: 'Bob' };
  const aliceSocket = await connectAs(alice.id, { name: alice.name });
  const bobSocket = await connectAs(bob.id, { name: bob.name });
  const aliceInbox = new Inbox(aliceSocket);
  const bobInbox = new Inbox(bobSocket);
  return { room, alice, bob, aliceSocket, bobSocket, aliceInbox, bobInbox };
}

test('join ack for a new room', async () => {
  const { room, alice, bob, aliceSocket, bobSocket } = await twoUsers('join');

  const first = await join(aliceSocket, room);
  assert.equal(first.room, room);
  assert.equal(first.last_seq, 0, 'a new room should start at last_seq 0');
  assert.deepEqual(first.members, [alice]);
  assert.deepEqual(first.missed, [], 'missed must be [] without since_seq');
  assert.equal(first.has_more, false);
  assert.ok(Array.isArray(first.runs), `runs is not an array: ${JSON.stringify(first.runs)}`);

  const second = await join(bobSocket, room);
  const members = [...second.members].sort((a, b) => a.id.localeCompare(b.id));
  const expected = [alice, bob].sort((a, b) => a.id.localeCompare(b.id));
  assert.deepEqual(members, expected, 'members should list both users once');
});

test('message ack and broadcast', async () => {
  const { room, alice, bob, aliceSocket, bobSocket, aliceInbox, bobInbox } = await twoUsers('send');
  await join(aliceSocket, room);
  await join(bobSocket, room);

  const ack = await ok(aliceSocket, 'message:send', { room, text: 'hello Bob', client_id: 'a-1' });
  assert.equal(ack.duplicate, false);
  assertMessageShape(ack.message, { room, user: alice, text: 'hello Bob', clientId: 'a-1' });
  assert.equal(ack.message.seq, 1, 'the first message of a room should get seq 1');

  const received = await bobInbox.waitFor('message:new', (message) => message.id === ack.message.id);
  assert.deepEqual(received, ack.message, 'the broadcast should equal the stored message in the ack');

  // Bob's reply reaches Alice after any broadcast of her own message would have.
  const reply = await send(bobSocket, room, 'hi Alice');
  assertMessageShape(reply, { room, user: bob, text: 'hi Alice', clientId: reply.client_id });
  assert.equal(reply.seq, 2);
  await aliceInbox.waitFor('message:new', (message) => message.id === reply.id);

  const echoes = aliceInbox.of('message:new', (message) => message.id === ack.message.id);
  assert.deepEqual(echoes, [], 'the sender socket must not receive its own message:new');
  assert.deepEqual(bobInbox.of('message:new', (message) => message.id === reply.id), []);
});

test('ordered conversation without gaps', async () => {
  const { room, aliceSocket, bobSocket, aliceInbox, bobInbox } = await twoUsers('order');
  await join(aliceSocket, room);
  await join(bobSocket, room);
  const rounds = 15;

  const sent = [];
  for (let round = 0; round < rounds; round += 1) {
    sent.push(await send(aliceSocket, room, `alice ${round}`));
    sent.push(await send(bobSocket, room, `bob ${round}`));
  }

  assertConsecutive(sent.map((message) => message.seq), 1, 2 * rounds, 'acked seqs');

  const atBob = await bobInbox.waitForCount('message:new', rounds);
  const atAlice = await aliceInbox.waitForCount('message:new', rounds);
  const fromAlice = sent.filter((message) => message.text.startsWith('alice'));
  const fromBob = sent.filter((message) => message.text.startsWith('bob'));
  assert.deepEqual(atBob, fromAlice, 'Bob should receive exactly Alice messages, in order');
  assert.deepEqual(atAlice, fromBob, 'Alice should receive exactly Bob messages, in order');
});

test('created_at is ISO UTC and ordered', async () => {
  const { room, aliceSocket } = await twoUsers('time');
  await join(aliceSocket, room);

  const first = await send(aliceSocket, room, 'first');
  const second = await send(aliceSocket, room, 'second');

  assert.ok(Date.parse(second.created_at) >= Date.parse(first.created_at), 'created_at went backwards');
  assert.notEqual(first.id, second.id, 'two messages share an id');
});

test('unicode text round trip', async () => {
  const { room, aliceSocket, bobSocket, bobInbox } = await twoUsers('unicode');
  await join(aliceSocket, room);
  await join(bobSocket, room);
  const text = 'Grüße 👋 — 日本語 «ok» \n second line \t tab "quotes" \\ backslash';

  const message = await send(aliceSocket, room, text);
  const received = await bobInbox.waitFor('message:new', (incoming) => incoming.id === message.id);

  assert.equal(message.text, text);
  assert.equal(received.text, text);
});

test('text size limit in UTF-8 bytes', async () => {
  const { room, aliceSocket } = await twoUsers('size');
  await join(aliceSocket, room);

  const largest = 'x'.repeat(MAX_TEXT_BYTES);
  const accepted = await send(aliceSocket, room, largest);
  assert.equal(accepted.text.length, MAX_TEXT_BYTES);

  await fails(aliceSocket, 'message:send', { room, text: `${largest}x`, client_id: 'big-1' }, 'payload_too_large');

  // 8193 two-byte characters: under the limit in characters, over it in bytes.
  const wide = 'é'.repeat(MAX_TEXT_BYTES / 2 + 1);
  await fails(aliceSocket, 'message:send', { room, text: wide, client_id: 'big-2' }, 'payload_too_large');

  // 4096 four-byte characters fill the limit exactly.
  const emoji = '😀'.repeat(MAX_TEXT_BYTES / 4);
  const exact = await send(aliceSocket, room, emoji);
  assert.equal(exact.text, emoji);

  assert.equal(aliceSocket.connected, true, 'an oversized message closed the connection');
});

test('oversized text on each transport', async () => {
  const failures = [];

  // A browser may stay on HTTP long-polling, where each event travels in a POST body.
  for (const transport of ['websocket', 'polling']) {
    const room = uniqueRoom(`big-${transport}`);
    const socket = await connectAs(uniqueUser('big'), {}, { transports: [transport] });
    await join(socket, room);

    for (const size of [MAX_TEXT_BYTES + 1, 500_000, 2_000_000]) {
      const payload = { room, text: 'y'.repeat(size), client_id: `big-${size}` };
      const ack = await request(socket, 'message:send', payload).catch(() => 'no ack');
      if (ack?.error?.code !== 'payload_too_large') {
        const got = ack === 'no ack' ? `no ack within ${ACK_TIMEOUT_MS} ms` : JSON.stringify(ack).slice(0, 200);
        failures.push(`${size} bytes over ${transport}: ${got}`);
      }
    }

    assert.equal(socket.connected, true, `large texts closed the connection over ${transport}`);
    const message = await send(socket, room, 'small again');
    assert.equal(message.text, 'small again');
  }

  assert.deepEqual(failures, [], 'oversized texts should get payload_too_large on every transport');
});

test('chat over long-polling only', async () => {
  const room = uniqueRoom('polling');
  const alice = await connectAs(uniqueUser('alice'), {}, { transports: ['polling'] });
  const bob = await connectAs(uniqueUser('bob'), {}, { transports: ['polling'] });
  const bobInbox = new Inbox(bob);
  await join(alice, room);
  await join(bob, room);

  const sent = [];
  for (let index = 0; index < 10; index += 1) {
    sent.push(await send(alice, room, `over polling ${index}`));
  }

  const received = await bobInbox.waitForCount('message:new', sent.length);
  assert.deepEqual(received, sent);
  assert.equal(alice.io.engine.transport.name, 'polling', 'the socket left long-polling');
});

test('leave stops delivery', async () => {
  const { room, aliceSocket, bobSocket, bobInbox, aliceInbox } = await twoUsers('leave');
  await join(aliceSocket, room);
  await join(bobSocket, room);

  const left = await ok(bobSocket, 'room:leave', { room });
  assert.equal(left.room, room);

  const afterLeave = await send(aliceSocket, room, 'Bob is gone');
  await fails(bobSocket, 'room:leave', { room }, 'not_found');
  await fails(bobSocket, 'message:send', { room, text: 'still here?', client_id: 'b-x' }, 'forbidden');

  // Bob rejoins and writes. Once Alice has his message, Bob must still lack the one sent while he was away.
  await join(bobSocket, room);
  const back = await send(bobSocket, room, 'back again');
  await aliceInbox.waitFor('message:new', (message) => message.id === back.id);
  assert.deepEqual(bobInbox.of('message:new', (message) => message.id === afterLeave.id), []);
});

test('send requires membership', async () => {
  const { room, aliceSocket, bobSocket } = await twoUsers('member');
  await join(aliceSocket, room);

  await fails(bobSocket, 'message:send', { room, text: 'let me in', client_id: 'x-1' }, 'forbidden');
  await fails(bobSocket, 'message:send', { room: uniqueRoom('nowhere'), text: 'hi', client_id: 'x-2' }, 'forbidden');

  const history = await ok(aliceSocket, 'room:history', { room });
  assert.deepEqual(history.messages, [], 'a rejected send must not be stored');
});

test('history pages over socket', async () => {
  const { room, aliceSocket } = await twoUsers('history');
  await join(aliceSocket, room);
  const sent = [];
  for (let index = 0; index < 12; index += 1) {
    sent.push(await send(aliceSocket, room, `line ${index}`));
  }

  const all = await ok(aliceSocket, 'room:history', { room, limit: 200 });
  assert.equal(all.room, room);
  assert.deepEqual(all.messages, sent, 'history should hold every message oldest first');
  assert.equal(all.has_more, false);

  const after = await ok(aliceSocket, 'room:history', { room, after_seq: 3, limit: 4 });
  assert.deepEqual(after.messages.map((message) => message.seq), [4, 5, 6, 7]);
  assert.equal(after.has_more, true);

  const tail = await ok(aliceSocket, 'room:history', { room, after_seq: 8, limit: 4 });
  assert.deepEqual(tail.messages.map((message) => message.seq), [9, 10, 11, 12]);
  assert.equal(tail.has_more, false);

  const before = await ok(aliceSocket, 'room:history', { room, before_seq: 6, limit: 3 });
  assert.deepEqual(before.messages.map((message) => message.seq), [3, 4, 5], 'before_seq pages are oldest first');
  assert.equal(before.has_more, true);

  const head = await ok(aliceSocket, 'room:history', { room, before_seq: 3, limit: 5 });
  assert.deepEqual(head.messages.map((message) => message.seq), [1, 2]);
  assert.equal(head.has_more, false);

  const largest = await ok(aliceSocket, 'room:history', { room, after_seq: 0, limit: 200 });
  assert.equal(largest.messages.length, 12);

  await fails(aliceSocket, 'room:history', { room, after_seq: 1, before_seq: 5 }, 'invalid_argument');
  await fails(aliceSocket, 'room:history', { room, limit: 201 }, 'invalid_argument');
});
