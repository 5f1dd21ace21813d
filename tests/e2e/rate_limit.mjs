// Flooding one connection gets rate_limited acks, and the socket stays connected and recovers.
//
// The test server allows 200 events/s with a burst of 400 per connection, so a flood of
// 1000 events sent at once has to hit the limit.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertError, connectAs, join, request, send, uniqueRoom, uniqueUser, waitUntil,
} from './lib.mjs';

const FLOOD_SIZE = 1000;
const MAX_FLOODS = 5;

/** Send FLOOD_SIZE typing events without waiting between them, and return their acks in send order. */
function flood(socket, room) {
  return Promise.all(Array.from({ length: FLOOD_SIZE }, () => request(socket, 'typing', { room, typing: true })));
}

/** Flood until some acks are rate_limited, at most MAX_FLOODS times, and return the acks of the last flood. */
async function floodUntilLimited(socket, room) {
  for (let attempt = 1; attempt <= MAX_FLOODS; attempt += 1) {
    const acks = await flood(socket, room);
    if (acks.some((ack) => ack.error?.code === 'rate_limited')) {
      return acks;
    }
  }
  throw new Error(`${MAX_FLOODS} floods of ${FLOOD_SIZE} events got no rate_limited ack`);
}

test('flood gets rate_limited acks', async () => {
  const room = uniqueRoom('flood');
  const socket = await connectAs(uniqueUser('flooder'));
  await join(socket, room);

  const acks = await floodUntilLimited(socket, room);

  const limited = acks.filter((ack) => ack.ok === false);
  const accepted = acks.filter((ack) => ack.ok === true);
  for (const ack of limited) {
    assertError(ack, 'rate_limited', 'flooded typing event');
  }
  assert.ok(accepted.length > 0, 'every event of the flood was rejected; the burst should let some through');
  assert.equal(limited.length + accepted.length, FLOOD_SIZE, 'some acks were neither ok nor an error');
  assert.equal(socket.connected, true, 'the flood closed the connection');
  console.log(`# ${accepted.length} accepted, ${limited.length} rate_limited`);
});

test('limited socket recovers', async () => {
  const room = uniqueRoom('recover');
  const socket = await connectAs(uniqueUser('flooder'));
  await join(socket, room);
  await floodUntilLimited(socket, room);

  // The limit refills over time, so single events are accepted again after a while.
  const message = await waitUntil(async () => {
    const ack = await request(socket, 'message:send', { room, text: 'calm again', client_id: 'calm-1' });
    return ack.ok ? ack.message : undefined;
  }, 'the socket to be allowed to send again', { timeoutMs: 20_000, intervalMs: 250 });

  assert.equal(message.text, 'calm again');
  assert.equal(socket.connected, true);
});

test('limit is per connection', async () => {
  const room = uniqueRoom('perconn');
  const user = uniqueUser('flooder');
  const noisy = await connectAs(user);
  const quiet = await connectAs(user);
  await join(noisy, room);
  await join(quiet, room);

  await floodUntilLimited(noisy, room);
  const message = await send(quiet, room, 'the other tab is fine');

  assert.equal(message.text, 'the other tab is fine');
});

test('rate limited events are not applied', async () => {
  const room = uniqueRoom('notapplied');
  const socket = await connectAs(uniqueUser('flooder'));
  await join(socket, room);
  await floodUntilLimited(socket, room);

  // Messages sent straight after the flood that are rejected must leave no trace in history.
  const acks = await Promise.all(Array.from({ length: 50 }, (_, index) =>
    request(socket, 'message:send', { room, text: `after flood ${index}`, client_id: `af-${index}` })));
  const stored = acks.filter((ack) => ack.ok).map((ack) => ack.message);
  for (const ack of acks.filter((item) => !item.ok)) {
    assertError(ack, 'rate_limited', 'message:send after a flood');
  }

  const reader = await connectAs(uniqueUser('reader'));
  const history = await waitUntil(async () => {
    const ack = await request(reader, 'room:history', { room, limit: 200 });
    return ack.ok ? ack : undefined;
  }, 'room:history from a fresh socket');
  const storedIds = stored.map((message) => message.id).sort();
  const historyIds = history.messages.map((message) => message.id).sort();
  assert.deepEqual(historyIds, storedIds, 'history should hold exactly the accepted messages');
});
