// Two replicas share PostgreSQL and Redis: HUDDLE_URL is replica A, where runs start, and
// REPLICA_B_URL is replica B. Members of a room connected to replica B follow a run started
// in that room on replica A, and a subscriber who reconnects to replica B mid-stream gets
// exactly the events it missed. The countdown plug-in agent streams one delta per number.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EVENT_TIMEOUT_MS, Inbox, connectAs, join, uniqueRoom, uniqueUser } from '../e2e/lib.mjs';
import {
  assertStreamShape, connectTo, lastSeq, requireEnv, startAgent, streamEvents, subscribe, waitForDeltas,
  waitForStream,
} from './agents_lib.mjs';

const REPLICA_B_URL = requireEnv('REPLICA_B_URL');
const COUNTDOWN = { from: 40, delay: 0.05 };
const DELTAS_BEFORE_JOIN = 3;

/** Connect `users` to replica B and join each to `room`; return their inboxes. */
async function membersOnReplicaB(room, ...users) {
  const inboxes = [];
  for (const user of users) {
    const socket = await connectTo(REPLICA_B_URL, user);
    inboxes.push({ socket, inbox: new Inbox(socket), joined: await join(socket, room) });
  }
  return inboxes;
}

test('room member on replica B gets a run started on replica A', async () => {
  const room = uniqueRoom('replica-run');
  const owner = await connectAs(uniqueUser('owner'));
  const ownerInbox = new Inbox(owner);
  await join(owner, room);
  const [member] = await membersOnReplicaB(room, uniqueUser('member'));

  const run = await startAgent(owner, 'countdown', COUNTDOWN, room);
  const ownerEvents = await waitForStream(ownerInbox, run.id);
  assertStreamShape(ownerEvents, 'owner on replica A');

  // The run has ended on replica A, so the member's events are due; a shorter wait suffices.
  const memberEvents = await waitForStream(member.inbox, run.id, EVENT_TIMEOUT_MS);
  assert.deepEqual(memberEvents, ownerEvents, 'the member on replica B should get every event of the room run');
});

test('member joining on replica B sees the run in progress', async () => {
  const room = uniqueRoom('replica-join');
  const owner = await connectAs(uniqueUser('owner'));
  const ownerInbox = new Inbox(owner);
  await join(owner, room);

  const run = await startAgent(owner, 'countdown', COUNTDOWN, room);
  await waitForDeltas(ownerInbox, run.id, 0, DELTAS_BEFORE_JOIN);
  const [late] = await membersOnReplicaB(room, uniqueUser('late'));

  const listed = late.joined.runs.filter((item) => item.id === run.id);
  assert.equal(listed.length, 1,
    `the join ack on replica B should list the run in progress: runs=${JSON.stringify(late.joined.runs)}`);

  await subscribe(late.socket, run.id, 0);
  const ownerEvents = await waitForStream(ownerInbox, run.id);
  const lateEvents = await waitForStream(late.inbox, run.id);
  assert.deepEqual(lateEvents, ownerEvents, 'subscribing on replica B should deliver every event once');
});

test('resubscribe on replica B after a disconnect from replica A', async () => {
  const user = uniqueUser('mover');
  const starter = await connectAs(user);
  const starterInbox = new Inbox(starter);
  const run = await startAgent(starter, 'countdown', COUNTDOWN);

  const viewer = await connectAs(user);
  const viewerInbox = new Inbox(viewer);
  await subscribe(viewer, run.id, 0);
  await waitForDeltas(viewerInbox, run.id, 0, DELTAS_BEFORE_JOIN);
  viewer.disconnect();
  const before = streamEvents(viewerInbox, run.id);
  const seen = lastSeq(before);
  await starterInbox.waitFor('agent:delta', (payload) => payload.run_id === run.id && payload.seq > seen + 1);

  const moved = await connectTo(REPLICA_B_URL, user);
  const movedInbox = new Inbox(moved);
  await subscribe(moved, run.id, seen);
  const after = await waitForStream(movedInbox, run.id);

  const expected = await waitForStream(starterInbox, run.id);
  assertStreamShape(expected, 'starter on replica A');
  assert.deepEqual(before, expected.slice(0, seen), 'the first connection got other events than the starter');
  assert.deepEqual(after, expected.slice(seen), `replica B should replay exactly the events after seq ${seen}`);
});
