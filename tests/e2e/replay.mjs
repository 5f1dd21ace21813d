// agent:subscribe replays the stored run events after since_seq, then continues live with
// no gap and no duplicate.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Inbox, assertConsecutive, assertRunSequence, connectAs, fails, join, ok, pageUrl, runEvents, startReport,
  uniqueRoom, uniqueUser, waitForRun,
} from './lib.mjs';

async function subscribe(socket, runId, sinceSeq) {
  const ack = await ok(socket, 'agent:subscribe', { run_id: runId, since_seq: sinceSeq });
  assert.equal(ack.run?.id, runId, `agent:subscribe ack names another run: ${JSON.stringify(ack.run)}`);
  assert.equal(typeof ack.run.status, 'string', 'agent:subscribe ack has no run.status');
  assert.ok(Number.isInteger(ack.run.last_seq), `agent:subscribe ack has no run.last_seq: ${JSON.stringify(ack.run)}`);
  assert.ok(Number.isInteger(ack.replayed), `agent:subscribe ack has no replayed count: ${JSON.stringify(ack)}`);
  return ack;
}

/** Start a slow report as `user` and wait until its fetching stage, so the run is mid-way. */
async function startSlowRun(user, room) {
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);
  if (room !== undefined) {
    await join(socket, room);
  }
  const run = await startReport(socket, { url: pageUrl('/slow?delay=3') }, room);
  await inbox.waitFor('agent:stage', (event) => event.run_id === run.id && event.stage === 'fetching');
  return { socket, inbox, run };
}

async function finishedRun(user) {
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);
  const run = await startReport(socket, { url: pageUrl('/article') });
  const events = await waitForRun(inbox, run.id);
  assertRunSequence(events, 'finished run');
  return { socket, run, events };
}

test('subscribe from zero while running', async () => {
  const user = uniqueUser('owner');
  const starter = await startSlowRun(user);
  const viewer = await connectAs(user);
  const viewerInbox = new Inbox(viewer);

  const ack = await subscribe(viewer, starter.run.id, 0);
  assert.ok(!['completed', 'failed', 'cancelled'].includes(ack.run.status), `the run already ended: ${ack.run.status}`);
  assert.ok(ack.replayed >= 2, `expected at least the started and fetching events replayed, got ${ack.replayed}`);

  const expected = await waitForRun(starter.inbox, starter.run.id);
  const received = await waitForRun(viewerInbox, starter.run.id);
  assertRunSequence(received, 'subscriber from seq 0');
  assert.deepEqual(received, expected, 'the subscriber should get the same events as the starter, once each');
  assert.ok(ack.run.last_seq >= ack.replayed, 'run.last_seq is behind the replayed events');
});

test('subscribe mid-way while running', async () => {
  const user = uniqueUser('owner');
  const starter = await startSlowRun(user);
  const viewer = await connectAs(user);
  const viewerInbox = new Inbox(viewer);

  const ack = await subscribe(viewer, starter.run.id, 1);

  const expected = await waitForRun(starter.inbox, starter.run.id);
  const received = await waitForRun(viewerInbox, starter.run.id);
  assertConsecutive(received.map((event) => event.seq), 2, expected.length, 'subscriber from seq 1');
  assert.deepEqual(received, expected.slice(1), 'the subscriber should get every event after seq 1, once each');
  assert.equal(ack.replayed, received.filter((event) => event.seq <= ack.run.last_seq).length,
    'replayed should count the stored events sent before going live');
});

test('subscribe after the run finished', async () => {
  const user = uniqueUser('owner');
  const { run, events } = await finishedRun(user);
  const last = events.length;

  const viewer = await connectAs(user);
  const viewerInbox = new Inbox(viewer);
  const all = await subscribe(viewer, run.id, 0);
  assert.equal(all.run.status, 'completed');
  assert.equal(all.run.last_seq, last);
  assert.equal(all.replayed, last);
  await viewerInbox.waitForCount('agent:done', 1, (event) => event.run_id === run.id);
  assert.deepEqual(runEvents(viewerInbox, run.id), events, 'a replay from 0 should equal the live events');

  const partial = await connectAs(user);
  const partialInbox = new Inbox(partial);
  const fromThree = await subscribe(partial, run.id, 3);
  assert.equal(fromThree.replayed, last - 3);
  await partialInbox.waitForCount('agent:done', 1, (event) => event.run_id === run.id);
  assert.deepEqual(runEvents(partialInbox, run.id), events.slice(3), 'a replay from seq 3 should start at seq 4');

  const upToDate = await connectAs(user);
  const upToDateInbox = new Inbox(upToDate);
  const nothing = await subscribe(upToDate, run.id, last);
  assert.equal(nothing.replayed, 0);
  const marker = await subscribe(upToDate, run.id, last - 1);
  assert.equal(marker.replayed, 1);
  await upToDateInbox.waitFor('agent:done', (event) => event.run_id === run.id);
  assert.deepEqual(runEvents(upToDateInbox, run.id), [events.at(-1)],
    'since_seq at the last event should replay nothing');
});

test('other users cannot subscribe', async () => {
  const { run } = await finishedRun(uniqueUser('owner'));
  const stranger = await connectAs(uniqueUser('stranger'));
  const strangerInbox = new Inbox(stranger);

  await fails(stranger, 'agent:subscribe', { run_id: run.id, since_seq: 0 }, 'not_found');

  // Any event the refused subscribe could have sent would arrive before this ack.
  await fails(stranger, 'agent:subscribe', { run_id: 'no-such-run', since_seq: 0 }, 'not_found');
  assert.deepEqual(runEvents(strangerInbox, run.id), [], 'a refused subscriber got run events');
});

test('room runs follow room membership', async () => {
  const room = uniqueRoom('shared-run');
  const starter = await startSlowRun(uniqueUser('owner'), room);

  const colleague = await connectAs(uniqueUser('colleague'));
  const colleagueInbox = new Inbox(colleague);
  await fails(colleague, 'agent:subscribe', { run_id: starter.run.id, since_seq: 0 }, 'not_found');
  await ok(colleague, 'room:join', { room });
  await subscribe(colleague, starter.run.id, 0);

  const restricted = await connectAs(uniqueUser('restricted'), { rooms: ['elsewhere-*'] });
  const restrictedInbox = new Inbox(restricted);
  await fails(restricted, 'agent:subscribe', { run_id: starter.run.id, since_seq: 0 }, 'not_found');

  const expected = await waitForRun(starter.inbox, starter.run.id);
  const received = await waitForRun(colleagueInbox, starter.run.id);
  assert.deepEqual(received, expected, 'a user allowed in the room should get the whole run');
  assert.deepEqual(runEvents(restrictedInbox, starter.run.id), []);
});
