// The operators' dashboard: GET /api/queue/stats every 2 seconds, the workers, and a chart of
// queue depth and throughput drawn from samples this page keeps (sessionStorage, 15 minutes).

import { api, el, formatDuration, formatTime, setUpSignIn, show } from './common.js';

const REFRESH_MS = 2000;
const WINDOW_MS = 15 * 60 * 1000;
/** Throughput at a sample is measured over this much of the samples before it. */
const RATE_WINDOW_MS = 30 * 1000;
/** Samples further apart than this are drawn as a gap, not a line. */
const GAP_MS = 10 * 1000;
const SAMPLES_KEY = 'cellport.ops.samples';
const SVG = 'http://www.w3.org/2000/svg';

const STATUSES = [
  ['queued', 'Queued'],
  ['processing', 'Processing'],
  ['completed', 'Completed'],
  ['failed', 'Failed'],
  ['cancelled', 'Cancelled'],
];

let timer = null;
let running = false;
let lastAnswerAt = null;

const $ = (id) => document.getElementById(id);

setUpSignIn({ onSignedIn: start, onSignedOut: stop });
window.addEventListener('resize', () => running && drawChart(loadSamples()));

function start() {
  running = true;
  drawChart(loadSamples());
  refresh();
}

function stop() {
  running = false;
  clearTimeout(timer);
  setBadge('offline', 'offline');
}

function setBadge(state, text) {
  const badge = $('connection');
  badge.dataset.state = state;
  badge.textContent = text;
}

function pageError(message) {
  $('page-error').textContent = message || '';
  show($('page-error'), Boolean(message));
}

async function refresh() {
  clearTimeout(timer);
  let again = true;
  try {
    const stats = await api('/api/queue/stats');
    if (!running) return;
    lastAnswerAt = new Date();
    pageError('');
    render(stats);
    const samples = record(stats);
    drawChart(samples);
    setBadge('live', 'live');
    $('updated').textContent = `updated ${formatTime(lastAnswerAt)}`;
  } catch (error) {
    if (!running) return;
    if (error.status === 403) {
      again = false;
      pageError('This token is not an admin’s: the dashboard needs a token with "role": "admin". Sign out and use another.');
      setBadge('offline', 'not an admin');
    } else if (error.status !== 401) {
      pageError(`The queue statistics cannot be read: ${error.message}`);
      setBadge('reconnecting', lastAnswerAt ? `stale since ${formatTime(lastAnswerAt)}` : 'no answer');
    }
  } finally {
    if (running && again) timer = setTimeout(refresh, REFRESH_MS);
  }
}

function depthOf(stats) {
  return typeof stats.queueDepth === 'number' ? stats.queueDepth : stats.queued;
}

function render(stats) {
  const depth = depthOf(stats);
  $('stat-depth').textContent = String(depth);
  $('stat-processing').textContent = String(stats.processing);
  // An age of 0 with jobs waiting means the API could not tell their age (no worker has
  // read the queue yet): shown as unknown rather than as none.
  $('stat-oldest').textContent = stats.oldestQueuedAgeMs > 0 ? formatDuration(stats.oldestQueuedAgeMs)
    : depth > 0 ? '–' : 'none waiting';
  $('stat-workers').textContent = String(stats.workers.length);

  const total = STATUSES.reduce((sum, [key]) => sum + (stats[key] || 0), 0);
  $('status-rows').replaceChildren(...STATUSES.map(([key, label]) => el('tr', { 'data-status': key },
    el('th', { scope: 'row' }, label),
    el('td', { class: 'count' }, String(stats[key] || 0)),
    el('td', { class: 'share' }, el('meter', {
      min: 0, max: Math.max(1, total), value: stats[key] || 0, 'aria-label': `${label} share of all jobs`,
    })))));

  const now = Date.now();
  $('worker-rows').replaceChildren(...stats.workers.map((worker) => {
    const beat = new Date(worker.lastHeartbeatAt);
    const ago = Math.max(0, now - beat.getTime());
    return el('tr', { 'data-worker-id': worker.id },
      el('td', { class: 'mono' }, worker.id),
      el('td', {}, worker.host || '–'),
      el('td', { class: 'count' }, String(worker.runningJobs)),
      el('td', { class: 'heartbeat' }, `${formatTime(beat)} (${formatDuration(ago)} ago)`));
  }));
  show($('workers-empty'), stats.workers.length === 0);
  show($('workers-table'), stats.workers.length > 0);
}

// Samples

function loadSamples() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SAMPLES_KEY) || '[]');
    const since = Date.now() - WINDOW_MS;
    return Array.isArray(saved) ? saved.filter((s) => s && typeof s.t === 'number' && s.t >= since) : [];
  } catch {
    return [];
  }
}

function record(stats) {
  const samples = loadSamples();
  samples.push({ t: Date.now(), depth: depthOf(stats), completed: stats.completed });
  try {
    sessionStorage.setItem(SAMPLES_KEY, JSON.stringify(samples));
  } catch {
    // Storage full: the chart still draws what this load has seen.
  }
  return samples;
}

/** Exports completed per minute at each sample, over the RATE_WINDOW_MS before it. */
function throughput(samples) {
  return samples.map((sample, i) => {
    let j = i;
    while (j > 0 && sample.t - samples[j - 1].t <= RATE_WINDOW_MS) j -= 1;
    const span = sample.t - samples[j].t;
    if (j === i || span < 1000) return null;
    return Math.max(0, sample.completed - samples[j].completed) / (span / 60000);
  });
}

/** A round number at or above `value` for an axis' top. */
function niceCeiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function formatRate(rate) {
  return rate >= 10 || rate === 0 ? String(Math.round(rate)) : rate.toFixed(1);
}

function drawChart(samples) {
  // Drawn at the width it is shown at, so that its text keeps its size on a phone.
  const width = Math.round(Math.min(900, Math.max(300, $('chart').clientWidth || 640)));
  const height = 230;
  const left = 44;
  const right = 48;
  const top = 26;
  const bottom = 30;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const now = Date.now();
  const first = samples.length ? samples[0].t : now;
  // The last 15 minutes, or what this tab has sampled of them (at least a minute).
  const span = Math.min(WINDOW_MS, Math.max(60 * 1000, now - first));
  const start = now - span;
  const rates = throughput(samples);
  const maxDepth = samples.reduce((m, s) => Math.max(m, s.depth), 0);
  const maxRate = rates.reduce((m, r) => Math.max(m, r || 0), 0);
  const depthTop = niceCeiling(maxDepth);
  const rateTop = niceCeiling(maxRate);
  const x = (t) => left + ((t - start) / span) * plotW;
  const yDepth = (v) => top + plotH - (v / depthTop) * plotH;
  const yRate = (v) => top + plotH - (v / rateTop) * plotH;

  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    class: 'chart-svg',
    role: 'img',
    'data-samples': samples.length,
    'data-max-depth': maxDepth,
  });
  const last = samples[samples.length - 1];
  const lastRate = rates[rates.length - 1];
  chart.append(svg('title', {}, samples.length
    ? `Over the last ${formatDuration(span)}: queue depth now ${last.depth} (highest ${maxDepth}); `
      + `throughput now ${lastRate == null ? 'not yet measured' : `${formatRate(lastRate)} per minute`} `
      + `(highest ${formatRate(maxRate)} per minute).`
    : 'No samples yet.'));

  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH - fraction * plotH;
    chart.append(svg('line', { x1: left, x2: left + plotW, y1: y, y2: y, class: 'grid' }));
    chart.append(svg('text', { x: left - 6, y: y + 4, class: 'axis depth', 'text-anchor': 'end' },
      String(Math.round(depthTop * fraction * 10) / 10)));
    chart.append(svg('text', { x: left + plotW + 6, y: y + 4, class: 'axis rate', 'text-anchor': 'start' },
      formatRate(rateTop * fraction)));
  }
  chart.append(svg('text', { x: left, y: height - 8, class: 'axis', 'text-anchor': 'start' },
    `−${formatDuration(span)}`));
  chart.append(svg('text', { x: left + plotW, y: height - 8, class: 'axis', 'text-anchor': 'end' }, 'now'));
  chart.append(svg('text', { x: 4, y: 11, class: 'axis depth', 'text-anchor': 'start' }, 'jobs waiting'));
  chart.append(svg('text', { x: width - 4, y: 11, class: 'axis rate', 'text-anchor': 'end' }, 'completed per min'));

  const lines = (value, scale, cls) => {
    let points = [];
    let previous = null;
    const flush = () => {
      if (points.length === 1) points.push(points[0]);
      if (points.length > 1) chart.append(svg('polyline', { points: points.join(' '), class: cls }));
      points = [];
    };
    samples.forEach((sample, i) => {
      const v = value(sample, i);
      if (v == null || sample.t < start) {
        flush();
        return;
      }
      if (previous !== null && sample.t - previous > GAP_MS) flush();
      points.push(`${x(sample.t).toFixed(1)},${scale(v).toFixed(1)}`);
      previous = sample.t;
    });
    flush();
  };
  lines((s) => s.depth, yDepth, 'series depth');
  lines((_, i) => rates[i], yRate, 'series rate');
  $('chart').replaceChildren(chart);
}
