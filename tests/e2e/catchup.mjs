// A reader that keeps leaving and rejoining with since_seq while others send gets every
// message exactly once across the `missed` lists and the live message:new events.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Inbox, assertConsecutive, connectAs, connected, disconnected, join, ok, send, sleep, uniqueRoom, uniqueUser,
} from './lib.mjs';

const WRITERS = 3;
const MESSAGES_EACH = 150;
const TOTAL = WRITERS * MESSAGES_EACH;
const MAX_ROUNDS = 400;

function randomPause(maxMs) {
  return sleep(Math.floor(Math.random() * maxMs));
}

async function writeSlowly(socket, room, label) {
  for (let index = 0; index < MESSAGES_EACH; index += 1) {
    await send(socket, room, `${label} ${index}`, `${label}-${index}`);
    await randomPause(12);
  }
}

/** What one reader got: for each seq, where it came from (live or missed, and in which round). */
class Tally {
  constructor(socket) {
    this.sources = new Map();
    this.highest = 0;
    this.rounds = 0;
    this.live = 0;
    this.missed = 0;
    this.inRoom = false;
    this.joining = false;
    this.outsideRoom = [];
    socket.on('message:new', (message) => {
      if (!this.inRoom) {
        this.outsideRoom.push(message.seq);
      }
      this.live += 1;
      this.add(message.seq, this.joining ? 'live before the join ack' : 'live');
    });
  }

  add(seq, source) {
    const seen = this.sources.get(seq) ?? [];
    seen.push(`${source} in round ${this.rounds}`);
    this.sources.set(seq, seen);
    this.highest = Math.max(this.highest, seq);
  }

  /** Join `room` with since_seq = the highest seq seen, and count the ack's `missed`. */
  async join(socket, room) {
    this.inRoom = true;
    this.joining = true;
    const ack = await join(socket, room, this.highest);
    this.joining = false;
    this.addMissed(ack.missed);
  }

  addMissed(messages) {
    this.missed += messages.length;
    for (const message of messages) {
      this.add(message.seq, 'missed');
    }
  }

  has(seq) {
    return this.sources.has(seq);
  }

  /** Return a description of each way the reader did not get seqs 1..total exactly once. */
  problems(total) {
    const found = [];
    if (this.outsideRoom.length > 0) {
      found.push(`message:new arrived after leaving the room: seqs ${this.outsideRoom.join(', ')}`);
    }
    for (const [seq, seen] of this.sources) {
      if (seen.length > 1) {
        found.push(`seq ${seq} arrived ${seen.length} times: ${seen.join(', ')}`);
      }
    }
    for (let seq = 1; seq <= total; seq += 1) {
      if (!this.sources.has(seq)) {
        found.push(`seq ${seq} never arrived`);
      }
    }
    return found;
  }

  assertExactlyOnce(total, context) {
    assert.deepEqual(this.problems(total), [], `${context}: the union of missed and live is not 1..${total} once each`);
  }
}

async function rejoinByLeaving(socket, room, tally, writersDone) {
  while (!writersDone.value && tally.rounds < MAX_ROUNDS) {
    await tally.join(socket, room);
    await randomPause(20);
    await ok(socket, 'room:leave', { room });
    tally.inRoom = false;
    tally.rounds += 1;
  }
}

async function rejoinByReconnecting(socket, room, tally, writersDone) {
  while (!writersDone.value && tally.rounds < MAX_ROUNDS) {
    socket.connect();
    await connected(socket);
    await tally.join(socket, room);
    await randomPause(20);
    socket.disconnect();
    tally.inRoom = false;
    await disconnected(socket);
    tally.rounds += 1;
  }
}

/** Open a reader that rejoins by leaving (`leave`) or by reconnecting (`reconnect`). */
async function openReader(kind) {
  const socket = await connectAs(uniqueUser(kind));
  const tally = new Tally(socket);
  if (kind === 'reconnect') {
    socket.disconnect();
    await disconnected(socket);
  }
  return { kind, socket, tally };
}

async function finalJoin({ kind, socket, tally }, room) {
  if (kind === 'reconnect') {
    socket.connect();
    await connected(socket);
  }
  await tally.join(socket, room);
}

test('rejoining readers miss nothing', async () => {
  const room = uniqueRoom('catchup');
  const writers = [];
  for (let index = 0; index < WRITERS; index += 1) {
    const socket = await connectAs(uniqueUser('writer'));
    await join(socket, room);
    writers.push(socket);
  }
  const steady = await connectAs(uniqueUser('steady'));
  const steadyInbox = new Inbox(steady);
  await join(steady, room);
  const readers = [];
  for (const kind of ['leave', 'reconnect', 'leave', 'reconnect']) {
    readers.push(await openReader(kind));
  }

  const writersDone = { value: false };
  const writing = Promise.all(writers.map((socket, index) => writeSlowly(socket, room, `w${index}`)))
    .finally(() => { writersDone.value = true; });
  await Promise.all([
    writing,
    ...readers.map(({ kind, socket, tally }) => (kind === 'leave'
      ? rejoinByLeaving(socket, room, tally, writersDone)
      : rejoinByReconnecting(socket, room, tally, writersDone))),
  ]);

  // Every message is stored and broadcast before its ack, so one last join completes the picture.
  for (const reader of readers) {
    await finalJoin(reader, room);
  }

  await steadyInbox.waitForCount('message:new', TOTAL);
  assertConsecutive(steadyInbox.of('message:new').map((message) => message.seq), 1, TOTAL, 'the steady reader');

  const problems = [];
  for (const [index, { kind, tally }] of readers.entries()) {
    const context = `reader ${index} (rejoins by ${kind === 'leave' ? 'leaving' : 'reconnecting'})`;
    console.log(`# ${context}: ${tally.rounds} rounds, ${tally.live} live, ${tally.missed} missed`);
    problems.push(...tally.problems(TOTAL).map((problem) => `${context}: ${problem}`));
    // Guards against a pass that exercised nothing, e.g. when the writers finished before any rejoin.
    assert.ok(tally.rounds >= 5, `${context}: only ${tally.rounds} rounds ran while the writers sent`);
  }
  assert.deepEqual(problems, [], `the union of missed and live should be seqs 1..${TOTAL}, each once`);
});

test('join while a burst is in flight', async () => {
  const room = uniqueRoom('burst');
  const writer = await connectAs(uniqueUser('writer'));
  await join(writer, room);
  let lastSeq = (await send(writer, room, 'before the burst')).seq;

  for (let round = 0; round < 10; round += 1) {
    const reader = await connectAs(uniqueUser('reader'));
    const tally = new Tally(reader);
    for (let seq = 1; seq <= lastSeq; seq += 1) {
      tally.add(seq, 'known before joining');
    }

    // Start 30 sends and the join at the same moment, so some commits race the join's read.
    const burst = Promise.all(Array.from({ length: 30 }, (_, index) => send(writer, room, `r${round} ${index}`)));
    await tally.join(reader, room);
    const sent = await burst;

    lastSeq = Math.max(...sent.map((message) => message.seq));
    await waitForSeq(tally, lastSeq);
    tally.assertExactlyOnce(lastSeq, `round ${round}`);
    reader.disconnect();
  }
});

async function waitForSeq(tally, seq) {
  const deadline = Date.now() + 15_000;
  while (!tally.has(seq)) {
    if (Date.now() > deadline) {
      throw new Error(`seq ${seq} never reached the reader, neither in missed nor live`);
    }
    await sleep(20);
  }
}
