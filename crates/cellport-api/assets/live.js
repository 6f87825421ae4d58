// The page's line to the export events: a WebSocket to a gateway while one answers, and
// long-polls of each followed job's status while none does. After a reconnect it sends
// `resume` with the last seq applied per job, so the gateway sends what was missed.
//
// States, shown by the connection badge: `connecting` (first attempt), `live` (socket open),
// `reconnecting` (socket lost, retrying with exponential backoff), `polling` (still no socket
// after POLL_AFTER_MS: long-polls carry the bars while reconnecting goes on).

import { api } from './common.js';

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 8000;
/** How long reconnecting goes on before the page long-polls instead. */
const POLL_AFTER_MS = 1500;
/** A long-poll's wait (the API takes up to 30 s). */
const LONG_POLL_MS = 25000;
/** The page pings this often; a socket silent for SILENT_MS is taken as lost. */
const PING_EVERY_MS = 20000;
const SILENT_MS = 50000;

export class Live {
  /**
   * `followed()` lists the jobs to keep current as `{id, projectId, seq}`; `onFrame(frame)`
   * gets every export frame, `onStatus(job)` every long-poll answer, `onState(state)` each
   * state change.
   */
  constructor({ eventsUrl, token, followed, onFrame, onStatus, onState }) {
    this.eventsUrl = eventsUrl || null;
    this.token = token;
    this.followed = followed;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.onState = onState;
    this.state = 'connecting';
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.polls = new Map();
    this.reconnectTimer = null;
    this.pollTimer = null;
    this.pingTimer = null;
    this.lastMessageAt = 0;
    this.onOnline = () => this.retryNow();
  }

  start() {
    this.stopped = false;
    window.addEventListener('online', this.onOnline);
    this.setState('connecting');
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.pollTimer);
    clearInterval(this.pingTimer);
    this.stopPolling();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
  }

  /** Takes the events URL an export's answer named, when the page was given none. */
  useEventsUrl(url) {
    if (this.eventsUrl || !url) return;
    this.eventsUrl = url;
    if (!this.stopped && !this.ws) this.retryNow();
  }

  /** A job to keep current from now on (a new export, a download started). */
  follow(jobId) {
    if (this.state === 'polling') this.ensurePoll(jobId);
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.onState(state);
  }

  retryNow() {
    if (this.stopped || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    clearTimeout(this.reconnectTimer);
    this.attempt = 0;
    this.connect();
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    if (this.stopped) return;
    if (!this.eventsUrl) {
      this.enterPolling();
      return;
    }
    let ws;
    try {
      const url = new URL(this.eventsUrl, window.location.href);
      url.searchParams.set('token', this.token);
      ws = new WebSocket(url.href);
    } catch {
      this.lost();
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.lastMessageAt = Date.now();
      clearTimeout(this.pollTimer);
      this.setState('live');
      this.stopPolling();
      this.sendResume();
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.keepAlive(ws), PING_EVERY_MS);
    });
    ws.addEventListener('message', (message) => {
      if (this.ws !== ws) return;
      this.lastMessageAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame && typeof frame.event === 'string' && frame.event.startsWith('export:') && frame.data) {
        this.onFrame(frame);
      }
    });
    ws.addEventListener('close', () => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.pingTimer);
      this.lost();
    });
  }

  /** The socket is gone (or never opened): reconnect with backoff, long-poll meanwhile. */
  lost() {
    if (this.stopped) return;
    if (this.state === 'live' || this.state === 'connecting') {
      this.setState('reconnecting');
      clearTimeout(this.pollTimer);
      this.pollTimer = setTimeout(() => {
        if (!this.stopped && this.state === 'reconnecting') this.enterPolling();
      }, POLL_AFTER_MS);
    }
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    this.attempt += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  keepAlive(ws) {
    if (this.ws !== ws) return;
    if (Date.now() - this.lastMessageAt > SILENT_MS) {
      // A socket that stopped answering (a network gone without a close): drop it now.
      this.ws = null;
      clearInterval(this.pingTimer);
      ws.close();
      this.lost();
      return;
    }
    try {
      ws.send(JSON.stringify({ action: 'ping' }));
    } catch {
      // The close event follows.
    }
  }

  sendResume() {
    const jobs = {};
    for (const job of this.followed()) jobs[job.id] = Math.max(0, job.seq);
    if (Object.keys(jobs).length > 0 && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ action: 'resume', jobs }));
    }
  }

  enterPolling() {
    this.setState('polling');
    for (const job of this.followed()) this.ensurePoll(job.id);
  }

  ensurePoll(jobId) {
    if (this.polls.has(jobId) || this.stopped) return;
    const controller = new AbortController();
    this.polls.set(jobId, controller);
    this.poll(jobId, controller).finally(() => {
      if (this.polls.get(jobId) === controller) this.polls.delete(jobId);
    });
  }

  stopPolling() {
    for (const controller of this.polls.values()) controller.abort();
    this.polls.clear();
  }

  /** Long-polls one job's status while the page is polling and the job is followed. */
  async poll(jobId, controller) {
    let failures = 0;
    while (!controller.signal.aborted && this.state === 'polling') {
      const job = this.followed().find((j) => j.id === jobId);
      if (!job) return;
      const path = `/api/projects/${encodeURIComponent(job.projectId)}/export/${encodeURIComponent(jobId)}`
        + `/status?after=${Math.max(0, job.seq)}&waitMs=${LONG_POLL_MS}`;
      try {
        const snapshot = await api(path, { signal: controller.signal });
        failures = 0;
        if (!controller.signal.aborted) this.onStatus(snapshot);
      } catch (error) {
        if (controller.signal.aborted || error.name === 'AbortError') return;
        if (error.status === 401 || error.status === 404) return;
        failures += 1;
        const wait = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failures);
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }
}
