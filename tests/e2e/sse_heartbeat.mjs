// An idle event stream sends heartbeat comment lines and still delivers the events that follow.
//
// The server sends a heartbeat after 15 s without events (HUDDLE_SSE_HEARTBEAT_SECONDS, default
// 15). To keep a stream idle that long, this scenario starts 8 reports on a page that takes 9 s to
// load. With 4 agent slots they keep every slot busy for two rounds, about 18 s, so one more report
// waits in the queue. After the first heartbeat the scenario cancels the fillers.
// NOTE: this relies on HUDDLE_AGENT_CONCURRENCY being at most 4, the default. With more slots the
// queued report can start before the first heartbeat, and the scenario fails.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  HUDDLE_URL, Inbox, RUN_TIMEOUT_MS, connectAs, http, pageUrl, request, startReport, tokenFor, uniqueUser,
} from './lib.mjs';

const FILLERS = 8;
// The server limits how many runs one user has in progress, so the fillers belong to several users.
const FILLERS_PER_USER = 2;
const HEARTBEAT_WAIT_MS = 45_000;

/** Reader of a response body, one line at a time. `next()` returns undefined at the end. */
class LineReader {
  constructor(body) {
    this.reader = body.getReader();
    this.decoder = new TextDecoder();
    this.lines = [];
    this.partial = '';
  }

  async next() {
    while (this.lines.length === 0) {
      const { value, done } = await this.reader.read();
      if (done) {
        return undefined;
      }
      const parts = (this.partial + this.decoder.decode(value, { stream: true })).split('\n');
      this.partial = parts.pop();
      this.lines.push(...parts);
    }
    return this.lines.shift();
  }
}

async function cancelAll(fillers) {
  const acks = await Promise.all(fillers.map(({ socket, run }) =>
    request(socket, 'agent:cancel', { run_id: run.id })));
  for (const ack of acks) {
    // A filler that already ended gets conflict, which is expected here.
    assert.ok(ack.ok || ack.error?.code === 'conflict', `cancelling a filler failed: ${JSON.stringify(ack)}`);
  }
}

test('idle stream sends heartbeats', { timeout: 120_000 }, async () => {
  const token = tokenFor(uniqueUser('heartbeat'));
  const fillers = [];
  let owner;
  for (let index = 0; index < FILLERS; index += 1) {
    if (index % FILLERS_PER_USER === 0) {
      const socket = await connectAs(uniqueUser('filler'));
      owner = { socket, inbox: new Inbox(socket) };
    }
    const run = await startReport(owner.socket, { url: pageUrl(`/slow?delay=9&filler=${index}`) });
    fillers.push({ ...owner, run });
  }
  const created = await http('/api/reports', {
    method: 'POST', token, body: { text: 'Snow leopards live in the high mountains of Central Asia.' },
  });
  assert.equal(created.status, 201, created.text);
  const runId = created.json.run.id;

  const controller = new AbortController();
  let timer = setTimeout(() => controller.abort(), HEARTBEAT_WAIT_MS);
  try {
    const response = await fetch(`${HUDDLE_URL}/api/reports/${runId}/events`, {
      headers: { Authorization: `Bearer ${token}` }, signal: controller.signal,
    });
    assert.equal(response.status, 200);
    const polled = await http(`/api/reports/${runId}`, { token });
    assert.equal(polled.json.status, 'queued',
      `the report should wait behind ${FILLERS} slow fillers; it is ${polled.json.status}`);

    const lines = new LineReader(response.body);
    const beforeHeartbeat = [];
    let line = await lines.next().catch((error) => {
      throw new Error(`the stream failed before any line arrived: ${error.message}`);
    });
    while (line !== undefined && !line.startsWith(':')) {
      beforeHeartbeat.push(line);
      line = await lines.next().catch((error) => {
        throw new Error(`no heartbeat comment within ${HEARTBEAT_WAIT_MS} ms on an idle stream: ${error.message}`);
      });
    }
    assert.notEqual(line, undefined, 'the stream ended without a heartbeat comment');
    assert.deepEqual(beforeHeartbeat.filter((text) => text.startsWith('data:')), [],
      'a queued run should send no events before it starts');

    clearTimeout(timer);
    timer = setTimeout(() => controller.abort(), RUN_TIMEOUT_MS);
    await cancelAll(fillers);

    const data = [];
    for (line = await lines.next(); line !== undefined; line = await lines.next()) {
      if (line.startsWith('data:')) {
        data.push(JSON.parse(line.slice(5)));
      }
    }
    assert.equal(data.at(-1)?.type, 'done', 'the stream should continue after heartbeats and end with done');
    assert.equal(data.at(-1).status, 'completed');
  } finally {
    clearTimeout(timer);
    await cancelAll(fillers);
  }

  for (const { inbox, run } of fillers) {
    await inbox.waitFor('agent:done', (event) => event.run_id === run.id, 30_000);
  }
});
