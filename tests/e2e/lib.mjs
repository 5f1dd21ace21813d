// Shared helpers for the end-to-end scenarios: tokens, connections, acks, event inboxes and HTTP.
//
// Every scenario reads HUDDLE_URL (the server, e.g. http://127.0.0.1:8799), HUDDLE_JWT_SECRET
// (the server's HS256 secret) and, where it fetches pages, PAGE_URL (the local page server).

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { after } from 'node:test';

import { io } from 'socket.io-client';

export const ACK_TIMEOUT_MS = 10_000;
export const EVENT_TIMEOUT_MS = 15_000;
export const RUN_TIMEOUT_MS = 60_000;

export const ERROR_CODES = [
  'invalid_argument', 'unauthorized', 'forbidden', 'not_found',
  'payload_too_large', 'rate_limited', 'conflict', 'internal',
];

export const HUDDLE_URL = requireEnv('HUDDLE_URL').replace(/\/+$/, '');
export const SECRET = requireEnv('HUDDLE_JWT_SECRET');

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`environment variable ${name} is missing; see tests/e2e/lib.mjs for what it holds`);
  }
  return value;
}

/** Return the URL of `path` on the local page server named by PAGE_URL. */
export function pageUrl(path) {
  const base = requireEnv('PAGE_URL').replace(/\/+$/, '');
  return `${base}${path}`;
}

// Tokens

/** Sign `claims` as an HS256 JWT. */
export function signToken(claims, secret = SECRET) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  const signature = createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

/** Build a token for user `sub`. A negative `ttlSeconds` gives an expired token. */
export function tokenFor(sub, { name = sub, roles = [], rooms, ttlSeconds = 3600, secret } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, name, roles, iat: now, exp: now + ttlSeconds };
  if (rooms !== undefined) {
    claims.rooms = rooms;
  }
  return signToken(claims, secret);
}

/** Return a user id that no other scenario or run uses. */
export function uniqueUser(prefix) {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** Return a room name (at most 64 characters) that no other scenario or run uses. */
export function uniqueRoom(prefix) {
  const room = `${prefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  assert.ok(room.length <= 64, `room name ${room} is longer than 64 characters; shorten the prefix`);
  return room;
}

// Connections

const openSockets = new Set();

after(closeAll);

/** Disconnect every socket opened through this module. */
export function closeAll() {
  for (const socket of openSockets) {
    socket.disconnect();
  }
  openSockets.clear();
}

function newSocket(auth, socketOptions = {}) {
  const socket = io(HUDDLE_URL, {
    forceNew: true,
    reconnection: false,
    timeout: EVENT_TIMEOUT_MS,
    ...socketOptions,
    auth,
  });
  openSockets.add(socket);
  return socket;
}

/** Wait until `socket` is connected, or reject with the connect_error it got. */
export function connected(socket, timeoutMs = EVENT_TIMEOUT_MS) {
  if (socket.connected) {
    return Promise.resolve(socket);
  }

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`socket did not connect to ${HUDDLE_URL} within ${timeoutMs} ms`));
    }, timeoutMs);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (error) => {
      cleanup();
      const detail = JSON.stringify(error.data ?? null);
      reject(new Error(`connection to ${HUDDLE_URL} failed: ${error.message} data=${detail}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    };

    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/**
 * Open a connection with `token` and wait until it is established. `socketOptions` go to io(),
 * e.g. `{transports: ['polling']}`.
 */
export async function connect(token, socketOptions = {}) {
  return connected(newSocket({ token }, socketOptions));
}

/** Open a connection as user `sub` with a fresh valid token, built from `tokenOptions` as in tokenFor. */
export async function connectAs(sub, tokenOptions = {}, socketOptions = {}) {
  return connect(tokenFor(sub, tokenOptions), socketOptions);
}

/** Open a connection with `auth` that the server must reject, and return the connect_error. */
export function expectConnectError(auth, timeoutMs = EVENT_TIMEOUT_MS) {
  const socket = newSocket(auth);

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.disconnect();
      reject(new Error(`neither connect nor connect_error within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => {
      clearTimeout(timer);
      socket.disconnect();
      reject(new Error(`the server accepted a connection with auth ${JSON.stringify(auth)}`));
    });
    socket.on('connect_error', (error) => {
      clearTimeout(timer);
      socket.disconnect();
      resolve(error);
    });
  });
}

/** Wait until the client sees `socket` disconnected, e.g. after closing it. */
export function disconnected(socket, timeoutMs = EVENT_TIMEOUT_MS) {
  if (!socket.connected) {
    return Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket still connected after ${timeoutMs} ms`)), timeoutMs);
    socket.once('disconnect', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// Acknowledgements

/** Emit `event` with `args` and return its ack, or reject when none arrives within ACK_TIMEOUT_MS. */
export async function request(socket, event, ...args) {
  try {
    return await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, ...args);
  } catch (error) {
    throw new Error(`no ack for ${event} ${shorten(JSON.stringify(args))} within ${ACK_TIMEOUT_MS} ms: ${error.message}`);
  }
}

/** Emit `event`, assert that its ack is `{ok: true}` and return the ack. */
export async function ok(socket, event, payload) {
  const ack = await request(socket, event, payload);
  assertOk(ack, `${event} ${shorten(JSON.stringify(payload))}`);
  return ack;
}

/** Emit `event`, assert that it fails with error `code` and return the ack. */
export async function fails(socket, event, payload, code) {
  const ack = await request(socket, event, payload);
  assertError(ack, code, `${event} ${shorten(JSON.stringify(payload))}`);
  return ack;
}

export function assertOk(ack, context) {
  assert.equal(ack?.ok, true, `${context} was rejected: ${shorten(JSON.stringify(ack))}`);
}

/** Assert that `ack` is `{ok: false, error: {code, message}}` with the given code. */
export function assertError(ack, code, context) {
  assert.equal(ack?.ok, false, `${context}: expected error ${code}, got ${shorten(JSON.stringify(ack))}`);
  assert.equal(ack.error?.code, code, `${context}: expected error ${code}, got ${JSON.stringify(ack.error)}`);
  assert.equal(typeof ack.error.message, 'string', `${context}: error.message is not a string`);
  assert.ok(ack.error.message.length > 0, `${context}: error.message is empty`);
}

function shorten(text, max = 200) {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** Join `room`, assert success and return the ack. */
export async function join(socket, room, sinceSeq) {
  const payload = sinceSeq === undefined ? { room } : { room, since_seq: sinceSeq };
  return ok(socket, 'room:join', payload);
}

/** Send `text` to `room` and return the stored message from the ack. */
export async function send(socket, room, text, clientId = `c-${randomBytes(6).toString('hex')}`) {
  const ack = await ok(socket, 'message:send', { room, text, client_id: clientId });
  return ack.message;
}

// Incoming events

/** Records every event a socket receives, so a check can never miss one that came early. */
export class Inbox {
  constructor(socket) {
    this.entries = [];
    this.waiters = new Set();
    socket.onAny((event, payload) => {
      this.entries.push({ event, payload });
      for (const waiter of [...this.waiters]) {
        waiter();
      }
    });
  }

  /** Return the payloads of `event` received so far that match `predicate`. */
  of(event, predicate = () => true) {
    return this.entries.filter((entry) => entry.event === event && predicate(entry.payload))
      .map((entry) => entry.payload);
  }

  /** Wait until `count` payloads of `event` match `predicate`, and return all that match. */
  waitForCount(event, count, predicate = () => true, timeoutMs = EVENT_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const matches = this.of(event, predicate);
        if (matches.length >= count) {
          this.waiters.delete(check);
          clearTimeout(timer);
          resolve(matches);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        const seen = this.of(event, predicate).length;
        const last = this.entries.slice(-5).map((entry) => `${entry.event} ${shorten(JSON.stringify(entry.payload))}`);
        reject(new Error(
          `waited ${timeoutMs} ms for ${count} ${event} event(s), got ${seen}; last events received:\n  ${last.join('\n  ')}`,
        ));
      }, timeoutMs);

      this.waiters.add(check);
      check();
    });
  }

  /** Wait for the first payload of `event` that matches `predicate`. */
  async waitFor(event, predicate = () => true, timeoutMs = EVENT_TIMEOUT_MS) {
    const matches = await this.waitForCount(event, 1, predicate, timeoutMs);
    return matches[0];
  }
}

/** Poll `condition` until it returns a truthy value, and return that value. */
export async function waitUntil(condition, description, { timeoutMs = EVENT_TIMEOUT_MS, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}`);
    }
    await sleep(intervalMs);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Checks shared by several scenarios

/** Assert that `seqs` is exactly first, first+1, ..., last in that order. */
export function assertConsecutive(seqs, first, last, context) {
  const expected = [];
  for (let seq = first; seq <= last; seq += 1) {
    expected.push(seq);
  }
  assert.deepEqual(seqs, expected, `${context}: seqs are not ${first}..${last} in order`);
}

/** Assert the fields and types of a message as the server sends it. */
export function assertMessageShape(message, { room, user, text, clientId }) {
  assert.equal(typeof message?.id, 'string', `message.id is missing: ${JSON.stringify(message)}`);
  assert.ok(message.id.length > 0, 'message.id is empty');
  assert.equal(message.room, room);
  assert.ok(Number.isInteger(message.seq), `message.seq is not an integer: ${message.seq}`);
  assert.ok(message.seq >= 1, `message.seq is not positive: ${message.seq}`);
  assert.deepEqual(message.user, user);
  assert.equal(message.text, text);
  assert.equal(message.client_id, clientId);
  assertIsoUtc(message.created_at, 'message.created_at');
}

/** Assert that `value` is an ISO 8601 UTC timestamp ending in Z. */
export function assertIsoUtc(value, context) {
  assert.equal(typeof value, 'string', `${context} is not a string: ${value}`);
  assert.match(value, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/, `${context} is not ISO 8601 UTC: ${value}`);
  assert.ok(!Number.isNaN(Date.parse(value)), `${context} does not parse as a date: ${value}`);
}

// Agent runs

export const FINISHED = ['completed', 'failed', 'cancelled'];
export const AGENT_EVENTS = ['agent:stage', 'agent:section', 'agent:done'];

/** Return the agent:* events of `runId` that `inbox` received, in arrival order. */
export function runEvents(inbox, runId) {
  return inbox.entries
    .filter((entry) => AGENT_EVENTS.includes(entry.event) && entry.payload?.run_id === runId)
    .map((entry) => ({ event: entry.event, ...entry.payload }));
}

/** Wait for the agent:done of `runId` and return all of that run's events. */
export async function waitForRun(inbox, runId, timeoutMs = RUN_TIMEOUT_MS) {
  await inbox.waitFor('agent:done', (payload) => payload.run_id === runId, timeoutMs);
  return runEvents(inbox, runId);
}

/** Start a report run and return the run from the ack. */
export async function startReport(socket, input, room) {
  const payload = room === undefined ? { agent: 'report', input } : { agent: 'report', input, room };
  const ack = await ok(socket, 'agent:start', payload);
  assert.equal(typeof ack.run?.id, 'string', `agent:start ack has no run.id: ${JSON.stringify(ack)}`);
  assert.equal(ack.run.agent, 'report');
  assert.equal(typeof ack.run.status, 'string', 'agent:start ack has no run.status');
  return ack.run;
}

/** Assert that the events of one run are numbered 1..n and end with exactly one agent:done. */
export function assertRunSequence(events, context) {
  assert.ok(events.length > 0, `${context}: no events`);
  assertConsecutive(events.map((event) => event.seq), 1, events.length, context);
  const done = events.filter((event) => event.event === 'agent:done');
  assert.equal(done.length, 1, `${context}: expected one agent:done, got ${done.length}`);
  assert.equal(events.at(-1).event, 'agent:done', `${context}: agent:done is not the last event`);
}

// HTTP

/** Send an HTTP request to the server and return the status, headers, text body and parsed JSON. */
export async function http(path, { method = 'GET', token, body, headers = {} } = {}) {
  const allHeaders = { ...headers };
  if (token !== undefined) {
    allHeaders.Authorization = `Bearer ${token}`;
  }
  let payload = body;
  if (body !== undefined && typeof body !== 'string') {
    payload = JSON.stringify(body);
    allHeaders['Content-Type'] = 'application/json';
  }

  const response = await fetch(`${HUDDLE_URL}${path}`, {
    method, headers: allHeaders, body: payload, signal: AbortSignal.timeout(ACK_TIMEOUT_MS),
  });
  const text = await response.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, json, text };
}

/** Assert an HTTP error response `{error: {code, message}}` with the given status and code. */
export function assertHttpError(response, status, code, context) {
  assert.equal(response.status, status, `${context}: expected HTTP ${status}, got ${response.status} ${response.text}`);
  assert.equal(response.json?.error?.code, code, `${context}: expected error ${code}, got ${response.text}`);
  assert.equal(typeof response.json.error.message, 'string', `${context}: error.message is not a string`);
}

/** Return the sum of every sample of metric `name` in Prometheus text, or undefined. */
export function metricValue(text, name) {
  let total;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) {
      continue;
    }
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (match && match[1] === name) {
      total = (total ?? 0) + Number(match[3]);
    }
  }
  return total;
}

/** Fetch /metrics and return the value of `name`. */
export async function readMetric(name) {
  const response = await http('/metrics');
  assert.equal(response.status, 200, `GET /metrics returned ${response.status}`);
  const value = metricValue(response.text, name);
  assert.notEqual(value, undefined, `/metrics has no sample named ${name}`);
  return value;
}
