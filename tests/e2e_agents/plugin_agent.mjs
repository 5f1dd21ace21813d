// A third-party agent registered through HUDDLE_AGENT_PLUGINS (tests/plugins/countdown_agent.py)
// runs like the built-in one: started over Socket.IO, streamed as deltas and a section, shared
// with room members, replayed to subscribers, and stored for GET /api/reports and SSE.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EVENT_TIMEOUT_MS, Inbox, assertError, connectAs, join, request, uniqueRoom, uniqueUser } from '../e2e/lib.mjs';
import {
  assertStoredRunMatches, assertStreamShape, sectionsOf, startAgent, subscribe, waitForDeltas, waitForStream,
} from './agents_lib.mjs';

/** Return the numbers from `start` down to 1. */
function countdown(start) {
  return Array.from({ length: start }, (_, position) => start - position);
}

function assertCountdown(events, start, context) {
  assertStreamShape(events, context);
  const done = events.at(-1);
  assert.equal(done.status, 'completed', `${context}: run ended ${done.status}: ${JSON.stringify(done.error)}`);

  const deltas = events.filter((event) => event.event === 'agent:delta').map((event) => event.delta);
  assert.deepEqual(deltas, countdown(start).map((number) => `${number} `), `${context}: unexpected deltas`);
  const content = countdown(start).join(' ');
  assert.deepEqual(sectionsOf(events), [{ index: 0, title: 'Countdown', content }], `${context}: unexpected section`);

  const stages = events.filter((event) => event.event === 'agent:stage').map(({ stage, label }) => ({ stage, label }));
  assert.deepEqual(stages, [
    { stage: 'started', label: 'Started' },
    { stage: 'counting', label: `Counting down from ${start}` },
    { stage: 'counting', label: 'Lift-off' },
  ], `${context}: unexpected stages`);
}

test('countdown streams deltas and a section', async () => {
  const user = uniqueUser('counter');
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);

  const run = await startAgent(socket, 'countdown', { from: 5 });
  const events = await waitForStream(inbox, run.id);

  assertCountdown(events, 5, 'countdown');
  const report = await assertStoredRunMatches(run.id, user, events, 'finished countdown');
  assert.equal(report.agent, 'countdown');
  assert.equal(report.usage, null, 'a run without model requests has no usage');
});

test('countdown in a room reaches members who join later', async () => {
  const start = 30;
  const room = uniqueRoom('countdown');
  const owner = await connectAs(uniqueUser('owner'));
  const member = await connectAs(uniqueUser('member'));
  const ownerInbox = new Inbox(owner);
  const memberInbox = new Inbox(member);
  await join(owner, room);
  await join(member, room);

  const run = await startAgent(owner, 'countdown', { from: start, delay: 0.05 }, room);
  await waitForDeltas(ownerInbox, run.id, 0, 3);

  const late = await connectAs(uniqueUser('late'));
  const lateInbox = new Inbox(late);
  const joined = await join(late, room);
  const listed = joined.runs.filter((item) => item.id === run.id);
  assert.equal(listed.length, 1, `the join ack should list the run in progress: ${JSON.stringify(joined.runs)}`);
  assert.equal(listed[0].agent, 'countdown');
  assert.equal(listed[0].status, 'running');
  await subscribe(late, run.id, 0);

  const ownerEvents = await waitForStream(ownerInbox, run.id);
  // The run has ended, so the members' events are due; a shorter wait suffices.
  const memberEvents = await waitForStream(memberInbox, run.id, EVENT_TIMEOUT_MS);
  const lateEvents = await waitForStream(lateInbox, run.id, EVENT_TIMEOUT_MS);
  assertCountdown(ownerEvents, start, 'owner');
  assert.deepEqual(memberEvents, ownerEvents, 'the member in the room should get every event');
  assert.deepEqual(lateEvents, ownerEvents, 'the member who joined later should get every event by subscribing');
});

// The countdown publishes without pause, so live events keep coming while the replay is sent.
test('subscribe mid-run to a fast countdown', async () => {
  const start = 1000;
  const user = uniqueUser('fast');
  const owner = await connectAs(user);
  const ownerInbox = new Inbox(owner);
  const run = await startAgent(owner, 'countdown', { from: start });
  await waitForDeltas(ownerInbox, run.id, 0, 50);

  const viewer = await connectAs(user);
  const viewerInbox = new Inbox(viewer);
  await subscribe(viewer, run.id, 0);

  const ownerEvents = await waitForStream(ownerInbox, run.id);
  const viewerEvents = await waitForStream(viewerInbox, run.id, EVENT_TIMEOUT_MS);
  assertCountdown(ownerEvents, start, 'owner');
  const expectedSeqs = ownerEvents.map((event) => event.seq);
  const receivedSeqs = viewerEvents.map((event) => event.seq);
  assert.deepEqual([...receivedSeqs].sort((a, b) => a - b), expectedSeqs,
    'the subscriber should get every event of the run once');
  assert.deepEqual(receivedSeqs, expectedSeqs, 'the subscriber should get the replay first, then live events, in seq order');
  assert.deepEqual(viewerEvents, ownerEvents, 'the subscriber should get the same events as the owner');
});

test('plug-in input is validated and listed', async () => {
  const socket = await connectAs(uniqueUser('careless'));

  const invalid = await request(socket, 'agent:start', { agent: 'countdown', input: { from: 0 } });
  assertError(invalid, 'invalid_argument', 'countdown from 0');
  assert.match(invalid.error.message, /from/, `the error should name the field: ${invalid.error.message}`);

  const unknown = await request(socket, 'agent:start', { agent: 'launch', input: {} });
  assertError(unknown, 'not_found', 'unknown agent');
  assert.match(unknown.error.message, /countdown/, `the error should list the plug-in: ${unknown.error.message}`);
  assert.match(unknown.error.message, /report/, `the error should list the built-in agent: ${unknown.error.message}`);
});
