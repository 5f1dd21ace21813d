// Reconnecting and rejoining with since_seq returns exactly the messages sent meanwhile.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Inbox, assertConsecutive, connectAs, connected, disconnected, join, ok, send, uniqueRoom, uniqueUser,
} from './lib.mjs';

const MISSED_CAP = 100;

async function sendMany(socket, room, count, label) {
  const sent = [];
  // Batches of 25 keep the burst well under the test server's rate limit.
  for (let start = 0; start < count; start += 25) {
    const batch = [];
    for (let index = start; index < Math.min(count, start + 25); index += 1) {
      batch.push(send(socket, room, `${label} ${index}`, `${label}-${index}`));
    }
    sent.push(...await Promise.all(batch));
  }
  return sent.sort((a, b) => a.seq - b.seq);
}

test('rejoin returns what was missed', async () => {
  const room = uniqueRoom('rejoin');
  const writer = await connectAs(uniqueUser('writer'));
  const reader = await connectAs(uniqueUser('reader'));
  const readerInbox = new Inbox(reader);
  await join(writer, room);
  await join(reader, room);

  const before = await sendMany(writer, room, 5, 'before');
  await readerInbox.waitForCount('message:new', 5);
  const lastSeen = readerInbox.of('message:new').at(-1).seq;
  assert.equal(lastSeen, before.at(-1).seq);

  reader.disconnect();
  await disconnected(reader);
  const meanwhile = await sendMany(writer, room, 7, 'meanwhile');

  reader.connect();
  await connected(reader);
  const ack = await join(reader, room, lastSeen);

  assert.deepEqual(ack.missed, meanwhile, 'missed should hold exactly the messages sent while away');
  assert.equal(ack.has_more, false);
  assert.equal(ack.last_seq, meanwhile.at(-1).seq);

  const after = await send(writer, room, 'live again');
  const live = await readerInbox.waitFor('message:new', (message) => message.id === after.id);
  assert.equal(live.seq, meanwhile.at(-1).seq + 1);
});

test('rejoin when nothing was missed', async () => {
  const room = uniqueRoom('uptodate');
  const writer = await connectAs(uniqueUser('writer'));
  await join(writer, room);
  const sent = await sendMany(writer, room, 3, 'only');

  const reader = await connectAs(uniqueUser('reader'));
  const current = await join(reader, room, sent.at(-1).seq);
  assert.deepEqual(current.missed, []);
  assert.equal(current.has_more, false);
  assert.equal(current.last_seq, sent.at(-1).seq);

  const fromStart = await join(await connectAs(uniqueUser('reader')), room, 0);
  assert.deepEqual(fromStart.missed, sent, 'since_seq 0 should return every message');

  const plain = await join(await connectAs(uniqueUser('reader')), room);
  assert.deepEqual(plain.missed, [], 'without since_seq, missed must be []');
  assert.equal(plain.last_seq, sent.at(-1).seq);

  const ahead = await join(await connectAs(uniqueUser('reader')), room, sent.at(-1).seq + 50);
  assert.deepEqual(ahead.missed, [], 'a since_seq past the end has nothing missed');
});

test('missed is capped with has_more', async () => {
  const room = uniqueRoom('cap');
  const writer = await connectAs(uniqueUser('writer'));
  const reader = await connectAs(uniqueUser('reader'));
  await join(writer, room);
  await join(reader, room);
  const first = await send(writer, room, 'seen by the reader');

  reader.disconnect();
  await disconnected(reader);
  const meanwhile = await sendMany(writer, room, MISSED_CAP + 30, 'flood');

  reader.connect();
  await connected(reader);
  const ack = await join(reader, room, first.seq);

  assert.equal(ack.missed.length, MISSED_CAP, `missed should be capped at ${MISSED_CAP}`);
  assert.equal(ack.has_more, true, 'has_more should be true past the cap');
  assert.deepEqual(ack.missed, meanwhile.slice(0, MISSED_CAP), 'missed should be the oldest messages first');

  const rest = await ok(reader, 'room:history', { room, after_seq: ack.missed.at(-1).seq, limit: 200 });
  assert.deepEqual(rest.messages, meanwhile.slice(MISSED_CAP), 'history should continue where missed stopped');
  assert.equal(rest.has_more, false);

  const exact = await join(await connectAs(uniqueUser('reader')), room, meanwhile.at(-MISSED_CAP - 1).seq);
  assert.equal(exact.missed.length, MISSED_CAP);
  assert.equal(exact.has_more, false, 'exactly 100 missed messages are not "more"');
  assertConsecutive(exact.missed.map((message) => message.seq), meanwhile.at(-MISSED_CAP).seq, meanwhile.at(-1).seq,
    'the last 100 messages');
});

test('reconnect twice in a row', async () => {
  const room = uniqueRoom('twice');
  const writer = await connectAs(uniqueUser('writer'));
  const reader = await connectAs(uniqueUser('reader'));
  await join(writer, room);
  let lastSeen = (await join(reader, room)).last_seq;
  const received = [];

  for (let round = 0; round < 3; round += 1) {
    reader.disconnect();
    await disconnected(reader);
    await sendMany(writer, room, 4, `round-${round}`);
    reader.connect();
    await connected(reader);
    const ack = await join(reader, room, lastSeen);
    received.push(...ack.missed);
    lastSeen = ack.missed.at(-1)?.seq ?? lastSeen;
  }

  assertConsecutive(received.map((message) => message.seq), 1, 12, 'messages collected over three reconnects');
});
