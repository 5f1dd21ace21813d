// Several sockets sending at once: every seq is used exactly once and all receivers agree on order.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Inbox, assertConsecutive, connectAs, join, ok, send, uniqueRoom, uniqueUser } from './lib.mjs';

const SENDERS = 4;
const MESSAGES_EACH = 50;
const TOTAL = SENDERS * MESSAGES_EACH;

test('concurrent senders share one sequence', async () => {
  const room = uniqueRoom('concurrent');
  const sharedUser = uniqueUser('twotabs');
  // Two sockets belong to one user, so a user's own other tab must get its messages too.
  const senderUsers = [sharedUser, sharedUser, uniqueUser('writer'), uniqueUser('writer')];
  const senders = [];
  for (const user of senderUsers) {
    const socket = await connectAs(user);
    senders.push({ socket, inbox: new Inbox(socket) });
    await join(socket, room);
  }
  const readers = [];
  for (let index = 0; index < 2; index += 1) {
    const socket = await connectAs(uniqueUser('reader'));
    readers.push({ socket, inbox: new Inbox(socket) });
    await join(socket, room);
  }

  const acked = await Promise.all(senders.map(({ socket }, senderIndex) => Promise.all(
    Array.from({ length: MESSAGES_EACH }, (_, index) => send(socket, room, `s${senderIndex} m${index}`,
      `s${senderIndex}-${index}`)),
  )));

  const allAcked = acked.flat().sort((a, b) => a.seq - b.seq);
  assertConsecutive(allAcked.map((message) => message.seq), 1, TOTAL, 'acked seqs over all senders');
  assert.equal(new Set(allAcked.map((message) => message.id)).size, TOTAL, 'two messages share an id');

  const readerViews = [];
  for (const { inbox } of readers) {
    const received = await inbox.waitForCount('message:new', TOTAL);
    assert.equal(received.length, TOTAL, 'a reader got extra messages');
    readerViews.push(received.map((message) => message.seq));
  }
  assert.deepEqual(readerViews[1], readerViews[0], 'the two readers saw different orders');
  assertConsecutive(readerViews[0], 1, TOTAL, 'delivery order at a reader');

  const byId = new Map(allAcked.map((message) => [message.id, message]));
  for (const { inbox } of readers) {
    for (const message of inbox.of('message:new')) {
      assert.deepEqual(message, byId.get(message.id), 'a broadcast differs from the acked message');
    }
  }

  for (const [senderIndex, { inbox }] of senders.entries()) {
    const expectedCount = TOTAL - MESSAGES_EACH;
    const received = await inbox.waitForCount('message:new', expectedCount);
    assert.equal(received.length, expectedCount, `sender ${senderIndex} got its own messages back`);

    const own = new Set(acked[senderIndex].map((message) => message.id));
    assert.ok(received.every((message) => !own.has(message.id)), `sender ${senderIndex} got an echo`);

    const seqs = received.map((message) => message.seq);
    const expectedOrder = readerViews[0].filter((seq) => seqs.includes(seq));
    assert.deepEqual(seqs, expectedOrder, `sender ${senderIndex} saw a different order than the readers`);
  }

  const history = await ok(readers[0].socket, 'room:history', { room, after_seq: 0, limit: 200 });
  assert.deepEqual(history.messages, allAcked, 'history should match the acked messages in seq order');
});

test('concurrent rooms keep their own sequences', async () => {
  const rooms = [uniqueRoom('para-a'), uniqueRoom('para-b'), uniqueRoom('para-c')];
  const socket = await connectAs(uniqueUser('multi'));
  for (const room of rooms) {
    await join(socket, room);
  }

  const sent = await Promise.all(rooms.map((room) => Promise.all(
    Array.from({ length: 30 }, (_, index) => send(socket, room, `${room} ${index}`)),
  )));

  for (const [index, room] of rooms.entries()) {
    const seqs = sent[index].map((message) => message.seq).sort((a, b) => a - b);
    assertConsecutive(seqs, 1, 30, `seqs in ${room}`);
    assert.ok(sent[index].every((message) => message.room === room));
  }
});
