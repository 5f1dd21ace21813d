// A subscriber that loses its connection while a report streams, and subscribes again with
// since_seq set to the last seq it saw, gets exactly the events it missed: no gap, no duplicate,
// the same events an uninterrupted subscriber got. So does an SSE stream opened mid-run with
// Last-Event-ID. The fake model streams slowly, so each model-written section lasts long enough
// to disconnect in the middle of it.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Inbox, assertConsecutive, connectAs, uniqueUser } from '../e2e/lib.mjs';
import {
  assertStreamShape, lastSeq, readEventStream, startAgent, streamEvents, subscribe, waitForDeltas, waitForStream,
} from './agents_lib.mjs';

const TEXT = 'Tide pools form where the ocean retreats among the rocks. Anemones and small crabs live '
  + 'in them between the tides. Visit during a low tide and wear shoes with grip.';
const SUMMARY = 0;
const RECOMMENDATIONS = 5;
const DELTAS_BEFORE_DISCONNECT = 3;

async function startWatchedRun(user) {
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);
  const run = await startAgent(socket, 'report', { text: TEXT });
  return { inbox, run };
}

/**
 * Subscribe on a new connection after `sinceSeq`, wait for `count` deltas of section `index`,
 * then disconnect. Return the events the connection received.
 */
async function followThenDisconnect(user, runId, sinceSeq, index, count) {
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);
  await subscribe(socket, runId, sinceSeq);
  await waitForDeltas(inbox, runId, index, count);
  socket.disconnect();
  return streamEvents(inbox, runId);
}

/** Wait until the uninterrupted subscriber is past `seq`, so that the disconnected one missed events live. */
async function waitUntilPast(inbox, runId, seq) {
  await inbox.waitFor('agent:delta', (payload) => payload.run_id === runId && payload.seq > seq);
}

function assertPart(part, firstSeq, expected, context) {
  assert.ok(part.length > 0, `${context}: no events`);
  assertConsecutive(part.map((event) => event.seq), firstSeq, firstSeq + part.length - 1, context);
  assert.deepEqual(part, expected.slice(firstSeq - 1, firstSeq - 1 + part.length),
    `${context}: the events differ from the uninterrupted subscriber's`);
}

test('resubscribe twice while the model streams', async () => {
  const user = uniqueUser('flaky');
  const starter = await startWatchedRun(user);
  const runId = starter.run.id;

  const first = await followThenDisconnect(user, runId, 0, SUMMARY, DELTAS_BEFORE_DISCONNECT);
  const firstLast = lastSeq(first);
  await waitUntilPast(starter.inbox, runId, firstLast + 1);
  const sseResumed = readEventStream(runId, user, firstLast);

  const second = await followThenDisconnect(user, runId, firstLast, RECOMMENDATIONS, DELTAS_BEFORE_DISCONNECT);
  const secondLast = lastSeq(second);
  await waitUntilPast(starter.inbox, runId, secondLast + 1);

  const thirdSocket = await connectAs(user);
  const thirdInbox = new Inbox(thirdSocket);
  await subscribe(thirdSocket, runId, secondLast);
  const third = await waitForStream(thirdInbox, runId);

  const expected = await waitForStream(starter.inbox, runId);
  assertStreamShape(expected, 'uninterrupted subscriber');
  assert.equal(expected.at(-1).status, 'completed', `the run ended ${expected.at(-1).status}`);

  assertPart(first, 1, expected, 'first connection');
  assertPart(second, firstLast + 1, expected, 'second connection');
  assertPart(third, secondLast + 1, expected, 'third connection');
  assert.deepEqual([...first, ...second, ...third], expected,
    'the three connections together should get every event once');
  assert.deepEqual(await sseResumed, expected.slice(firstLast),
    `the SSE stream opened mid-run with Last-Event-ID ${firstLast} should send exactly the rest`);
});

test('resubscribe after the run ended', async () => {
  const user = uniqueUser('late');
  const starter = await startWatchedRun(user);
  const runId = starter.run.id;

  const first = await followThenDisconnect(user, runId, 0, SUMMARY, DELTAS_BEFORE_DISCONNECT);
  const firstLast = lastSeq(first);
  const expected = await waitForStream(starter.inbox, runId);

  const socket = await connectAs(user);
  const inbox = new Inbox(socket);
  const ack = await subscribe(socket, runId, firstLast);
  assert.equal(ack.run.status, 'completed', `the run should have ended: ${JSON.stringify(ack.run)}`);
  assert.equal(ack.replayed, expected.length - firstLast, 'replayed should count every missed event');
  const rest = await waitForStream(inbox, runId);

  assertPart(first, 1, expected, 'connection before the end');
  assertPart(rest, firstLast + 1, expected, 'replay after the end');
  const missedDeltas = rest.filter((event) => event.event === 'agent:delta');
  assert.ok(missedDeltas.length > 0, 'the replay of the stored run should include the missed deltas');
});
