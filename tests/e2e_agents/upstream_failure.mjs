// A report whose model requests fail (rate limits, server errors, a cut or malformed stream, a
// model that stops sending) ends in the expected state. Its events have no gap, and the
// sections finished before the failure stay readable over HTTP and SSE.
//
// tests/test_e2e_agents.py stages the failure in the fake model and sets:
//   EXPECTED_STATUS       `completed` or `failed`
//   EXPECTED_ERROR_CODE   the error code of a failed run
//   EXPECTED_SECTIONS     JSON list of the titles of the sections the run finished
//   EXPECTED_PARTIAL      text streamed for the section that was being written when the run failed
//   EXPECTED_USAGE        JSON usage of the run, or null when no model request completed

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Inbox, connectAs, uniqueUser } from '../e2e/lib.mjs';
import {
  assertDeltasMatchSections, assertStoredRunMatches, assertStreamShape, deltaText, requireEnv, requireJsonEnv,
  sectionsOf, startAgent, waitForStream,
} from './agents_lib.mjs';

const EXPECTED_STATUS = requireEnv('EXPECTED_STATUS');
const EXPECTED_ERROR_CODE = process.env.EXPECTED_ERROR_CODE;
const EXPECTED_SECTIONS = requireJsonEnv('EXPECTED_SECTIONS');
const EXPECTED_PARTIAL = process.env.EXPECTED_PARTIAL ?? '';
const EXPECTED_USAGE = requireJsonEnv('EXPECTED_USAGE');

const TEXT = 'Bees visit thousands of flowers every day. They carry pollen between plants of the same '
  + 'kind. Many crops depend on bees for a good harvest.';

function assertOutcome(done) {
  assert.equal(done.status, EXPECTED_STATUS, `the run ended ${done.status}: ${JSON.stringify(done.error)}`);
  if (EXPECTED_STATUS === 'completed') {
    assert.equal(done.error, undefined, `a completed run has no error: ${JSON.stringify(done.error)}`);
    return;
  }
  assert.equal(done.error?.code, EXPECTED_ERROR_CODE, `unexpected error: ${JSON.stringify(done.error)}`);
  assert.equal(typeof done.error.message, 'string', 'the error has no message');
  assert.ok(done.error.message.length > 0, 'the error message is empty');
}

test('report ends as expected after upstream failures', async () => {
  const user = uniqueUser('unlucky');
  const socket = await connectAs(user);
  const inbox = new Inbox(socket);

  const run = await startAgent(socket, 'report', { text: TEXT });
  const events = await waitForStream(inbox, run.id);

  assertStreamShape(events, 'live run');
  assertOutcome(events.at(-1));
  assertDeltasMatchSections(events, 'live run');
  assert.deepEqual(sectionsOf(events).map((section) => section.title), EXPECTED_SECTIONS,
    'unexpected finished sections');
  if (EXPECTED_STATUS === 'failed') {
    const unfinished = EXPECTED_SECTIONS.length;
    assert.equal(deltaText(events, unfinished), EXPECTED_PARTIAL,
      `unexpected deltas for section ${unfinished}, the one being written when the run failed`);
  }

  const report = await assertStoredRunMatches(run.id, user, events, 'finished run');
  assert.deepEqual(report.usage, EXPECTED_USAGE, 'GET /api/reports should count the completed model requests');
});
