// The in-room assistant streams its reply to every member as message:delta and stores it as an
// ordinary message. A member who joins mid-reply gets the text so far in the join ack and the
// rest live. Any member can stop a reply.
//
// ASSISTANT_REPLY, when set, is the exact text the model streams (a server with the fake model).
// Without it the server has no model, and the assistant replies from the room's history.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Inbox, connectAs, fails, join, ok, send, uniqueRoom, uniqueUser } from '../e2e/lib.mjs';

const MODEL_REPLY = process.env.ASSISTANT_REPLY;
const ASSISTANT = { id: 'agent:assistant', name: 'assistant' };
const DELTAS_BEFORE_JOIN = 3;

const HISTORY = [
  'The kubernetes upgrade is planned for Monday morning.',
  'The kubernetes nodes in the second cluster need new disks first.',
  'Finance wants the cost estimate for the new disks by Friday.',
];

function deltasOf(inbox, streamId) {
  return inbox.of('message:delta', (payload) => payload.stream_id === streamId);
}

function replyOf(inbox, streamId) {
  return inbox.waitFor('message:new', (message) => message.client_id === streamId);
}

function assertDeltaIndexes(deltas, first, context) {
  assert.deepEqual(deltas.map((delta) => delta.index), deltas.map((_, position) => first + position),
    `${context}: delta indexes are not consecutive from ${first}`);
}

function assertDeltaShape(delta, room, context) {
  assert.equal(delta.room, room, `${context}: delta for another room`);
  assert.deepEqual(delta.user, ASSISTANT, `${context}: delta does not name the assistant`);
  assert.equal(typeof delta.delta, 'string', `${context}: delta without text`);
}

/** Join `room` as a new user, write the history, ask the assistant, and wait for its first deltas. */
async function askInNewRoom(prefix, question, deltasToWait) {
  const room = uniqueRoom(prefix);
  const asker = await connectAs(uniqueUser('ann'));
  const askerInbox = new Inbox(asker);
  await join(asker, room);
  for (const text of HISTORY) {
    await send(asker, room, text);
  }

  const questionMessage = await send(asker, room, question);
  const [first] = await askerInbox.waitForCount('message:delta', deltasToWait, (payload) => payload.room === room);
  return { room, asker, askerInbox, questionMessage, streamId: first.stream_id };
}

test('member joining mid-reply gets the whole reply', async () => {
  const { room, askerInbox, questionMessage, streamId } = await askInNewRoom(
    'assist-late', '@assistant summarize the room please', DELTAS_BEFORE_JOIN,
  );

  const late = await connectAs(uniqueUser('bob'));
  const lateInbox = new Inbox(late);
  const joined = await join(late, room);
  const resumed = await ok(late, 'message:resume', { room, stream_id: streamId, from_index: 0 });

  const streams = joined.streams.filter((stream) => stream.stream_id === streamId);
  assert.equal(streams.length, 1, `the join ack should list the reply in progress: ${JSON.stringify(joined.streams)}`);
  const [stream] = streams;
  assert.deepEqual(stream.user, ASSISTANT, 'the join ack should name the assistant');
  assert.ok(stream.next_index >= DELTAS_BEFORE_JOIN,
    `next_index ${stream.next_index} is behind the ${DELTAS_BEFORE_JOIN} deltas already sent`);
  const resumedText = resumed.deltas.map((delta) => delta.delta).join('');
  assert.ok(resumedText.startsWith(stream.text), 'message:resume from 0 should start with the join ack text');

  const reply = await replyOf(lateInbox, streamId);
  const askerReply = await replyOf(askerInbox, streamId);
  assert.deepEqual(askerReply, reply, 'both members should get the same stored reply');
  assert.deepEqual(reply.user, ASSISTANT, 'the stored reply should come from the assistant');
  assert.equal(reply.room, room);
  assert.equal(reply.seq, questionMessage.seq + 1, 'the reply should be the message after the question');
  assert.equal('status' in reply, false, `a complete reply has no status: ${JSON.stringify(reply)}`);
  if (MODEL_REPLY !== undefined) {
    assert.equal(reply.text, MODEL_REPLY, 'the stored reply should be the model output');
  }

  const askerDeltas = deltasOf(askerInbox, streamId);
  assertDeltaIndexes(askerDeltas, 0, 'asker');
  askerDeltas.forEach((delta) => assertDeltaShape(delta, room, 'asker'));
  assert.equal(askerDeltas.map((delta) => delta.delta).join(''), reply.text, 'the asker deltas should join to the reply');

  const lateDeltas = deltasOf(lateInbox, streamId);
  assertDeltaIndexes(lateDeltas, stream.next_index, 'late member');
  lateDeltas.forEach((delta) => assertDeltaShape(delta, room, 'late member'));
  assert.equal(stream.text + lateDeltas.map((delta) => delta.delta).join(''), reply.text,
    'join ack text and live deltas should join to the stored reply');

  const history = await ok(late, 'room:history', { room, after_seq: questionMessage.seq });
  assert.deepEqual(history.messages, [reply], 'room:history should hold the stored reply');
  await fails(late, 'message:resume', { room, stream_id: streamId }, 'not_found');
});

test('member stops a reply mid-stream', async () => {
  const room = uniqueRoom('assist-stop');
  const other = await connectAs(uniqueUser('bob'));
  const otherInbox = new Inbox(other);
  await join(other, room);
  const asker = await connectAs(uniqueUser('ann'));
  const askerInbox = new Inbox(asker);
  await join(asker, room);
  await send(asker, room, HISTORY[0]);

  await send(asker, room, '@assistant summarize what was said here');
  const [first] = await otherInbox.waitForCount('message:delta', 2, (payload) => payload.room === room);
  const streamId = first.stream_id;
  const stopped = await ok(other, 'message:stop', { room, stream_id: streamId });
  assert.equal(stopped.stream_id, streamId);

  const reply = await replyOf(askerInbox, streamId);
  const otherReply = await replyOf(otherInbox, streamId);
  assert.deepEqual(otherReply, reply, 'both members should get the same stopped reply');
  assert.equal(reply.status, 'stopped', `the reply should be stored as stopped: ${JSON.stringify(reply)}`);
  assert.deepEqual(reply.user, ASSISTANT);

  const askerDeltas = deltasOf(askerInbox, streamId);
  assertDeltaIndexes(askerDeltas, 0, 'asker');
  assert.ok(askerDeltas.length >= 2, `the asker got ${askerDeltas.length} deltas, the stopper saw at least 2`);
  assert.equal(askerDeltas.map((delta) => delta.delta).join(''), reply.text,
    'a stopped reply should keep exactly the text streamed before the stop');
  if (MODEL_REPLY !== undefined) {
    assert.ok(MODEL_REPLY.startsWith(reply.text), 'the stopped reply should be a prefix of the model output');
    assert.notEqual(reply.text, MODEL_REPLY, 'the reply was stopped before the model finished');
  }

  await fails(other, 'message:stop', { room, stream_id: streamId }, 'not_found');
});
