// Token streaming load: S subscribers and one starter join one room, the starter runs the
// countdown plug-in agent in that room, and every subscriber counts the agent:delta events it
// receives. Prints one JSON object on stdout.

import { createHmac } from "node:crypto";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const CONNECT_CONCURRENCY = 50;

const OPTIONS = {
  url: { type: "string", default: "http://127.0.0.1:8101" },
  subscribers: { type: "string", default: "100" },
  deltas: { type: "string", default: "2000" },
  room: { type: "string" },
  timeout: { type: "string", default: "120" },
  help: { type: "boolean", default: false },
};

const HELP = `Usage: node deltas.mjs [options]

  --url URL           Huddle server (default http://127.0.0.1:8101)
  --subscribers S     sockets in the room besides the starter (default 100)
  --deltas N          deltas the countdown agent streams, 1 to 5000 (default 2000)
  --room NAME         room name (default: a random one per run)
  --timeout S         seconds allowed for connecting plus the whole run (default 120)

Env HUDDLE_JWT_SECRET is the HS256 secret used to sign each client's token. The server must
offer the countdown agent (HUDDLE_AGENT_PLUGINS=countdown_agent:CountdownAgent).`;

function signToken(secret, userId) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const header = encode({ alg: "HS256", typ: "JWT" });
  const payload = encode({ sub: userId, name: userId, roles: [], iat: now, exp: now + 3600 });
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

function positiveInteger(values, name) {
  const value = Number(values[name]);
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`--${name} must be a positive integer, got "${values[name]}"`);
  }
  return value;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function emitWithAck(socket, event, payload, timeoutMs) {
  return new Promise((resolve, reject) => {
    socket.timeout(timeoutMs).emit(event, payload, (error, ack) => {
      if (error) {
        reject(new Error(`${event} timed out after ${timeoutMs / 1000} s`));
      } else if (!ack?.ok) {
        reject(new Error(`${event} rejected: ${JSON.stringify(ack?.error ?? ack)}`));
      } else {
        resolve(ack);
      }
    });
  });
}

function connectClient(config, userId) {
  const socket = io(config.url, {
    auth: { token: signToken(config.secret, userId) },
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    timeout: config.timeoutMs,
    perMessageDeflate: false,
  });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (error) => {
      socket.close();
      reject(new Error(`${userId} failed to connect: ${error.message}`));
    });
  });
}

// Each subscriber records the arrival of its first and last delta and checks that the seqs
// of the deltas it gets are consecutive.
function trackDeltas(socket) {
  const tracker = { count: 0, gaps: 0, firstAt: null, lastAt: null, lastSeq: null, done: false };
  socket.on("agent:delta", (event) => {
    const now = performance.now();
    tracker.firstAt ??= now;
    tracker.lastAt = now;
    if (tracker.lastSeq !== null && event.seq !== tracker.lastSeq + 1) {
      tracker.gaps += 1;
    }
    tracker.lastSeq = event.seq;
    tracker.count += 1;
  });
  socket.on("agent:done", (event) => {
    tracker.done = true;
    tracker.status = event.status;
  });
  return tracker;
}

async function connectAll(config, userIds) {
  const sockets = new Array(userIds.length);
  let next = 0;
  const connectLane = async () => {
    while (next < userIds.length) {
      const index = next;
      next += 1;
      sockets[index] = await connectClient(config, userIds[index]);
      await emitWithAck(sockets[index], "room:join", { room: config.room }, config.timeoutMs);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, userIds.length) }, connectLane));
  } catch (error) {
    sockets.forEach((socket) => socket?.close());
    throw error;
  }
  return sockets;
}

async function run(config) {
  const deadline = performance.now() + config.timeoutMs;
  const userIds = Array.from({ length: config.subscribers }, (_, index) => `deltas-subscriber-${index}`);
  const connectStart = performance.now();
  const sockets = await connectAll(config, [...userIds, "deltas-starter"]);
  const connectS = (performance.now() - connectStart) / 1000;
  const starter = sockets.pop();

  try {
    const trackers = sockets.map(trackDeltas);
    const startedAt = performance.now();
    const ack = await emitWithAck(
      starter,
      "agent:start",
      { agent: "countdown", input: { from: config.deltas, delay: 0 }, room: config.room },
      config.timeoutMs,
    );

    while (!trackers.every((tracker) => tracker.done) && performance.now() < deadline) {
      await sleep(20);
    }
    return summarize(config, trackers, { runId: ack.run.id, connectS, startedAt });
  } finally {
    starter.close();
    sockets.forEach((socket) => socket.close());
  }
}

function summarize(config, trackers, { runId, connectS, startedAt }) {
  const delivered = trackers.reduce((sum, tracker) => sum + tracker.count, 0);
  const firsts = trackers.filter((tracker) => tracker.firstAt !== null).map((tracker) => tracker.firstAt);
  const lasts = trackers.filter((tracker) => tracker.lastAt !== null).map((tracker) => tracker.lastAt);
  const elapsedS = firsts.length ? (Math.max(...lasts) - Math.min(...firsts)) / 1000 : null;
  const perSubscriberS = trackers
    .filter((tracker) => tracker.count > 1)
    .map((tracker) => (tracker.lastAt - tracker.firstAt) / 1000);
  const meanPerSubscriberS = perSubscriberS.length
    ? perSubscriberS.reduce((sum, value) => sum + value, 0) / perSubscriberS.length
    : null;

  return {
    url: config.url,
    run_id: runId,
    subscribers: config.subscribers,
    deltas: config.deltas,
    connect_s: connectS,
    expected: config.subscribers * config.deltas,
    delivered,
    lost: config.subscribers * config.deltas - delivered,
    seq_gaps: trackers.reduce((sum, tracker) => sum + tracker.gaps, 0),
    done: trackers.filter((tracker) => tracker.done).length,
    statuses: [...new Set(trackers.map((tracker) => tracker.status ?? "none"))],
    start_to_first_delta_s: firsts.length ? (Math.min(...firsts) - startedAt) / 1000 : null,
    elapsed_s: elapsedS,
    delivered_per_second: elapsedS ? delivered / elapsedS : null,
    mean_subscriber_elapsed_s: meanPerSubscriberS,
  };
}

async function main() {
  const { values } = parseArgs({ options: OPTIONS });
  if (values.help) {
    console.log(HELP);
    return;
  }

  let config;
  try {
    const secret = process.env.HUDDLE_JWT_SECRET;
    if (!secret) {
      throw new Error("HUDDLE_JWT_SECRET is not set; export the secret the server verifies with");
    }
    const deltas = positiveInteger(values, "deltas");
    if (deltas > 5000) {
      throw new Error(`--deltas must be at most 5000 (the countdown agent's limit), got ${deltas}`);
    }
    config = {
      url: values.url,
      secret,
      subscribers: positiveInteger(values, "subscribers"),
      deltas,
      room: values.room ?? `deltas-${Math.random().toString(36).slice(2, 8)}`,
      timeoutMs: 1000 * positiveInteger(values, "timeout"),
    };
  } catch (error) {
    console.error(`deltas: ${error.message}`);
    process.exit(2);
  }

  try {
    console.log(JSON.stringify(await run(config)));
  } catch (error) {
    console.error(`deltas: ${error.message}`);
    process.exit(1);
  }
}

await main();
