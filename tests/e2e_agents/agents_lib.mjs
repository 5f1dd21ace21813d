// Helpers for the streaming agent scenarios in this folder, on top of ../e2e/lib.mjs.
//
// Besides the variables that lib.mjs reads, scenarios take their expectations from variables
// that tests/test_e2e_agents.py sets, because only the Python side controls the fake model.

import assert from 'node:assert/strict';
import { after } from 'node:test';

import { io } from 'socket.io-client';

import {
  EVENT_TIMEOUT_MS, HUDDLE_URL, RUN_TIMEOUT_MS, assertRunSequence, http, ok, tokenFor,
} from '../e2e/lib.mjs';

export const RUN_EVENTS = ['agent:stage', 'agent:delta', 'agent:section', 'agent:done'];

/** Return the value of environment variable `name`, or fail with what is missing. */
export function requireEnv(name) {
  const value = process.env[name];
  assert.ok(value, `environment variable ${name} is missing; tests/test_e2e_agents.py sets it`);
  return value;
}

/** Return environment variable `name` parsed as JSON. */
export function requireJsonEnv(name) {
  const text = requireEnv(name);
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`environment variable ${name} is not valid JSON (${error.message}): ${text}`);
  }
}

// Run events, with deltas

/** Return every event of `runId`, deltas included, in arrival order, each with its event name. */
export function streamEvents(inbox, runId) {
  return inbox.entries
    .filter((entry) => RUN_EVENTS.includes(entry.event) && entry.payload?.run_id === runId)
    .map((entry) => ({ event: entry.event, ...entry.payload }));
}

/** Wait for the agent:done of `runId` and return all of that run's events, deltas included. */
export async function waitForStream(inbox, runId, timeoutMs = RUN_TIMEOUT_MS) {
  await inbox.waitFor('agent:done', (payload) => payload.run_id === runId, timeoutMs);
  return streamEvents(inbox, runId);
}

/** Wait until `count` agent:delta events of `runId` with section index `index` have arrived. */
export function waitForDeltas(inbox, runId, index, count, timeoutMs = RUN_TIMEOUT_MS) {
  const matches = (payload) => payload.run_id === runId && payload.index === index;
  return inbox.waitForCount('agent:delta', count, matches, timeoutMs);
}

/** Return the concatenated deltas of section `index`. */
export function deltaText(events, index) {
  return events
    .filter((event) => event.event === 'agent:delta' && event.index === index)
    .map((event) => event.delta)
    .join('');
}

/** Return the agent:section events as {index, title, content}. */
export function sectionsOf(events) {
  return events
    .filter((event) => event.event === 'agent:section')
    .map(({ index, title, content }) => ({ index, title, content }));
}

/** Return the highest seq among `events`, or 0 when there are none. */
export function lastSeq(events) {
  return events.reduce((highest, event) => Math.max(highest, event.seq), 0);
}

/**
 * Assert that a run's events, deltas included, are numbered 1..n, end with one agent:done,
 * carry section indexes 0, 1, 2... in order, and that every delta belongs to the section that
 * follows it: a delta of index i comes after section i-1 and before section i.
 */
export function assertStreamShape(events, context) {
  assertRunSequence(events, context);

  const sections = events.filter((event) => event.event === 'agent:section');
  assert.deepEqual(sections.map((section) => section.index), sections.map((_, position) => position),
    `${context}: section indexes are not 0, 1, 2... in order`);

  let written = 0;
  for (const event of events) {
    if (event.event === 'agent:section') {
      written += 1;
    } else if (event.event === 'agent:delta') {
      assert.equal(event.index, written,
        `${context}: delta seq ${event.seq} has index ${event.index} but ${written} sections were written before it`);
      assert.equal(typeof event.delta, 'string', `${context}: delta seq ${event.seq} has no text`);
      assert.ok(event.delta.length > 0, `${context}: delta seq ${event.seq} is empty`);
      assert.equal(event.status, 'running', `${context}: delta seq ${event.seq} has status ${event.status}`);
    }
  }
}

/** Assert that the deltas of every finished section concatenate to its content, trimmed as the server trims it. */
export function assertDeltasMatchSections(events, context) {
  for (const section of sectionsOf(events)) {
    const streamed = deltaText(events, section.index);
    if (streamed.length > 0) {
      assert.equal(streamed.trim(), section.content,
        `${context}: the deltas of section ${section.index} (${section.title}) differ from its content`);
    }
  }
}

// Socket.IO

const otherServerSockets = new Set();

after(() => {
  for (const socket of otherServerSockets) {
    socket.disconnect();
  }
  otherServerSockets.clear();
});

/** Connect as `user` to the server at `url`, which need not be HUDDLE_URL, e.g. a second replica. */
export async function connectTo(url, user) {
  const socket = io(url, {
    forceNew: true, reconnection: false, timeout: EVENT_TIMEOUT_MS, auth: { token: tokenFor(user) },
  });
  otherServerSockets.add(socket);

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.disconnect();
      reject(new Error(`socket did not connect to ${url} within ${EVENT_TIMEOUT_MS} ms`));
    }, EVENT_TIMEOUT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('connect_error', (error) => {
      clearTimeout(timer);
      reject(new Error(`connection to ${url} failed: ${error.message} data=${JSON.stringify(error.data ?? null)}`));
    });
  });
}

/** Send agent:subscribe and check the ack's run against `runId`. */
export async function subscribe(socket, runId, sinceSeq) {
  const ack = await ok(socket, 'agent:subscribe', { run_id: runId, since_seq: sinceSeq });
  assert.equal(ack.run?.id, runId, `agent:subscribe ack names another run: ${JSON.stringify(ack.run)}`);
  assert.ok(Number.isInteger(ack.replayed), `agent:subscribe ack has no replayed count: ${JSON.stringify(ack)}`);
  return ack;
}

/** Start a run of `agent` and return the run from the ack. */
export async function startAgent(socket, agent, input, room) {
  const payload = room === undefined ? { agent, input } : { agent, input, room };
  const ack = await ok(socket, 'agent:start', payload);
  assert.equal(typeof ack.run?.id, 'string', `agent:start ack has no run.id: ${JSON.stringify(ack)}`);
  assert.equal(ack.run.agent, agent, `agent:start ack names agent ${ack.run.agent}, expected ${agent}`);
  return ack.run;
}

// HTTP

/** GET /api/reports/{id} as `user` and return the body, asserting HTTP 200. */
export async function fetchReport(runId, user) {
  const response = await http(`/api/reports/${runId}`, { token: tokenFor(user) });
  assert.equal(response.status, 200, `GET /api/reports/${runId} returned ${response.status}: ${response.text}`);
  return response.json;
}

/**
 * Read the run's SSE stream to its end as `user`, resuming after `lastEventId`, and return
 * its events in the Socket.IO form: `{event: 'agent:<type>', ...payload}`.
 */
export async function readEventStream(runId, user, lastEventId = 0) {
  const response = await fetch(`${HUDDLE_URL}/api/reports/${runId}/events`, {
    headers: { Authorization: `Bearer ${tokenFor(user)}`, 'Last-Event-ID': String(lastEventId) },
    signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
  });
  const body = await response.text();
  assert.equal(response.status, 200, `GET /api/reports/${runId}/events returned ${response.status}: ${body}`);
  return parseEventStream(body);
}

function parseEventStream(body) {
  const events = [];
  for (const block of body.split(/\r?\n\r?\n/)) {
    let id;
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith('id:')) {
        id = line.slice(3).trim();
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).trimStart());
      }
    }
    if (data.length === 0) {
      continue;
    }
    const { type, ...payload } = JSON.parse(data.join('\n'));
    assert.equal(id, String(payload.seq), `SSE id ${id} differs from the event's seq ${payload.seq}`);
    events.push({ event: `agent:${type}`, ...payload });
  }
  return events;
}

/** Assert what GET /api/reports/{id} and its SSE stream show for a finished run against its live events. */
export async function assertStoredRunMatches(runId, user, liveEvents, context) {
  const done = liveEvents.at(-1);
  const report = await fetchReport(runId, user);
  assert.equal(report.status, done.status, `${context}: GET shows status ${report.status}`);
  assert.deepEqual(report.error, done.error ?? null, `${context}: GET shows another error than agent:done`);
  assert.equal(report.last_seq, done.seq, `${context}: GET last_seq differs from agent:done's seq`);
  assert.deepEqual(report.sections, sectionsOf(liveEvents), `${context}: GET sections differ from the live sections`);

  const replayed = await readEventStream(runId, user);
  assert.deepEqual(replayed, liveEvents, `${context}: the SSE replay differs from the live events`);

  const middle = Math.floor(done.seq / 2);
  const resumed = await readEventStream(runId, user, middle);
  assert.deepEqual(resumed, liveEvents.slice(middle), `${context}: SSE resumed after seq ${middle} is not the rest`);
  return report;
}
