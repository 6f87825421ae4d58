// The export page: sign-in, projects, the export dialog, a live card per export, history.

import {
  api, el, formatBytes, formatPercent, formatShortTime, formatTime, setUpSignIn, show,
} from './common.js';
import { ExportDialog } from './dialog.js';
import { JobCard, JobView, imageCount } from './jobs.js';
import { Live } from './live.js';

/** The cards of this tab, kept across reloads: `[{id, projectId}]`. */
const CARDS_KEY = 'cellport.cards';
const PROJECT_KEY = 'cellport.project';
const HISTORY_PAGE = 10;
/** A card's task breakdown and warnings come from the status, refreshed at most this often. */
const DETAILS_EVERY_MS = 1000;

const BADGE_TEXT = {
  offline: 'offline',
  connecting: 'connecting…',
  live: 'live',
  reconnecting: 'reconnecting…',
  polling: 'polling',
};

/** id → {view, card, detailsAt, detailsTimer} */
const entries = new Map();
let live = null;
let projects = [];
let current = null;
let historyCursor = null;
const historyRows = new Map();

const $ = (id) => document.getElementById(id);

const dialog = new ExportDialog({ onStarted: exportStarted });

$('new-export').addEventListener('click', () => current && dialog.open(current));
$('history-more').addEventListener('click', () => loadHistory(false));
$('history-refresh').addEventListener('click', () => loadHistory(true));

setUpSignIn({ onSignedIn: start, onSignedOut: stop });

function configuredEventsUrl() {
  const meta = document.querySelector('meta[name="cellport-events-url"]');
  const url = meta && meta.content;
  return url && !url.startsWith('__') ? url : null;
}

function setBadge(state) {
  const badge = $('connection');
  badge.dataset.state = state;
  badge.textContent = BADGE_TEXT[state] || state;
}

function pageError(message) {
  $('page-error').textContent = message || '';
  show($('page-error'), Boolean(message));
}

async function start(token) {
  live = new Live({
    eventsUrl: configuredEventsUrl(),
    token,
    followed: () => Array.from(entries.values(), (e) => e.view)
      .filter((v) => v.followed)
      .map((v) => ({ id: v.id, projectId: v.projectId, seq: v.seq })),
    onFrame: frameArrived,
    onStatus: statusArrived,
    onState: setBadge,
  });
  live.start();
  restoreCards();
  await loadProjects();
}

function stop() {
  if (live) live.stop();
  live = null;
  for (const entry of entries.values()) clearTimeout(entry.detailsTimer);
  entries.clear();
  $('cards').replaceChildren();
  cardsChanged();
  current = null;
  show($('project'), false);
  show($('history'), false);
  setBadge('offline');
}

// Projects

async function loadProjects() {
  try {
    projects = await api('/api/projects');
  } catch (error) {
    if (error.status !== 401) pageError(`The projects could not be listed: ${error.message}`);
    return;
  }
  pageError('');
  const list = $('project-list');
  list.replaceChildren(...projects.map((project) => el('li', {},
    el('button', {
      type: 'button', class: 'project', 'data-project-id': project.id,
      onclick: () => selectProject(project),
    },
    el('span', { class: 'project-name' }, project.name),
    el('span', { class: 'muted' }, `${project.imageCount} images · ${formatTime(project.createdAt)}`)))));
  show($('projects-empty'), projects.length === 0);
  const remembered = sessionStorage.getItem(PROJECT_KEY);
  const chosen = projects.find((p) => p.id === remembered) || (projects.length === 1 ? projects[0] : null);
  if (chosen) selectProject(chosen);
}

function selectProject(project) {
  current = project;
  sessionStorage.setItem(PROJECT_KEY, project.id);
  for (const button of document.querySelectorAll('#project-list .project')) {
    button.setAttribute('aria-pressed', String(button.dataset.projectId === project.id));
  }
  $('project-title').textContent = project.name;
  $('project-meta').textContent = `${project.imageCount} images · created ${formatTime(project.createdAt)}`;
  show($('project'), true);
  show($('history'), true);
  loadHistory(true);
}

// History

async function loadHistory(reset) {
  const project = current;
  if (!project) return;
  const query = new URLSearchParams({ limit: String(HISTORY_PAGE) });
  if (!reset && historyCursor) query.set('before', historyCursor);
  $('history-more').disabled = true;
  try {
    const page = await api(`/api/projects/${encodeURIComponent(project.id)}/export/history?${query}`);
    if (current !== project) return;
    if (reset) {
      historyRows.clear();
      $('history-rows').replaceChildren();
    }
    for (const job of page.items) {
      if (historyRows.has(job.id)) continue;
      const row = historyRow(job);
      historyRows.set(job.id, row);
      $('history-rows').append(row);
    }
    historyCursor = page.nextCursor;
    show($('history-more'), Boolean(page.nextCursor));
    show($('history-empty'), historyRows.size === 0);
    show($('history-table'), historyRows.size > 0);
  } catch (error) {
    if (error.status !== 401) pageError(`The history could not be loaded: ${error.message}`);
  } finally {
    $('history-more').disabled = false;
  }
}

function historyRow(job) {
  const images = imageCount(job) ?? 'all';
  const downloadable = job.status === 'completed' && !job.expired && job.downloadUrl;
  const status = job.status === 'completed' && job.expired ? 'expired' : job.status;
  return el('tr', { 'data-job-id': job.id, 'data-status': job.status },
    el('td', {}, formatShortTime(job.createdAt)),
    el('td', {}, el('span', { class: 'pill', 'data-status': job.status }, status)),
    el('td', { class: 'optional' }, formatPercent(job.progress || 0)),
    el('td', { class: 'optional' }, String(images)),
    el('td', { class: 'optional' }, formatBytes(job.fileSize)),
    el('td', { class: 'row-actions' }, downloadable
      ? el('button', { type: 'button', class: 'quiet', onclick: () => downloadFromHistory(job) }, 'Download')
      : ''));
}

/** Puts a job's current state into its history row, or a new row on top for a new export. */
function historyChanged(view, isNew) {
  if (!current || view.projectId !== current.id) return;
  const job = { ...view.job, progress: view.shown };
  const old = historyRows.get(view.id);
  if (!old && !isNew) return;
  const row = historyRow(job);
  historyRows.set(view.id, row);
  if (old) old.replaceWith(row);
  else $('history-rows').prepend(row);
  show($('history-empty'), false);
  show($('history-table'), true);
}

// Cards

function savedCards() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CARDS_KEY) || '[]');
    return Array.isArray(saved) ? saved : [];
  } catch {
    return [];
  }
}

function saveCards() {
  const cards = Array.from(entries.values(), (e) => ({ id: e.view.id, projectId: e.view.projectId }));
  sessionStorage.setItem(CARDS_KEY, JSON.stringify(cards));
}

function cardsChanged() {
  show($('cards-empty'), entries.size === 0);
  saveCards();
}

function entryFor(id, projectId, projectName) {
  let entry = entries.get(id);
  if (entry) return entry;
  const view = new JobView(id, projectId, projectName);
  const card = new JobCard(view, { onCancel: cancel, onDownload: download, onDismiss: dismiss });
  entry = { view, card, detailsAt: 0, detailsTimer: null };
  entries.set(id, entry);
  $('cards').prepend(card.node);
  cardsChanged();
  return entry;
}

function restoreCards() {
  for (const saved of savedCards()) {
    if (typeof saved.id !== 'string' || typeof saved.projectId !== 'string') continue;
    const entry = entryFor(saved.id, saved.projectId);
    refreshDetails(entry, true);
  }
}

function exportStarted(answer, project) {
  const entry = entryFor(answer.jobId, project.id, project.name);
  live.useEventsUrl(answer.eventsUrl);
  live.follow(answer.jobId);
  historyChanged(entry.view, true);
  refreshDetails(entry, true);
  entry.card.node.scrollIntoView({ block: 'nearest' });
}

function frameArrived(frame) {
  const data = frame.data;
  let entry = entries.get(data.jobId);
  if (!entry) {
    // A job this tab did not start (another tab, a colleague on a shared project): shown
    // while it runs; finished jobs of the past stay in the history.
    const running = frame.event === 'export:started'
      || (frame.event === 'export:progress' && data.phase === 'processing');
    if (!running) return;
    entry = entryFor(data.jobId, data.projectId);
    refreshDetails(entry, true);
  }
  if (!entry.view.applyFrame(frame.event, data)) return;
  entry.card.update();
  historyChanged(entry.view, false);
  const boundary = frame.event !== 'export:progress';
  refreshDetails(entry, boundary);
}

function statusArrived(snapshot) {
  const entry = entries.get(snapshot.id);
  if (!entry || !entry.view.applyStatus(snapshot)) return;
  entry.card.update();
  historyChanged(entry.view, false);
}

/**
 * Reads the job's status for what frames do not carry (the task breakdown, warnings): at once
 * when `now`, otherwise at most every DETAILS_EVERY_MS while events come in.
 */
function refreshDetails(entry, now) {
  if (entry.detailsTimer) {
    if (!now) return;
    clearTimeout(entry.detailsTimer);
  }
  const wait = now ? 0 : Math.max(0, entry.detailsAt + DETAILS_EVERY_MS - Date.now());
  entry.detailsTimer = setTimeout(async () => {
    entry.detailsAt = Date.now();
    const view = entry.view;
    try {
      const snapshot = await api(
        `/api/projects/${encodeURIComponent(view.projectId)}/export/${encodeURIComponent(view.id)}/status`);
      statusArrived(snapshot);
    } catch (error) {
      if (error.status === 404) dismiss(view);
    } finally {
      entry.detailsTimer = null;
    }
  }, wait);
}

async function cancel(view) {
  const entry = entries.get(view.id);
  if (!entry) return;
  entry.card.busy = true;
  entry.card.setActionError('');
  try {
    const snapshot = await api(
      `/api/projects/${encodeURIComponent(view.projectId)}/export/${encodeURIComponent(view.id)}/cancel`,
      { method: 'POST' });
    statusArrived(snapshot);
  } catch (error) {
    entry.card.setActionError(error.status === 409
      ? `It could not be cancelled: ${error.message}.` : `Cancel failed: ${error.message}`);
    refreshDetails(entry, true);
  } finally {
    entry.card.busy = false;
    entry.card.update();
  }
}

/**
 * Starts a native download of the archive through a signed URL (no header needed, nothing
 * held in memory here); the bar then follows the download events the server publishes.
 */
async function download(view) {
  const entry = entries.get(view.id);
  if (!entry) return;
  entry.card.busy = true;
  entry.card.setActionError('');
  try {
    const signed = await api(
      `/api/projects/${encodeURIComponent(view.projectId)}/export/${encodeURIComponent(view.id)}/download-token`,
      { method: 'POST' });
    view.downloadStarted = true;
    live.follow(view.id);
    const link = el('a', { href: signed.url, download: '', hidden: true, rel: 'noopener' });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    entry.card.setActionError(`The download could not start: ${error.message}`);
  } finally {
    entry.card.busy = false;
    entry.card.update();
  }
}

function downloadFromHistory(job) {
  const entry = entryFor(job.id, job.projectId, job.projectName);
  entry.view.applyStatus(job);
  entry.card.update();
  entry.card.node.scrollIntoView({ block: 'nearest' });
  download(entry.view);
}

function dismiss(view) {
  const entry = entries.get(view.id);
  if (!entry) return;
  clearTimeout(entry.detailsTimer);
  entries.delete(view.id);
  entry.card.node.remove();
  cardsChanged();
}
