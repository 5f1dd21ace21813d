// Bad input of every kind gets an error ack with the right code and never closes the socket.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  ERROR_CODES, Inbox, assertError, connectAs, join, ok, request, send, uniqueRoom, uniqueUser,
} from './lib.mjs';

const room = uniqueRoom('bad');
const otherRoom = uniqueRoom('bad-other');
const longestName = 'r'.repeat(64);

const INVALID_ROOM_NAMES = [
  '', 'r'.repeat(65), 'has space', 'slash/room', 'émoji-😀', 'semi;colon', 'new\nline', 'star*', 'q?',
];

// Each case is [event, payload, expected code]. The socket has joined `room` before these run.
const CASES = [
  ...INVALID_ROOM_NAMES.map((name) => ['room:join', { room: name }, 'invalid_argument']),
  ['room:join', {}, 'invalid_argument'],
  ['room:join', { room: 42 }, 'invalid_argument'],
  ['room:join', { room: null }, 'invalid_argument'],
  ['room:join', { room, since_seq: -1 }, 'invalid_argument'],
  ['room:join', { room, since_seq: 'ten' }, 'invalid_argument'],
  ['room:join', { room, since_seq: 1.5 }, 'invalid_argument'],
  ['room:join', { room, since_seq: '5' }, 'invalid_argument'],

  ...INVALID_ROOM_NAMES.map((name) => ['room:leave', { room: name }, 'invalid_argument']),
  ['room:leave', {}, 'invalid_argument'],
  ['room:leave', { room: otherRoom }, 'not_found'],

  ['room:history', {}, 'invalid_argument'],
  ['room:history', { room: 'bad room' }, 'invalid_argument'],
  ['room:history', { room, after_seq: 1, before_seq: 10 }, 'invalid_argument'],
  ['room:history', { room, after_seq: 0, before_seq: 0 }, 'invalid_argument'],
  ['room:history', { room, limit: 201 }, 'invalid_argument'],
  ['room:history', { room, limit: 0 }, 'invalid_argument'],
  ['room:history', { room, limit: -5 }, 'invalid_argument'],
  ['room:history', { room, limit: 'all' }, 'invalid_argument'],
  ['room:history', { room, after_seq: -1 }, 'invalid_argument'],
  ['room:history', { room, before_seq: 'last' }, 'invalid_argument'],

  ['message:send', { room, text: '', client_id: 'empty' }, 'invalid_argument'],
  ['message:send', { room, client_id: 'no-text' }, 'invalid_argument'],
  ['message:send', { room, text: 'no client id' }, 'invalid_argument'],
  ['message:send', { room, text: 'empty client id', client_id: '' }, 'invalid_argument'],
  ['message:send', { text: 'no room', client_id: 'no-room' }, 'invalid_argument'],
  ['message:send', { room, text: 42, client_id: 'numeric' }, 'invalid_argument'],
  ['message:send', { room, text: ['a'], client_id: 'array' }, 'invalid_argument'],
  ['message:send', { room, text: 'object id', client_id: { id: 1 } }, 'invalid_argument'],
  ['message:send', { room: 'bad room', text: 'hi', client_id: 'bad-room' }, 'invalid_argument'],
  ['message:send', { room: otherRoom, text: 'not joined', client_id: 'stranger' }, 'forbidden'],
  ['message:send', { room, text: 'x'.repeat(16 * 1024 + 1), client_id: 'large' }, 'payload_too_large'],
  ['message:send', { room, text: 'ü'.repeat(8 * 1024 + 1), client_id: 'wide' }, 'payload_too_large'],

  ['typing', { room }, 'invalid_argument'],
  ['typing', { room, typing: 'yes' }, 'invalid_argument'],
  ['typing', { room, typing: 1 }, 'invalid_argument'],
  ['typing', { room, typing: null }, 'invalid_argument'],
  ['typing', { typing: true }, 'invalid_argument'],

  ['agent:start', {}, 'invalid_argument'],
  ['agent:start', { agent: 'report' }, 'invalid_argument'],
  ['agent:start', { agent: 'no-such-agent', input: { text: 'hello' } }, 'not_found'],
  ['agent:start', { agent: 'report', input: { url: 'http://127.0.0.1/', text: 'both' } }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: {} }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: { url: 'ftp://127.0.0.1/file.html' } }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: { url: 'javascript:alert(1)' } }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: { url: 'file:///etc/passwd' } }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: { url: '/relative/path' } }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: { url: 42 } }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: { text: '' } }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: 'just a string' }, 'invalid_argument'],
  ['agent:start', { agent: 'report', input: { text: 'hi' }, room: 'bad room' }, 'invalid_argument'],

  ['agent:subscribe', {}, 'invalid_argument'],
  ['agent:subscribe', { run_id: 'no-such-run', since_seq: 0 }, 'not_found'],
  ['agent:subscribe', { run_id: 'no-such-run', since_seq: -1 }, 'invalid_argument'],
  ['agent:cancel', {}, 'invalid_argument'],
  ['agent:cancel', { run_id: 'no-such-run' }, 'not_found'],
];

const NON_OBJECT_PAYLOADS = [['a string', 'lobby'], ['a number', 7], ['null', null], ['an array', [room]], ['true', true]];

async function openSocket() {
  const socket = await connectAs(uniqueUser('bad'));
  await join(socket, room);
  return socket;
}

async function assertStillUsable(socket, context) {
  assert.equal(socket.connected, true, `${context}: the socket was disconnected`);
  const message = await send(socket, room, `still connected after ${context}`);
  assert.equal(message.room, room);
}

test('each bad payload gets its error code', async () => {
  const socket = await openSocket();
  const failures = [];

  for (const [event, payload, code] of CASES) {
    const ack = await request(socket, event, payload);
    const matches = ack?.ok === false && ack.error?.code === code && typeof ack.error.message === 'string';
    if (!matches) {
      failures.push(`${event} ${JSON.stringify(payload).slice(0, 120)}: expected ${code}, got ${JSON.stringify(ack)}`);
    }
  }

  assert.deepEqual(failures, [], `${failures.length} of ${CASES.length} cases got the wrong ack`);
  await assertStillUsable(socket, 'all bad payloads');
});

test('longest valid room name', async () => {
  const socket = await openSocket();

  const ack = await join(socket, longestName);
  assert.equal(ack.room, longestName);

  const allowed = await join(socket, 'A-z_0.9:x');
  assert.equal(allowed.room, 'A-z_0.9:x');
});

test('payload that is not an object', async () => {
  const socket = await openSocket();

  for (const event of ['room:join', 'message:send', 'room:history', 'agent:start']) {
    for (const [label, payload] of NON_OBJECT_PAYLOADS) {
      const ack = await request(socket, event, payload);
      assertError(ack, 'invalid_argument', `${event} with ${label}`);
    }
    const empty = await request(socket, event);
    assertError(empty, 'invalid_argument', `${event} without a payload`);
  }

  await assertStillUsable(socket, 'non-object payloads');
});

test('unknown event with an ack', async () => {
  const socket = await openSocket();

  for (const event of ['room:destroy', 'message:delete', 'hello', 'agent:list']) {
    const ack = await request(socket, event, { room });
    assertError(ack, 'invalid_argument', `unknown event ${event}`);
  }

  await assertStillUsable(socket, 'unknown events');
});

test('bad events without an ack', async () => {
  const socket = await openSocket();
  const inbox = new Inbox(socket);

  socket.emit('room:join', { room: 'bad room' });
  socket.emit('message:send', 'not an object');
  socket.emit('no-such-event', { anything: true });
  socket.emit('message:send', { room, text: '', client_id: 'x' });
  socket.emit('typing');

  // Two round trips give the server time to act on the bad events before the last check.
  await assertStillUsable(socket, 'events without an ack');
  await assertStillUsable(socket, 'events without an ack, second check');
  assert.deepEqual(inbox.of('error'), [], 'the server sent an error event');
});

test('error acks carry known codes', async () => {
  const socket = await openSocket();

  const samples = await Promise.all([
    request(socket, 'room:join', { room: '' }),
    request(socket, 'room:leave', { room: otherRoom }),
    request(socket, 'message:send', { room: otherRoom, text: 'x', client_id: 'x' }),
    request(socket, 'unknown:event', {}),
  ]);

  for (const ack of samples) {
    assert.equal(ack.ok, false);
    assert.ok(ERROR_CODES.includes(ack.error?.code), `unknown error code in ${JSON.stringify(ack)}`);
    assert.equal(typeof ack.error.message, 'string');
  }
});

test('error then success on one socket', async () => {
  const socket = await openSocket();

  const rejected = await request(socket, 'message:send', { room, text: '', client_id: 'fix-me' });
  assertError(rejected, 'invalid_argument', 'empty text');
  const accepted = await ok(socket, 'message:send', { room, text: 'fixed', client_id: 'fix-me' });

  assert.equal(accepted.duplicate, false, 'a rejected send must not reserve its client_id');
  assert.equal(accepted.message.text, 'fixed');
});
