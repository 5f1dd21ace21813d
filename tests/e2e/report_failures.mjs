// Reports on pages that cannot be fetched end `failed` with an error instead of hanging.

import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { test } from 'node:test';

import {
  Inbox, assertRunSequence, connectAs, fails, http, pageUrl, startReport, tokenFor, uniqueUser, waitForRun,
} from './lib.mjs';

/** Return a loopback port that nothing listens on, so connecting to it is refused. */
async function refusedPort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function assertFailed(events, context) {
  assertRunSequence(events, context);
  const done = events.at(-1);
  assert.equal(done.status, 'failed', `${context}: run ended ${done.status}, expected failed`);
  assert.equal(typeof done.error?.code, 'string', `${context}: agent:done has no error.code: ${JSON.stringify(done)}`);
  assert.ok(done.error.code.length > 0, `${context}: error.code is empty`);
  assert.equal(typeof done.error.message, 'string', `${context}: agent:done has no error.message`);
  assert.ok(done.error.message.length > 0, `${context}: error.message is empty`);

  const sections = events.filter((event) => event.event === 'agent:section');
  assert.deepEqual(sections, [], `${context}: a failed fetch still produced sections`);
  const stages = events.filter((event) => event.event === 'agent:stage').map((event) => event.stage);
  assert.ok(stages.includes('fetching'), `${context}: no fetching stage before the failure: ${stages.join(', ')}`);
  return done;
}

async function failedReport(url, context) {
  const user = uniqueUser('failing');
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);

  const run = await startReport(socket, { url });
  const events = await waitForRun(inbox, run.id);
  const done = assertFailed(events, context);
  return { run, done, token: tokenFor(user) };
}

test('page that answers 404', async () => {
  const { run, done, token } = await failedReport(pageUrl('/missing'), '404 page');

  assert.match(done.error.message, /404/, `the error should name the HTTP status: ${done.error.message}`);

  const polled = await http(`/api/reports/${run.id}`, { token });
  assert.equal(polled.status, 200);
  assert.equal(polled.json.status, 'failed');
  assert.deepEqual(polled.json.error, done.error, 'GET /api/reports should show the same error as agent:done');
  assert.deepEqual(polled.json.sections, []);
});

test('port that refuses connections', async () => {
  const port = await refusedPort();

  const { done } = await failedReport(`http://127.0.0.1:${port}/article`, 'refused port');

  assert.ok(done.error.message.includes(String(port)) || done.error.message.includes('127.0.0.1'),
    `the error should name the address: ${done.error.message}`);
});

test('bad report input is rejected', async () => {
  const socket = await connectAs(uniqueUser('bad-report'));

  await fails(socket, 'agent:start', { agent: 'report', input: { url: pageUrl('/article'), text: 'both' } },
    'invalid_argument');
  await fails(socket, 'agent:start', { agent: 'report', input: { url: 'ftp://127.0.0.1/page' } }, 'invalid_argument');
  await fails(socket, 'agent:start', { agent: 'report', input: { url: 'not a url' } }, 'invalid_argument');
  await fails(socket, 'agent:start', { agent: 'summarise', input: { text: 'hello' } }, 'not_found');
  assert.equal(socket.connected, true);
});
