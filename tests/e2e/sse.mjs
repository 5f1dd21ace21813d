// Report progress as server-sent events: a real EventSource client, raw streams and
// resuming with Last-Event-ID.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EventSource } from 'eventsource';

import {
  EVENT_TIMEOUT_MS, HUDDLE_URL, RUN_TIMEOUT_MS, assertConsecutive, assertHttpError, http, pageUrl, tokenFor,
  uniqueUser, waitUntil,
} from './lib.mjs';

const EVENT_TYPES = ['stage', 'section', 'done'];

async function createReport(token, body) {
  const response = await http('/api/reports', { method: 'POST', token, body });
  assert.equal(response.status, 201, `POST /api/reports returned ${response.status}: ${response.text}`);
  return response.json.run;
}

function eventsPath(runId) {
  return `/api/reports/${runId}/events`;
}

/** Split an SSE body into its events, as {id, data} with data parsed as JSON, and its comment lines. */
function parseSse(body) {
  const events = [];
  const comments = [];
  for (const block of body.split(/\r?\n\r?\n/)) {
    const event = {};
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(':')) {
        comments.push(line);
      } else if (line.startsWith('id:')) {
        event.id = line.slice(3).trim();
      } else if (line.startsWith('data:')) {
        event.data = (event.data === undefined ? '' : `${event.data}\n`) + line.slice(5).trimStart();
      } else if (line.startsWith('retry:')) {
        event.retry = Number(line.slice(6).trim());
      }
    }
    if (event.data !== undefined) {
      events.push({ id: event.id, data: JSON.parse(event.data) });
    }
  }
  return { events, comments };
}

/** GET the event stream and read it to the end. The server closes it after the done event. */
async function readStream(runId, { token, query = '', lastEventId } = {}) {
  const headers = {};
  if (token !== undefined) {
    headers.Authorization = `Bearer ${token}`;
  }
  if (lastEventId !== undefined) {
    headers['Last-Event-ID'] = String(lastEventId);
  }
  const response = await fetch(`${HUDDLE_URL}${eventsPath(runId)}${query}`, {
    headers, signal: AbortSignal.timeout(RUN_TIMEOUT_MS),
  });
  const body = await response.text();
  return { status: response.status, headers: response.headers, body, ...parseSse(body) };
}

function assertEventData(events, runId, context) {
  for (const { id, data } of events) {
    assert.ok(EVENT_TYPES.includes(data.type), `${context}: unknown type in ${JSON.stringify(data)}`);
    assert.equal(data.run_id, runId, `${context}: event of another run`);
    assert.equal(String(data.seq), id, `${context}: id: ${id} differs from seq ${data.seq}`);
    assert.equal(typeof data.status, 'string', `${context}: no status in ${JSON.stringify(data)}`);
    assert.equal(typeof data.stage, 'string', `${context}: no stage in ${JSON.stringify(data)}`);
    assert.equal(typeof data.progress, 'number', `${context}: no progress in ${JSON.stringify(data)}`);
    if (data.type === 'section') {
      assert.equal(typeof data.title, 'string', `${context}: section without title`);
      assert.equal(typeof data.content, 'string', `${context}: section without content`);
      assert.ok(Number.isInteger(data.index), `${context}: section without index`);
    }
  }
  const types = events.map((event) => event.data.type);
  assert.equal(types.filter((type) => type === 'done').length, 1, `${context}: expected one done event`);
  assert.equal(types.at(-1), 'done', `${context}: the stream did not end with done`);
}

/** Follow a run with EventSource until it has closed for good, and return its messages and errors. */
function followWithEventSource(url, init) {
  const source = new EventSource(url, init);
  const messages = [];
  const errors = [];
  let opens = 0;

  const finished = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      source.close();
      reject(new Error(`EventSource still open after ${RUN_TIMEOUT_MS} ms; got ${messages.length} messages, `
        + `errors ${JSON.stringify(errors)}`));
    }, RUN_TIMEOUT_MS);
    source.onopen = () => {
      opens += 1;
    };
    source.onmessage = (event) => {
      messages.push({ id: event.lastEventId, data: JSON.parse(event.data) });
    };
    source.onerror = (event) => {
      errors.push({ code: event.code, message: event.message });
      if (source.readyState === EventSource.CLOSED) {
        clearTimeout(timer);
        resolve();
      }
    };
  });

  return finished.then(() => ({ messages, errors, opens }));
}

test('EventSource follows a report', async () => {
  const token = tokenFor(uniqueUser('sse'));
  const run = await createReport(token, { url: pageUrl('/slow?delay=2') });

  const url = `${HUDDLE_URL}${eventsPath(run.id)}?token=${encodeURIComponent(token)}`;
  const { messages, errors, opens } = await followWithEventSource(url);

  assertConsecutive(messages.map((message) => Number(message.id)), 1, messages.length, 'EventSource ids');
  assertEventData(messages, run.id, 'EventSource');
  assert.equal(messages.at(-1).data.status, 'completed');
  assert.ok(messages.some((message) => message.data.stage === 'fetching'), 'no fetching stage in the stream');
  const titles = messages.filter((message) => message.data.type === 'section').map((message) => message.data.title);
  assert.deepEqual(titles, ['Summary', 'Key points', 'Outline', 'Links', 'Statistics']);

  // After done the server closes the stream. EventSource reconnects with Last-Event-ID, and the
  // server's 204 makes it stop reconnecting.
  assert.ok(opens >= 1);
  assert.equal(errors.at(-1)?.code, 204, `the reconnect after done should get 204: ${JSON.stringify(errors)}`);
  assert.equal(new Set(messages.map((message) => message.id)).size, messages.length, 'an event arrived twice');
});

test('EventSource with a Bearer header', async () => {
  const token = tokenFor(uniqueUser('sse'));
  const run = await createReport(token, { text: 'Owls can turn their heads much further than most birds can.' });

  const withBearer = (input, init) => fetch(input, {
    ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` },
  });
  const { messages } = await followWithEventSource(`${HUDDLE_URL}${eventsPath(run.id)}`, { fetch: withBearer });

  assertEventData(messages, run.id, 'EventSource with Bearer');
  assertConsecutive(messages.map((message) => Number(message.id)), 1, messages.length, 'ids with Bearer');
});

test('stream headers and format', async () => {
  const token = tokenFor(uniqueUser('sse'));
  const run = await createReport(token, { url: pageUrl('/article') });

  const stream = await readStream(run.id, { token });

  assert.equal(stream.status, 200, stream.body);
  assert.match(stream.headers.get('content-type') ?? '', /^text\/event-stream/);
  assert.equal(stream.headers.get('cache-control'), 'no-cache');
  assert.equal(stream.headers.get('x-accel-buffering'), 'no');
  assertEventData(stream.events, run.id, 'raw stream');
  assertConsecutive(stream.events.map((event) => Number(event.id)), 1, stream.events.length, 'raw stream ids');
  for (const comment of stream.comments) {
    assert.match(comment, /^:/, 'a comment line must start with a colon');
  }

  const report = await http(`/api/reports/${run.id}`, { token });
  const sections = stream.events.filter((event) => event.data.type === 'section')
    .map(({ data }) => ({ index: data.index, title: data.title, content: data.content }));
  assert.deepEqual(sections, report.json.sections, 'streamed sections should equal the polled ones');
});

test('resume with Last-Event-ID', async () => {
  const token = tokenFor(uniqueUser('sse'));
  const run = await createReport(token, { url: pageUrl('/article') });
  const full = await readStream(run.id, { token });
  const last = full.events.length;

  const resumed = await readStream(run.id, { token, lastEventId: 3 });
  assert.equal(resumed.status, 200);
  assert.deepEqual(resumed.events, full.events.slice(3), 'a resume after 3 should send seq 4 to the end');

  const onlyDone = await readStream(run.id, { token, lastEventId: last - 1 });
  assert.deepEqual(onlyDone.events, [full.events.at(-1)]);

  const nothing = await readStream(run.id, { token, lastEventId: last });
  assert.equal(nothing.status, 204, `a finished run with nothing after Last-Event-ID should answer 204: ${nothing.body}`);
  assert.equal(nothing.body, '');
});

test('resume a live stream mid-way', async () => {
  const token = tokenFor(uniqueUser('sse'));
  const run = await createReport(token, { url: pageUrl('/slow?delay=2') });

  // Wait until the run is fetching the slow page, so the resumed stream has live events to follow.
  await waitUntil(async () => (await http(`/api/reports/${run.id}`, { token })).json?.stage === 'fetching',
    'the run to reach the fetching stage', { timeoutMs: EVENT_TIMEOUT_MS });
  const resumed = await readStream(run.id, { token, lastEventId: 1 });
  const full = await readStream(run.id, { token });

  assert.equal(resumed.status, 200);
  assert.equal(resumed.events[0]?.id, '2', 'the resumed stream should start right after Last-Event-ID');
  assert.deepEqual(resumed.events, full.events.slice(1), 'the resumed stream should have no gap or duplicate');
  assert.equal(full.events.at(-1).data.status, 'completed');
});

test('stream access errors', async () => {
  const owner = tokenFor(uniqueUser('owner'));
  const run = await createReport(owner, { text: 'Penguins cannot fly but they swim with great speed.' });

  assertHttpError(await http(eventsPath(run.id)), 401, 'unauthorized', 'stream without a token');
  assertHttpError(await http(`${eventsPath(run.id)}?token=forged`), 401, 'unauthorized', 'stream with a bad token');
  assertHttpError(await http(eventsPath('no-such-report'), { token: owner }), 404, 'not_found', 'unknown report');
  const stranger = tokenFor(uniqueUser('stranger'));
  assertHttpError(await http(eventsPath(run.id), { token: stranger }), 404, 'not_found', "another user's report");
});
