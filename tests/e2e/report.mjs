// The report agent over Socket.IO: stages, sections computed from a local page, and room runs.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  FINISHED, Inbox, assertRunSequence, connectAs, join, pageUrl, runEvents, startReport, uniqueRoom, uniqueUser,
  waitForRun,
} from './lib.mjs';

const SECTION_TITLES = ['Summary', 'Key points', 'Outline', 'Links', 'Statistics'];
const URL_STAGES = ['fetching', 'extracting', 'analysing', 'writing'];
const TEXT_STAGES = ['extracting', 'analysing', 'writing'];

function collapse(text) {
  return text.replace(/\s+/g, ' ').trim();
}

function stripTags(html) {
  return collapse(html.replace(/<[^>]+>/g, ''));
}

/** Markdown escapes (\[, \*) are not part of the page's text. */
function unescapeMarkdown(text) {
  return text.replace(/\\(.)/g, '$1');
}

/** Fetch the article page and read its headings, links and sentences with plain patterns. */
async function readArticle(url) {
  const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  assert.equal(response.status, 200, `the page server did not serve ${url}`);
  const html = await response.text();

  const headings = [...html.matchAll(/<h([1-6])[^>]*>([\s\S]*?)<\/h\1>/g)].map((match) => stripTags(match[2]));
  const links = [...html.matchAll(/<a\s+href="([^"]+)"[^>]*>([\s\S]*?)<\/a>/g)]
    .map((match) => ({ url: new URL(match[1], url).href, text: stripTags(match[2]) }));
  const paragraphs = [...html.matchAll(/<p>([\s\S]*?)<\/p>/g)].map((match) => stripTags(match[1]));
  const sentences = paragraphs.flatMap((paragraph) => paragraph.split(/(?<=\.)\s+/));

  assert.ok(headings.length >= 3, `the article page has only ${headings.length} headings`);
  assert.ok(links.length >= 3, `the article page has only ${links.length} links`);
  assert.ok(sentences.length >= 5, `the article page has only ${sentences.length} sentences`);
  return { headings, links, paragraphs, sentences };
}

function stagesOf(events) {
  return events.filter((event) => event.event === 'agent:stage');
}

function sectionsOf(events) {
  return events.filter((event) => event.event === 'agent:section');
}

function assertStagesInOrder(events, expected, context) {
  const names = stagesOf(events).map((event) => event.stage);
  const firstSeen = expected.map((stage) => names.indexOf(stage));
  for (const [position, stage] of expected.entries()) {
    assert.ok(firstSeen[position] >= 0, `${context}: stage ${stage} never reported; stages were ${names.join(', ')}`);
  }
  const sorted = [...firstSeen].sort((a, b) => a - b);
  assert.deepEqual(firstSeen, sorted, `${context}: stages out of order: ${names.join(', ')}`);
}

function assertStageEvents(events, context) {
  let previous = 0;
  for (const event of stagesOf(events)) {
    assert.equal(typeof event.stage, 'string', `${context}: stage event without stage: ${JSON.stringify(event)}`);
    assert.equal(typeof event.label, 'string', `${context}: stage event without label: ${JSON.stringify(event)}`);
    assert.equal(typeof event.progress, 'number', `${context}: stage event without progress`);
    assert.ok(event.progress >= 0, `${context}: progress ${event.progress} is below 0`);
    assert.ok(event.progress <= 1, `${context}: progress ${event.progress} is above 1`);
    assert.ok(event.progress >= previous, `${context}: progress went back from ${previous} to ${event.progress}`);
    assert.ok(!FINISHED.includes(event.status), `${context}: a stage event says the run is ${event.status}`);
    previous = event.progress;
  }
}

function assertSections(events, context) {
  const sections = sectionsOf(events);
  assert.deepEqual(sections.map((section) => section.title), SECTION_TITLES, `${context}: section titles`);
  assert.deepEqual(sections.map((section) => section.index), [0, 1, 2, 3, 4], `${context}: section indexes`);
  for (const section of sections) {
    assert.equal(typeof section.content, 'string', `${context}: ${section.title} has no content`);
    assert.ok(section.content.trim().length > 0, `${context}: ${section.title} is empty`);
  }
  return Object.fromEntries(sections.map((section) => [section.title, unescapeMarkdown(section.content)]));
}

function assertCompleted(events, context) {
  const done = events.at(-1);
  assert.equal(done.event, 'agent:done', `${context}: the last event is ${done.event}`);
  assert.equal(done.status, 'completed', `${context}: run ended ${done.status}: ${JSON.stringify(done.error)}`);
  assert.ok(done.error === undefined || done.error === null, `${context}: a completed run has an error`);
}

function assertHeadingsInOrder(outline, headings) {
  let cursor = -1;
  for (const heading of headings) {
    const position = outline.indexOf(heading, cursor + 1);
    assert.ok(position > cursor, `Outline lacks heading "${heading}" after the previous one:\n${outline}`);
    cursor = position;
  }
}

test('report on a page', async () => {
  const url = pageUrl('/article');
  const article = await readArticle(url);
  const socket = await connectAs(uniqueUser('reporter'));
  const inbox = new Inbox(socket);

  const run = await startReport(socket, { url });
  assert.ok(['queued', 'running'].includes(run.status), `a new run is ${run.status}`);
  const events = await waitForRun(inbox, run.id);

  assertRunSequence(events, 'report on /article');
  assertCompleted(events, 'report on /article');
  assertStagesInOrder(events, URL_STAGES, 'report on /article');
  assertStageEvents(events, 'report on /article');
  const sections = assertSections(events, 'report on /article');

  const summary = collapse(sections.Summary);
  const quoted = article.sentences.filter((sentence) => summary.includes(sentence));
  assert.ok(quoted.length > 0, `the Summary quotes no sentence of the page:\n${summary}`);

  const points = sections['Key points'].split('\n').filter((line) => line.startsWith('- '));
  assert.ok(points.length > 0, `Key points has no list items:\n${sections['Key points']}`);
  const pageText = collapse(article.paragraphs.join(' '));
  for (const point of points) {
    assert.ok(pageText.includes(collapse(point.slice(2))), `a key point is not from the page: ${point}`);
  }

  assertHeadingsInOrder(sections.Outline, article.headings);

  for (const link of article.links) {
    assert.ok(sections.Links.includes(link.url), `Links lacks ${link.url}:\n${sections.Links}`);
    assert.ok(sections.Links.includes(link.text), `Links lacks the text "${link.text}":\n${sections.Links}`);
  }

  assert.match(sections.Statistics, /\d/, `Statistics has no numbers:\n${sections.Statistics}`);
});

test('report on text input', async () => {
  const socket = await connectAs(uniqueUser('reporter'));
  const inbox = new Inbox(socket);
  const sentences = [
    'Lighthouses guided ships along dangerous coasts for centuries before satellite navigation existed.',
    'Each lighthouse had its own pattern of flashes so that sailors could tell them apart at night.',
    'Keepers trimmed the wicks and polished the lenses every evening to keep the beam bright.',
  ];
  const text = `# Lighthouses\n\n${sentences.join(' ')}\n\n## Keepers\n\nThe last keepers left when the lights were automated.`;

  const run = await startReport(socket, { text });
  const events = await waitForRun(inbox, run.id);

  assertRunSequence(events, 'report on text');
  assertCompleted(events, 'report on text');
  assertStagesInOrder(events, TEXT_STAGES, 'report on text');
  const stages = stagesOf(events).map((event) => event.stage);
  assert.ok(!stages.includes('fetching'), `a text report reported a fetching stage: ${stages.join(', ')}`);
  const sections = assertSections(events, 'report on text');
  assert.ok(sentences.some((sentence) => sections.Summary.includes(sentence)),
    `the Summary quotes no sentence of the text:\n${sections.Summary}`);
});

test('room run reaches room members', async () => {
  const room = uniqueRoom('reports');
  const starter = await connectAs(uniqueUser('starter'));
  const member = await connectAs(uniqueUser('member'));
  const outsider = await connectAs(uniqueUser('outsider'));
  const inboxes = { starter: new Inbox(starter), member: new Inbox(member), outsider: new Inbox(outsider) };
  await join(starter, room);
  await join(member, room);

  const run = await startReport(starter, { url: pageUrl('/slow?delay=2') }, room);

  // While the slow page loads, the run is active, so the join ack of a new member lists it.
  await inboxes.member.waitFor('agent:stage', (event) => event.run_id === run.id && event.stage === 'fetching');
  const latecomer = await connectAs(uniqueUser('latecomer'));
  const lateAck = await join(latecomer, room);
  const listed = lateAck.runs.filter((entry) => entry.id === run.id);
  assert.equal(listed.length, 1, `room:join runs should list the active run: ${JSON.stringify(lateAck.runs)}`);

  const starterEvents = await waitForRun(inboxes.starter, run.id);
  const memberEvents = await waitForRun(inboxes.member, run.id);
  assertRunSequence(starterEvents, 'starter');
  assertCompleted(starterEvents, 'starter');
  assert.deepEqual(memberEvents, starterEvents, 'a room member should get the same events as the starter');

  const finishedAck = await join(await connectAs(uniqueUser('after')), room);
  assert.deepEqual(finishedAck.runs.filter((entry) => entry.id === run.id), [],
    'a finished run should no longer be listed as active in room:join');
  assert.deepEqual(runEvents(inboxes.outsider, run.id), [], 'a socket outside the room got the run events');
});

test('two runs at once stay apart', async () => {
  const socket = await connectAs(uniqueUser('reporter'));
  const inbox = new Inbox(socket);

  const first = await startReport(socket, { url: pageUrl('/article') });
  const second = await startReport(socket, { text: 'Rivers carry sediment from the mountains down to the sea every year.' });
  const firstEvents = await waitForRun(inbox, first.id);
  const secondEvents = await waitForRun(inbox, second.id);

  assert.notEqual(first.id, second.id);
  assertRunSequence(firstEvents, 'first run');
  assertRunSequence(secondEvents, 'second run');
  assertCompleted(firstEvents, 'first run');
  assertCompleted(secondEvents, 'second run');
});
