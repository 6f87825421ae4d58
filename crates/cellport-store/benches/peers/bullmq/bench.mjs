// BullMQ in the shape of Cellport's `peer_queue` bench (crates/cellport-store/benches/peer_queue.rs):
// the same three scenarios with the same defaults and parameter names, printing one JSON line.
//
//   npm install && node bench.mjs --port 6390 [--scenarios bulk,latency,progress] [--bulk-jobs 20000] ...
//
// It talks to the redis-server on 127.0.0.1:--port, which the caller starts (a private one with no
// persistence, as the Cellport bench starts its own). Each scenario uses a queue name of its own and
// BullMQ's defaults otherwise (completed jobs are kept; the events stream is trimmed near 10,000).

import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, QueueEvents, Worker } from 'bullmq';

function params() {
  const args = new Map();
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) continue;
    const [name, inline] = arg.slice(2).split('=', 2);
    if (inline !== undefined) args.set(name, inline);
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) args.set(name, argv[++i]);
    else args.set(name, '');
  }
  const text = (name, fallback) =>
    args.get(name) ?? process.env[`CELLPORT_BENCH_${name.toUpperCase().replaceAll('-', '_')}`] ?? fallback;
  const number = (name, fallback) => {
    const value = Number(text(name, String(fallback)));
    if (!Number.isFinite(value)) throw new Error(`--${name} is not a number`);
    return value;
  };
  return {
    port: number('port', 6379),
    scenarios: text('scenarios', 'bulk,latency,progress').split(',').map((s) => s.trim()),
    bulkJobs: number('bulk-jobs', 20000),
    chunk: Math.max(1, number('chunk', 1000)),
    concurrency: Math.max(1, number('concurrency', 100)),
    latencyJobs: number('latency-jobs', 2000),
    latencyRate: Math.max(1, number('latency-rate', 500)),
    progressJobs: number('progress-jobs', 5000),
    progressEvents: number('progress-events', 20),
  };
}

const p = params();
if (p.port === 6379) throw new Error('refusing the shared Redis on 6379: pass --port of a private one');
const connection = { host: '127.0.0.1', port: p.port };
const round = (x) => Math.round(x);
const ms = (x) => Math.round(x * 1000) / 1000;

function percentile(sorted, q) {
  if (sorted.length === 0) return 0;
  return sorted[Math.round((sorted.length - 1) * q)];
}

/// Resolves once `check()` holds, polling every 2 ms; rejects after `timeoutMs`.
async function until(check, timeoutMs, what) {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

async function addAll(queue, n, data) {
  for (let first = 0; first < n; first += p.chunk) {
    const size = Math.min(p.chunk, n - first);
    await queue.addBulk(Array.from({ length: size }, (_, k) => ({ name: 'noop', data: data(first + k) })));
  }
}

async function bulk() {
  const name = `bulk-${process.pid}`;
  const n = p.bulkJobs;
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  let started = performance.now();
  await addAll(queue, n, (i) => ({ i }));
  const add = performance.now() - started;
  let handled = 0;
  let completed = 0;
  let handledAt = 0;
  started = performance.now();
  const worker = new Worker(
    name,
    async () => {
      if (++handled === n) handledAt = performance.now();
    },
    { connection, concurrency: p.concurrency },
  );
  worker.on('completed', () => completed++);
  await until(() => completed >= n, 300_000, 'the drain');
  const acked = performance.now() - started;
  await worker.close();
  await queue.close();
  const perS = (t) => round((n / t) * 1000);
  console.log(
    `  [bullmq] bulk: add ${perS(add)} jobs/s, drain ${perS(handledAt - started)} jobs/s (handlers), ` +
      `${perS(acked)} jobs/s (completed)`,
  );
  return {
    jobs: n,
    chunk: p.chunk,
    concurrency: p.concurrency,
    add_jobs_per_s: perS(add),
    drain_jobs_per_s: perS(handledAt - started),
    drain_acked_jobs_per_s: perS(acked),
  };
}

async function latency() {
  const name = `latency-${process.pid}`;
  const n = p.latencyJobs;
  const queue = new Queue(name, { connection });
  const latencies = [];
  const worker = new Worker(
    name,
    async (job) => {
      latencies.push(performance.now() - job.data.before);
    },
    { connection, concurrency: p.concurrency },
  );
  await queue.waitUntilReady();
  await worker.waitUntilReady();
  await sleep(200);
  const gap = 1000 / p.latencyRate;
  const started = performance.now();
  for (let i = 0; i < n; i++) {
    const wait = started + i * gap - performance.now();
    if (wait > 0) await sleep(wait);
    await queue.add('noop', { before: performance.now() });
  }
  const offered = round((n / (performance.now() - started)) * 1000);
  await until(() => latencies.length >= n, 60_000, 'the latency jobs');
  await worker.close();
  await queue.close();
  latencies.sort((a, b) => a - b);
  const figures = {
    jobs: n,
    rate: p.latencyRate,
    offered_per_s: offered,
    p50_ms: ms(percentile(latencies, 0.5)),
    p90_ms: ms(percentile(latencies, 0.9)),
    p99_ms: ms(percentile(latencies, 0.99)),
    max_ms: ms(latencies[latencies.length - 1] ?? 0),
  };
  console.log(
    `  [bullmq] latency at ${offered}/s: p50 ${figures.p50_ms} ms, p90 ${figures.p90_ms} ms, ` +
      `p99 ${figures.p99_ms} ms, max ${figures.max_ms} ms`,
  );
  return figures;
}

async function progress() {
  const name = `progress-${process.pid}`;
  const n = p.progressJobs;
  const expected = n * p.progressEvents;
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  await addAll(queue, n, (i) => ({ i }));
  const events = new QueueEvents(name, { connection });
  await events.waitUntilReady();
  const lags = [];
  let last = 0;
  events.on('progress', ({ data }) => {
    const now = performance.now();
    if (data && typeof data.t === 'number') {
      lags.push(now - data.t);
      last = now;
    }
  });
  let handled = 0;
  let published = 0;
  const started = performance.now();
  const worker = new Worker(
    name,
    async (job) => {
      for (let k = 1; k <= p.progressEvents; k++) {
        await job.updateProgress({ k, t: performance.now() });
        published++;
      }
      handled++;
    },
    { connection, concurrency: p.concurrency },
  );
  await until(() => handled >= n, 600_000, 'the progress jobs');
  const handledIn = performance.now() - started;
  await sleep(500);
  await worker.close();
  await events.close();
  await queue.close();
  lags.sort((a, b) => a - b);
  const delivered = lags.length;
  const figures = {
    jobs: n,
    events_per_job: p.progressEvents,
    concurrency: p.concurrency,
    events_expected: expected,
    events_published: published,
    events_received: delivered,
    delivered_share: Math.round((delivered / expected) * 1e4) / 1e4,
    events_per_s: round((delivered / (last - started)) * 1000),
    jobs_per_s: round((n / handledIn) * 1000),
    lag_p50_ms: ms(percentile(lags, 0.5)),
    lag_p99_ms: ms(percentile(lags, 0.99)),
    lag_max_ms: ms(lags[lags.length - 1] ?? 0),
  };
  console.log(
    `  [bullmq] progress: ${delivered}/${expected} events received, ${figures.events_per_s} events/s, ` +
      `lag p50 ${figures.lag_p50_ms} ms, p99 ${figures.lag_p99_ms} ms`,
  );
  return figures;
}

const version = JSON.parse(
  readFileSync(new URL('./node_modules/bullmq/package.json', import.meta.url), 'utf8'),
).version;
console.log(`peer_queue (bullmq ${version}, node ${process.version}): one worker at concurrency ${p.concurrency}`);
const result = { mode: 'defaults' };
for (const scenario of p.scenarios) {
  if (scenario === 'bulk') result.bulk = await bulk();
  else if (scenario === 'latency') result.latency = await latency();
  else if (scenario === 'progress') result.progress = await progress();
  else throw new Error(`unknown scenario ${scenario}: bulk, latency or progress`);
}
console.log(JSON.stringify({ bench: 'peer_queue', system: 'bullmq', version, node: process.version, results: [result] }));
process.exit(0);
