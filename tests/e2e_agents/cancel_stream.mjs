// agent:cancel while the model is streaming the Summary ends the run `cancelled`, keeps the
// deltas already sent, and (checked by tests/test_e2e_agents.py) closes the model request.
//
// MODEL_REPLY is the text the fake model streams, slowly enough to cancel in the middle.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EVENT_TIMEOUT_MS, Inbox, connectAs, fails, join, ok, uniqueRoom, uniqueUser } from '../e2e/lib.mjs';
import {
  assertStoredRunMatches, assertStreamShape, deltaText, requireEnv, sectionsOf, startAgent, waitForDeltas,
  waitForStream,
} from './agents_lib.mjs';

const MODEL_REPLY = requireEnv('MODEL_REPLY');
const TEXT = 'Sourdough starters need regular feeding. Rye flour gives them more nutrients. '
  + 'A healthy starter doubles within six hours.';
const DELTAS_BEFORE_CANCEL = 3;

/** Wait until `watcher` has seen a few Summary deltas, then cancel the run as `canceller`. */
async function cancelMidSummary(watcher, canceller, runId) {
  await waitForDeltas(watcher, runId, 0, DELTAS_BEFORE_CANCEL);
  const ack = await ok(canceller, 'agent:cancel', { run_id: runId });
  assert.deepEqual(ack.run, { id: runId, status: 'cancelling' }, `unexpected agent:cancel ack: ${JSON.stringify(ack)}`);
}

function assertCancelledMidSummary(events, context) {
  assertStreamShape(events, context);
  const done = events.at(-1);
  assert.equal(done.status, 'cancelled', `${context}: run ended ${done.status}: ${JSON.stringify(done)}`);
  assert.equal(done.error, undefined, `${context}: a cancelled run has no error: ${JSON.stringify(done.error)}`);
  assert.deepEqual(sectionsOf(events), [], `${context}: the Summary was cancelled before it was written`);

  const streamed = deltaText(events, 0);
  assert.ok(streamed.length > 0, `${context}: no Summary deltas before the cancel`);
  assert.ok(MODEL_REPLY.startsWith(streamed), `${context}: the Summary deltas are not a prefix of the model output`);
  assert.notEqual(streamed, MODEL_REPLY, `${context}: the whole Summary streamed before the cancel`);
}

test('owner cancels while the summary streams', async () => {
  const user = uniqueUser('owner');
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);

  const run = await startAgent(socket, 'report', { text: TEXT });
  await cancelMidSummary(inbox, socket, run.id);
  const events = await waitForStream(inbox, run.id);

  assertCancelledMidSummary(events, 'cancelled run');
  await fails(socket, 'agent:cancel', { run_id: run.id }, 'conflict');
  await assertStoredRunMatches(run.id, user, events, 'cancelled run');
});

test('room member cancels the owner run', async () => {
  const room = uniqueRoom('cancel-stream');
  const owner = await connectAs(uniqueUser('owner'));
  const member = await connectAs(uniqueUser('member'));
  const ownerInbox = new Inbox(owner);
  const memberInbox = new Inbox(member);
  await join(owner, room);
  await join(member, room);

  const run = await startAgent(owner, 'report', { text: TEXT }, room);
  await cancelMidSummary(ownerInbox, member, run.id);
  const ownerEvents = await waitForStream(ownerInbox, run.id);
  // The run has ended, so the member's events are due; a shorter wait suffices.
  const memberEvents = await waitForStream(memberInbox, run.id, EVENT_TIMEOUT_MS);

  assertCancelledMidSummary(ownerEvents, 'owner');
  assert.deepEqual(memberEvents, ownerEvents, 'owner and member should see the same cancelled run');
});
