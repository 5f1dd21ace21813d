// agent:cancel ends a running report with agent:done {status: "cancelled"}.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Inbox, assertRunSequence, connectAs, fails, http, join, ok, pageUrl, request, startReport, tokenFor, uniqueRoom,
  uniqueUser, waitForRun,
} from './lib.mjs';

// The page takes 8 s to load, so the run is still fetching when the cancel arrives.
const SLOW_PAGE = '/slow?delay=8';

async function startSlow(socket, inbox, room) {
  const run = await startReport(socket, { url: pageUrl(SLOW_PAGE) }, room);
  await inbox.waitFor('agent:stage', (event) => event.run_id === run.id && event.stage === 'fetching');
  return run;
}

function assertCancelled(events, context) {
  assertRunSequence(events, context);
  const done = events.at(-1);
  assert.equal(done.status, 'cancelled', `${context}: run ended ${done.status}: ${JSON.stringify(done)}`);
  const sections = events.filter((event) => event.event === 'agent:section');
  assert.deepEqual(sections, [], `${context}: a run cancelled while fetching produced sections`);
}

test('cancel a running report', async () => {
  const user = uniqueUser('canceller');
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);
  const run = await startSlow(socket, inbox);

  const ack = await ok(socket, 'agent:cancel', { run_id: run.id });
  assert.equal(ack.ok, true);

  const events = await waitForRun(inbox, run.id);
  assertCancelled(events, 'cancelled run');

  await fails(socket, 'agent:cancel', { run_id: run.id }, 'conflict');
  const polled = await http(`/api/reports/${run.id}`, { token: tokenFor(user) });
  assert.equal(polled.status, 200);
  assert.equal(polled.json.status, 'cancelled');
});

test('room members see the cancel', async () => {
  const room = uniqueRoom('cancel');
  const owner = await connectAs(uniqueUser('owner'));
  const member = await connectAs(uniqueUser('member'));
  const ownerInbox = new Inbox(owner);
  const memberInbox = new Inbox(member);
  await join(owner, room);
  await join(member, room);
  const run = await startSlow(owner, ownerInbox, room);

  await ok(owner, 'agent:cancel', { run_id: run.id });

  const ownerEvents = await waitForRun(ownerInbox, run.id);
  const memberEvents = await waitForRun(memberInbox, run.id);
  assertCancelled(memberEvents, 'room member');
  assert.deepEqual(memberEvents, ownerEvents);
});

test('stranger cannot cancel', async () => {
  const owner = await connectAs(uniqueUser('owner'));
  const ownerInbox = new Inbox(owner);
  const stranger = await connectAs(uniqueUser('stranger'));
  const run = await startSlow(owner, ownerInbox);

  await fails(stranger, 'agent:cancel', { run_id: run.id }, 'not_found');

  // The stranger's attempt changed nothing: the owner can still cancel.
  await ok(owner, 'agent:cancel', { run_id: run.id });
  const events = await waitForRun(ownerInbox, run.id);
  assertCancelled(events, 'run after a refused cancel');
});

test('cancel a finished run', async () => {
  const socket = await connectAs(uniqueUser('late'));
  const inbox = new Inbox(socket);

  const completed = await startReport(socket, { text: 'Glaciers move slowly downhill under their own great weight.' });
  const completedEvents = await waitForRun(inbox, completed.id);
  assert.equal(completedEvents.at(-1).status, 'completed');
  await fails(socket, 'agent:cancel', { run_id: completed.id }, 'conflict');

  const failed = await startReport(socket, { url: pageUrl('/missing') });
  const failedEvents = await waitForRun(inbox, failed.id);
  assert.equal(failedEvents.at(-1).status, 'failed');
  await fails(socket, 'agent:cancel', { run_id: failed.id }, 'conflict');

  await fails(socket, 'agent:cancel', { run_id: 'no-such-run' }, 'not_found');
});

test('cancel twice at once', async () => {
  const socket = await connectAs(uniqueUser('double'));
  const inbox = new Inbox(socket);
  const run = await startSlow(socket, inbox);

  const acks = await Promise.all([
    request(socket, 'agent:cancel', { run_id: run.id }),
    request(socket, 'agent:cancel', { run_id: run.id }),
  ]);

  const accepted = acks.filter((ack) => ack.ok);
  assert.ok(accepted.length >= 1, `neither cancel was accepted: ${JSON.stringify(acks)}`);
  for (const ack of acks.filter((item) => !item.ok)) {
    assert.equal(ack.error?.code, 'conflict', `a second cancel should be a conflict: ${JSON.stringify(ack)}`);
  }
  const events = await waitForRun(inbox, run.id);
  assertCancelled(events, 'run cancelled twice');
});
