// Chat load generator for Huddle and the plain python-socketio baseline.
//
// Chat mode: N clients in rooms of K connect and join, then send R messages per second in
// total for D seconds, spread evenly over the clients. It waits for every ack and for the
// deliveries to drain, then prints one JSON object on stdout.
//
// Idle mode (--idle): N clients connect and stay idle. A line {"event": "ready"} is printed
// once all are connected, and the clients disconnect when stdin ends or --hold seconds pass.
//
// The clients are spread over --workers child processes, whole rooms to a worker, so that
// each worker has the send time of every message its clients receive.

import { fork } from "node:child_process";
import { createHmac } from "node:crypto";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const HISTOGRAM_BUCKETS_PER_MS = 10;
const CONNECT_CONCURRENCY = 50;

const OPTIONS = {
  url: { type: "string", default: "http://127.0.0.1:8101" },
  clients: { type: "string", default: "500" },
  "room-size": { type: "string", default: "10" },
  rate: { type: "string", default: "1000" },
  duration: { type: "string", default: "10" },
  workers: { type: "string", default: "1" },
  "text-bytes": { type: "string", default: "80" },
  "room-prefix": { type: "string" },
  "ack-timeout": { type: "string", default: "10" },
  "drain-timeout": { type: "string", default: "5" },
  "connect-timeout": { type: "string", default: "30" },
  idle: { type: "boolean", default: false },
  hold: { type: "string", default: "120" },
  "no-deflate": { type: "boolean", default: false },
  "zlib-concurrency": { type: "string", default: "64" },
  worker: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
};

const HELP = `Usage: node loadgen.mjs [options]

  --url URL              Socket.IO server (default http://127.0.0.1:8101)
  --clients N            connected clients (default 500)
  --room-size K          clients per room, must divide N (default 10)
  --rate R               messages sent per second, all clients together (default 1000)
  --duration D           seconds of sending (default 10)
  --workers W            load generator processes (default 1)
  --text-bytes B         length of each message text in characters (default 80)
  --room-prefix P        room name prefix (default: a random one per run)
  --ack-timeout S        seconds before an unanswered ack counts as an error (default 10)
  --drain-timeout S      seconds to wait for deliveries after the last ack (default 5)
  --connect-timeout S    seconds allowed for all clients to connect and join (default 30)
  --idle                 connect only, print {"event":"ready"}, hold until stdin ends
  --hold S               maximum seconds to hold idle clients (default 120)
  --no-deflate           do not offer permessage-deflate
  --zlib-concurrency N   zlib operations in flight per process when inflating (default 64;
                         ws allows 10, which queues acks behind inflation under load)

Env HUDDLE_JWT_SECRET is the HS256 secret used to sign each client's token.`;

// ---------------------------------------------------------------------------------------
// Shared helpers

function base64url(value) {
  return Buffer.from(value).toString("base64url");
}

function signToken(secret, userId, name) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: userId, name, roles: [], iat: now, exp: now + 3600 };
  const payload = base64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

function positiveNumber(values, name) {
  const value = Number(values[name]);
  if (!Number.isFinite(value) || value <= 0) {
    throw new Error(`--${name} must be a positive number, got "${values[name]}"`);
  }
  return value;
}

function addToHistogram(histogram, ms) {
  const bucket = Math.round(ms * HISTOGRAM_BUCKETS_PER_MS);
  histogram.set(bucket, (histogram.get(bucket) ?? 0) + 1);
}

function mergeHistograms(target, entries) {
  for (const [bucket, count] of entries) {
    target.set(bucket, (target.get(bucket) ?? 0) + count);
  }
}

function percentiles(histogram, quantiles) {
  const buckets = [...histogram.entries()].sort((a, b) => a[0] - b[0]);
  const total = buckets.reduce((sum, [, count]) => sum + count, 0);
  const result = {};
  for (const q of quantiles) {
    result[`p${q}`] = null;
  }
  if (total === 0) {
    return result;
  }

  for (const q of quantiles) {
    const rank = Math.ceil((q / 100) * total);
    let seen = 0;
    for (const [bucket, count] of buckets) {
      seen += count;
      if (seen >= rank) {
        result[`p${q}`] = bucket / HISTOGRAM_BUCKETS_PER_MS;
        break;
      }
    }
  }
  result.max = buckets[buckets.length - 1][0] / HISTOGRAM_BUCKETS_PER_MS;
  return result;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitUntil(condition, timeoutMs) {
  const deadline = performance.now() + timeoutMs;
  while (!condition() && performance.now() < deadline) {
    await sleep(20);
  }
  return condition();
}

// ---------------------------------------------------------------------------------------
// Worker process: owns a set of whole rooms and their clients.

function connectClient(config, client) {
  const token = signToken(config.secret, client.userId, client.userId);
  const socket = io(config.url, {
    auth: { token },
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    timeout: config.connectTimeoutMs,
    perMessageDeflate: config.deflate ? { threshold: 1024, concurrencyLimit: config.zlibConcurrency } : false,
  });

  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (error) => {
      socket.close();
      reject(new Error(`client ${client.userId} failed to connect: ${error.message}`));
    });
  });
}

function joinRoom(config, socket, room) {
  return new Promise((resolve, reject) => {
    socket.timeout(config.ackTimeoutMs).emit("room:join", { room }, (error, ack) => {
      if (error) {
        reject(new Error(`room:join ${room} timed out`));
      } else if (!ack?.ok) {
        reject(new Error(`room:join ${room} rejected: ${JSON.stringify(ack?.error ?? ack)}`));
      } else {
        resolve();
      }
    });
  });
}

async function connectAll(config, clients, join) {
  let next = 0;
  const connectOne = async () => {
    while (next < clients.length) {
      const client = clients[next];
      next += 1;
      client.socket = await connectClient(config, client);
      if (join) {
        await joinRoom(config, client.socket, client.room);
      }
    }
  };

  const lanes = Array.from({ length: Math.min(CONNECT_CONCURRENCY, clients.length) }, connectOne);
  await Promise.all(lanes);
}

function listenForMessages(clients, stats) {
  for (const client of clients) {
    client.socket.on("message:new", (message) => {
      const pending = stats.pending.get(message?.client_id);
      if (pending === undefined || message.room !== client.room) {
        stats.unexpected += 1;
        return;
      }

      stats.delivered += 1;
      addToHistogram(stats.deliveryLatency, performance.now() - pending.sentAt);
      pending.remaining -= 1;
      if (pending.remaining === 0) {
        stats.pending.delete(message.client_id);
      }
    });
  }
}

function sendOne(config, client, clientId, stats) {
  const sentAt = performance.now();
  stats.pending.set(clientId, { sentAt, remaining: config.roomSize - 1 });
  stats.sent += 1;

  const payload = { room: client.room, text: config.text, client_id: clientId };
  client.socket.timeout(config.ackTimeoutMs).emit("message:send", payload, (error, ack) => {
    addToHistogram(stats.ackLatency, performance.now() - sentAt);
    if (error) {
      stats.errors.ack_timeout = (stats.errors.ack_timeout ?? 0) + 1;
    } else if (!ack?.ok) {
      const code = ack?.error?.code ?? "malformed_ack";
      stats.errors[code] = (stats.errors[code] ?? 0) + 1;
    } else if (ack.message?.client_id !== clientId) {
      stats.errors.client_id_mismatch = (stats.errors.client_id_mismatch ?? 0) + 1;
    } else {
      stats.acked += 1;
    }
  });
}

// Sends on a fixed schedule: message i is due at start + i / rate, so a slow event loop
// shows up as schedule lag instead of a silently lower rate.
async function sendOnSchedule(config, clients, stats, startAt) {
  const rate = config.rate * (clients.length / config.totalClients);
  const total = Math.round(rate * config.durationS);
  const intervalMs = 1000 / rate;
  await sleep(Math.max(0, startAt - Date.now()));

  const start = performance.now();
  const cpuAtStart = process.cpuUsage();
  stats.sendStartedAt = Date.now();
  while (stats.sent < total) {
    const due = Math.min(total, Math.floor((performance.now() - start) / intervalMs) + 1);
    while (stats.sent < due) {
      const lag = performance.now() - (start + stats.sent * intervalMs);
      stats.maxScheduleLagMs = Math.max(stats.maxScheduleLagMs, lag);
      const client = clients[stats.sent % clients.length];
      sendOne(config, client, `${config.runId}-${config.workerIndex}-${stats.sent}`, stats);
    }
    await sleep(1);
  }
  stats.sendWindowMs = performance.now() - start;
  stats.sendFinishedAt = Date.now();
  const cpu = process.cpuUsage(cpuAtStart);
  stats.cpuPercent = (100 * (cpu.user + cpu.system)) / 1000 / stats.sendWindowMs;
}

async function runChat(config, clients, startAt) {
  const stats = {
    sent: 0,
    acked: 0,
    errors: {},
    delivered: 0,
    unexpected: 0,
    pending: new Map(),
    ackLatency: new Map(),
    deliveryLatency: new Map(),
    maxScheduleLagMs: 0,
    sendWindowMs: 0,
    sendStartedAt: 0,
    sendFinishedAt: 0,
    cpuPercent: 0,
  };
  listenForMessages(clients, stats);

  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  await sendOnSchedule(config, clients, stats, startAt);
  loopDelay.disable();

  const answered = () => stats.acked + sumValues(stats.errors) >= stats.sent;
  await waitUntil(answered, config.ackTimeoutMs + 1000);
  const expected = stats.sent * (config.roomSize - 1);
  await waitUntil(() => stats.delivered >= expected, config.drainTimeoutMs);

  return {
    sent: stats.sent,
    acked: stats.acked,
    errors: stats.errors,
    expected,
    delivered: stats.delivered,
    unexpected: stats.unexpected,
    ackLatency: [...stats.ackLatency.entries()],
    deliveryLatency: [...stats.deliveryLatency.entries()],
    sendWindowMs: stats.sendWindowMs,
    sendStartedAt: stats.sendStartedAt,
    sendFinishedAt: stats.sendFinishedAt,
    maxScheduleLagMs: stats.maxScheduleLagMs,
    cpuPercent: stats.cpuPercent,
    eventLoopDelayP99Ms: loopDelay.percentile(99) / 1e6,
  };
}

function sumValues(object) {
  return Object.values(object).reduce((sum, value) => sum + value, 0);
}

function negotiatedDeflate(socket) {
  const extensions = socket.io.engine?.transport?.ws?.extensions ?? "";
  return extensions.includes("permessage-deflate");
}

function closeAll(clients) {
  for (const client of clients) {
    client.socket?.close();
  }
}

async function runWorker() {
  process.once("disconnect", () => process.exit(0));
  const configReceived = new Promise((resolve) => process.once("message", resolve));
  process.send({ type: "hello" });
  const config = await configReceived;
  const clients = config.clients;

  const connectStart = performance.now();
  try {
    await connectAll(config, clients, !config.idle);
  } catch (error) {
    closeAll(clients);
    process.send({ type: "failed", error: error.message });
    return;
  }
  process.send({
    type: "ready",
    connectMs: performance.now() - connectStart,
    deflateNegotiated: clients.filter((client) => negotiatedDeflate(client.socket)).length,
  });

  const command = await new Promise((resolve) => process.once("message", resolve));
  if (command.type === "start") {
    const result = await runChat(config, clients, command.startAt);
    process.send({ type: "result", result });
  }

  closeAll(clients);
  await sleep(100);
  process.exit(0);
}

// ---------------------------------------------------------------------------------------
// Parent process: plans rooms, starts the workers and merges their results.

function readConfig(values) {
  const clients = positiveNumber(values, "clients");
  const roomSize = positiveNumber(values, "room-size");
  if (!Number.isInteger(clients / roomSize) || roomSize < 2) {
    throw new Error(`--room-size must be at least 2 and divide --clients (${clients})`);
  }

  const secret = process.env.HUDDLE_JWT_SECRET;
  if (!secret) {
    throw new Error("HUDDLE_JWT_SECRET is not set; export the secret the server verifies with");
  }

  const runId = Math.random().toString(36).slice(2, 8);
  return {
    url: values.url,
    secret,
    runId,
    roomPrefix: values["room-prefix"] ?? `bench-${runId}`,
    totalClients: clients,
    roomSize,
    rate: positiveNumber(values, "rate"),
    durationS: positiveNumber(values, "duration"),
    workers: Math.min(positiveNumber(values, "workers"), clients / roomSize),
    text: "x".repeat(positiveNumber(values, "text-bytes")),
    ackTimeoutMs: 1000 * positiveNumber(values, "ack-timeout"),
    drainTimeoutMs: 1000 * positiveNumber(values, "drain-timeout"),
    connectTimeoutMs: 1000 * positiveNumber(values, "connect-timeout"),
    holdMs: 1000 * positiveNumber(values, "hold"),
    idle: values.idle,
    deflate: !values["no-deflate"],
    zlibConcurrency: positiveNumber(values, "zlib-concurrency"),
  };
}

function planClients(config, workerIndex) {
  const clients = [];
  const rooms = config.totalClients / config.roomSize;
  for (let room = workerIndex; room < rooms; room += config.workers) {
    for (let member = 0; member < config.roomSize; member += 1) {
      const index = room * config.roomSize + member;
      clients.push({ userId: `bench-user-${index}`, room: `${config.roomPrefix}-${room}` });
    }
  }
  return clients;
}

function startWorkers(config) {
  const workers = [];
  for (let index = 0; index < config.workers; index += 1) {
    const child = fork(new URL(import.meta.url), ["--worker"], { stdio: "inherit" });
    const workerConfig = { ...config, workerIndex: index, clients: planClients(config, index) };
    child.once("message", () => child.send(workerConfig));
    workers.push(child);
  }
  return workers;
}

function nextMessage(child, type) {
  return new Promise((resolve, reject) => {
    const onMessage = (message) => {
      if (message.type === "failed") {
        reject(new Error(message.error));
      } else if (message.type === type) {
        child.off("message", onMessage);
        resolve(message);
      }
    };
    child.on("message", onMessage);
    child.once("exit", (code) => reject(new Error(`worker exited with code ${code}`)));
  });
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function mergeResults(config, results, ready) {
  const ackLatency = new Map();
  const deliveryLatency = new Map();
  const errors = {};
  const totals = { sent: 0, acked: 0, expected: 0, delivered: 0, unexpected: 0 };
  for (const result of results) {
    for (const key of Object.keys(totals)) {
      totals[key] += result[key];
    }
    for (const [code, count] of Object.entries(result.errors)) {
      errors[code] = (errors[code] ?? 0) + count;
    }
    mergeHistograms(ackLatency, result.ackLatency);
    mergeHistograms(deliveryLatency, result.deliveryLatency);
  }

  const sendWindowS = Math.max(...results.map((result) => result.sendWindowMs)) / 1000;
  return {
    url: config.url,
    clients: config.totalClients,
    room_size: config.roomSize,
    rooms: config.totalClients / config.roomSize,
    target_rate: config.rate,
    duration_s: config.durationS,
    connect_s: Math.max(...ready.map((message) => message.connectMs)) / 1000,
    deflate_negotiated: sumValues(ready.map((message) => message.deflateNegotiated)),
    sent: totals.sent,
    acked: totals.acked,
    errors: sumValues(errors),
    error_codes: errors,
    expected_deliveries: totals.expected,
    delivered: totals.delivered,
    lost: totals.expected - totals.delivered,
    unexpected_deliveries: totals.unexpected,
    send_started_at: Math.min(...results.map((result) => result.sendStartedAt)) / 1000,
    send_finished_at: Math.max(...results.map((result) => result.sendFinishedAt)) / 1000,
    send_rate: totals.sent / sendWindowS,
    delivered_per_second: totals.delivered / sendWindowS,
    ack_latency_ms: percentiles(ackLatency, [50, 95, 99]),
    delivery_latency_ms: percentiles(deliveryLatency, [50, 95, 99]),
    loadgen: {
      workers: config.workers,
      cpu_percent: results.map((result) => Math.round(result.cpuPercent)),
      event_loop_delay_p99_ms: results.map((result) => result.eventLoopDelayP99Ms),
      max_schedule_lag_ms: Math.max(...results.map((result) => result.maxScheduleLagMs)),
    },
  };
}

function waitForStdinEnd(holdMs) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, holdMs);
    process.stdin.on("data", () => {});
    process.stdin.once("end", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function runParent(config) {
  const workers = startWorkers(config);
  try {
    const ready = await withTimeout(
      Promise.all(workers.map((child) => nextMessage(child, "ready"))),
      config.connectTimeoutMs,
      "connecting and joining",
    );
    if (config.idle) {
      const summary = {
        event: "ready",
        connected: config.totalClients,
        connect_s: Math.max(...ready.map((message) => message.connectMs)) / 1000,
        deflate_negotiated: sumValues(ready.map((message) => message.deflateNegotiated)),
      };
      console.log(JSON.stringify(summary));
      await waitForStdinEnd(config.holdMs);
      workers.forEach((child) => child.send({ type: "close" }));
      return;
    }

    const results = workers.map((child) => nextMessage(child, "result"));
    workers.forEach((child) => child.send({ type: "start", startAt: Date.now() + 200 }));
    const runMs = 1000 * config.durationS + config.ackTimeoutMs + config.drainTimeoutMs + 10_000;
    const finished = await withTimeout(Promise.all(results), runMs, "the load run");
    console.log(JSON.stringify(mergeResults(config, finished.map((m) => m.result), ready)));
  } finally {
    await sleep(500);
    for (const child of workers) {
      if (child.exitCode === null) {
        child.kill();
      }
    }
  }
}

async function main() {
  const { values } = parseArgs({ options: OPTIONS });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (values.worker) {
    await runWorker();
    return;
  }

  let config;
  try {
    config = readConfig(values);
  } catch (error) {
    console.error(`loadgen: ${error.message}`);
    process.exit(2);
  }

  try {
    await runParent(config);
  } catch (error) {
    console.error(`loadgen: ${error.message}`);
    process.exit(1);
  }
}

await main();
