// The HTTP API: reports started and polled over HTTP, room history, health and metrics.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  assertHttpError, assertIsoUtc, connectAs, http, join, metricValue, pageUrl, send, signToken, tokenFor,
  uniqueRoom, uniqueUser, waitUntil,
} from './lib.mjs';

const SECTION_TITLES = ['Summary', 'Key points', 'Outline', 'Links', 'Statistics'];

async function createReport(token, body) {
  const response = await http('/api/reports', { method: 'POST', token, body });
  assert.equal(response.status, 201, `POST /api/reports returned ${response.status}: ${response.text}`);
  assert.equal(typeof response.json?.run?.id, 'string', `201 body has no run.id: ${response.text}`);
  assert.equal(typeof response.json.run.status, 'string', `201 body has no run.status: ${response.text}`);
  return response.json.run;
}

/** Poll GET /api/reports/{id} until the run has finished, and return the final body and every body seen. */
async function pollUntilFinished(token, runId) {
  const seen = [];
  const report = await waitUntil(async () => {
    const response = await http(`/api/reports/${runId}`, { token });
    assert.equal(response.status, 200, `GET /api/reports/${runId} returned ${response.status}: ${response.text}`);
    seen.push(response.json);
    return ['completed', 'failed', 'cancelled'].includes(response.json.status) ? response.json : undefined;
  }, `report ${runId} to finish`, { timeoutMs: 60_000, intervalMs: 50 });
  return { report, seen };
}

function assertReportShape(report, runId) {
  assert.equal(report.id, runId);
  for (const field of ['status', 'stage', 'progress', 'error', 'sections']) {
    assert.ok(field in report, `the report has no ${field} field: ${JSON.stringify(report)}`);
  }
  assert.equal(typeof report.progress, 'number');
  assert.ok(Array.isArray(report.sections), 'sections is not an array');
}

test('report by url, polled', async () => {
  const token = tokenFor(uniqueUser('poller'));

  const run = await createReport(token, { url: pageUrl('/article') });
  assert.ok(['queued', 'running'].includes(run.status), `a new run is ${run.status}`);
  const { report, seen } = await pollUntilFinished(token, run.id);

  assertReportShape(report, run.id);
  assert.equal(report.status, 'completed', `the report ended ${report.status}: ${JSON.stringify(report.error)}`);
  assert.equal(report.error, null, 'a completed report has an error');
  assert.equal(report.progress, 1);
  assert.deepEqual(report.sections.map((section) => section.title), SECTION_TITLES);
  assert.deepEqual(report.sections.map((section) => section.index), [0, 1, 2, 3, 4]);
  for (const section of report.sections) {
    assert.equal(typeof section.content, 'string');
    assert.ok(section.content.length > 0, `section ${section.title} is empty`);
  }
  assert.match(report.sections[0].content, /sourdough starter/i, 'the Summary should come from the page');

  const progress = seen.map((body) => body.progress);
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b), 'progress went backwards between polls');
  for (const body of seen) {
    assertReportShape(body, run.id);
  }
});

test('report by text, polled', async () => {
  const token = tokenFor(uniqueUser('poller'));
  const text = 'Honey bees communicate the direction of flowers with a waggle dance. '
    + 'The length of the dance tells the other bees how far away the flowers are.';

  const run = await createReport(token, { text });
  const { report } = await pollUntilFinished(token, run.id);

  assert.equal(report.status, 'completed');
  assert.match(report.sections[0].content, /waggle dance/, 'the Summary should come from the text');
});

test('failed report, polled', async () => {
  const token = tokenFor(uniqueUser('poller'));

  const run = await createReport(token, { url: pageUrl('/missing') });
  const { report } = await pollUntilFinished(token, run.id);

  assert.equal(report.status, 'failed');
  assert.equal(typeof report.error?.code, 'string', `a failed report has no error.code: ${JSON.stringify(report)}`);
  assert.equal(typeof report.error.message, 'string');
  assert.deepEqual(report.sections, []);
});

test('report requests that are rejected', async () => {
  const token = tokenFor(uniqueUser('rejected'));
  const post = (options) => http('/api/reports', { method: 'POST', ...options });

  assertHttpError(await post({ body: { url: pageUrl('/article') } }), 401, 'unauthorized', 'no token');
  assertHttpError(await post({ token: 'nonsense', body: { text: 'hi there' } }), 401, 'unauthorized', 'bad token');
  const expired = tokenFor(uniqueUser('expired'), { ttlSeconds: -60 });
  assertHttpError(await post({ token: expired, body: { text: 'hi there' } }), 401, 'unauthorized', 'expired token');
  const forged = signToken({ sub: 'x', exp: Math.floor(Date.now() / 1000) + 600 }, 'wrong-secret');
  assertHttpError(await post({ token: forged, body: { text: 'hi there' } }), 401, 'unauthorized', 'forged token');

  const badBodies = [
    ['empty object', {}],
    ['url and text', { url: pageUrl('/article'), text: 'both' }],
    ['ftp url', { url: 'ftp://127.0.0.1/page' }],
    ['relative url', { url: '/article' }],
    ['empty text', { text: '' }],
    ['numeric url', { url: 42 }],
    ['array body', [{ url: pageUrl('/article') }]],
    ['string body', 'just text'],
    ['invalid JSON', '{"url": '],
  ];
  for (const [label, body] of badBodies) {
    const headers = typeof body === 'string' ? { 'Content-Type': 'application/json' } : {};
    assertHttpError(await post({ token, body, headers }), 400, 'invalid_argument', `body: ${label}`);
  }
});

test('report lookups that fail', async () => {
  const ownerToken = tokenFor(uniqueUser('owner'));
  const run = await createReport(ownerToken, { text: 'Volcanoes form where magma rises through cracks in the crust.' });

  assertHttpError(await http('/api/reports/no-such-report', { token: ownerToken }), 404, 'not_found', 'unknown id');
  assertHttpError(await http(`/api/reports/${run.id}`), 401, 'unauthorized', 'poll without a token');
  const strangerToken = tokenFor(uniqueUser('stranger'));
  assertHttpError(await http(`/api/reports/${run.id}`, { token: strangerToken }), 404, 'not_found',
    "another user's report");
});

test('room messages over HTTP', async () => {
  const room = uniqueRoom('http-history');
  const user = uniqueUser('historian');
  const token = tokenFor(user);
  const socket = await connectAs(user);
  await join(socket, room);
  const sent = [];
  for (let index = 0; index < 10; index += 1) {
    sent.push(await send(socket, room, `entry ${index}`));
  }
  const get = (query) => http(`/api/rooms/${room}/messages${query}`, { token });

  const all = await get('?limit=200');
  assert.equal(all.status, 200, all.text);
  assert.equal(all.json.room, room);
  assert.deepEqual(all.json.messages, sent, 'HTTP history should equal the acked messages, oldest first');
  assert.equal(all.json.has_more, false);
  for (const message of all.json.messages) {
    assertIsoUtc(message.created_at, 'created_at over HTTP');
  }

  const after = await get('?after_seq=2&limit=3');
  assert.deepEqual(after.json.messages.map((message) => message.seq), [3, 4, 5]);
  assert.equal(after.json.has_more, true);

  const before = await get('?before_seq=9&limit=3');
  assert.deepEqual(before.json.messages.map((message) => message.seq), [6, 7, 8], 'before_seq pages are oldest first');
  assert.equal(before.json.has_more, true);

  const end = await get('?after_seq=8');
  assert.deepEqual(end.json.messages.map((message) => message.seq), [9, 10]);
  assert.equal(end.json.has_more, false);

  assertHttpError(await get('?after_seq=1&before_seq=5'), 400, 'invalid_argument', 'after_seq and before_seq');
  assertHttpError(await get('?limit=201'), 400, 'invalid_argument', 'limit over 200');
  assertHttpError(await get('?limit=lots'), 400, 'invalid_argument', 'limit that is not a number');
});

test('health check', async () => {
  const response = await http('/healthz');

  assert.equal(response.status, 200);
  assert.deepEqual(response.json, { status: 'ok' });
});

test('metrics in Prometheus text', async () => {
  const room = uniqueRoom('metrics');
  const socket = await connectAs(uniqueUser('metered'));
  await join(socket, room);
  const extra = await connectAs(uniqueUser('metered'));

  const before = await http('/metrics');
  assert.equal(before.status, 200);
  assert.match(before.headers.get('content-type') ?? '', /^text\/plain/, 'metrics should be served as text/plain');
  assert.match(before.text, /^# TYPE huddle_connections gauge$/m);
  assert.match(before.text, /^# TYPE huddle_messages_stored_total counter$/m);
  const connections = metricValue(before.text, 'huddle_connections');
  assert.ok(connections >= 2, `huddle_connections is ${connections} with two sockets open`);
  const stored = metricValue(before.text, 'huddle_messages_stored_total');

  await send(socket, room, 'one');
  await send(socket, room, 'two');
  const afterSends = await http('/metrics');
  assert.equal(metricValue(afterSends.text, 'huddle_messages_stored_total'), stored + 2);

  extra.disconnect();
  socket.disconnect();
  await waitUntil(async () => {
    const now = metricValue((await http('/metrics')).text, 'huddle_connections');
    return now <= connections - 2;
  }, 'huddle_connections to drop by the two closed sockets');
});
