// A report on a server with a language model streams its Summary and Recommendations as
// agent:delta events, and the finished run keeps every event and the model's token usage.
//
// MODEL_REPLY is the text the fake model streams for every request, and EXPECTED_USAGE the
// run's usage after its two model requests, as JSON.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EVENT_TIMEOUT_MS, Inbox, connectAs, join, uniqueRoom, uniqueUser } from '../e2e/lib.mjs';
import {
  assertDeltasMatchSections, assertStoredRunMatches, assertStreamShape, deltaText, requireEnv, requireJsonEnv,
  sectionsOf, startAgent, subscribe, waitForStream,
} from './agents_lib.mjs';

const MODEL_REPLY = requireEnv('MODEL_REPLY');
const EXPECTED_USAGE = requireJsonEnv('EXPECTED_USAGE');

const TEXT = 'Glaciers move slowly downhill under their own weight. They carve deep valleys over '
  + 'thousands of years. The ice at the bottom of a glacier can be very old.';
const TITLES = ['Summary', 'Key points', 'Outline', 'Links', 'Statistics', 'Recommendations'];
const RECOMMENDATIONS = TITLES.length - 1;

function assertModelSections(events, context) {
  assertStreamShape(events, context);
  assertDeltasMatchSections(events, context);

  const done = events.at(-1);
  assert.equal(done.status, 'completed', `${context}: run ended ${done.status}: ${JSON.stringify(done.error)}`);
  const sections = sectionsOf(events);
  assert.deepEqual(sections.map((section) => section.title), TITLES, `${context}: unexpected sections`);

  for (const index of [0, RECOMMENDATIONS]) {
    const deltas = events.filter((event) => event.event === 'agent:delta' && event.index === index);
    assert.ok(deltas.length > 1, `${context}: section ${index} came in ${deltas.length} delta(s), expected a stream`);
    assert.equal(deltaText(events, index), MODEL_REPLY, `${context}: the deltas of section ${index} are not the reply`);
    assert.equal(sections[index].content, MODEL_REPLY, `${context}: section ${index} is not the model's reply`);
  }

  const streamedIndexes = new Set(events.filter((event) => event.event === 'agent:delta').map((event) => event.index));
  assert.deepEqual([...streamedIndexes].sort(), [0, RECOMMENDATIONS],
    `${context}: only the Summary and Recommendations should stream`);
}

test('summary and recommendations stream as deltas', async () => {
  const user = uniqueUser('reader');
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);

  const run = await startAgent(socket, 'report', { text: TEXT });
  const events = await waitForStream(inbox, run.id);

  assertModelSections(events, 'live run');
  const stages = events.filter((event) => event.event === 'agent:stage').map((event) => event.stage);
  assert.deepEqual(stages.slice(0, 4), ['started', 'extracting', 'analysing', 'writing'],
    `unexpected first stages: ${stages.join(', ')}`);

  const report = await assertStoredRunMatches(run.id, user, events, 'finished run');
  assert.deepEqual(report.usage, EXPECTED_USAGE, 'GET /api/reports should count both model requests');

  const later = await connectAs(user);
  const laterInbox = new Inbox(later);
  const ack = await subscribe(later, run.id, 0);
  assert.equal(ack.replayed, events.length, 'a replay of the finished run should include every delta');
  const replayed = await waitForStream(laterInbox, run.id);
  assert.deepEqual(replayed, events, 'agent:subscribe from 0 should replay the live events, deltas included');
});

test('room members see the same stream', async () => {
  const room = uniqueRoom('report-stream');
  const owner = await connectAs(uniqueUser('owner'));
  const member = await connectAs(uniqueUser('member'));
  const ownerInbox = new Inbox(owner);
  const memberInbox = new Inbox(member);
  await join(owner, room);
  await join(member, room);

  const run = await startAgent(owner, 'report', { text: TEXT }, room);
  const ownerEvents = await waitForStream(ownerInbox, run.id);
  // The run has ended, so the member's events are due; a shorter wait suffices.
  const memberEvents = await waitForStream(memberInbox, run.id, EVENT_TIMEOUT_MS);

  assertModelSections(memberEvents, 'room member');
  assert.deepEqual(memberEvents, ownerEvents, 'the member should get exactly the events the owner got');
});
