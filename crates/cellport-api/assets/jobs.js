// One export as the page knows it (JobView) and its live card. The rules that keep a bar
// honest live here: a frame or status whose seq is not newer than what was applied is dropped,
// a cancelled or failed job never changes status again, and the bar's value never decreases.

import { el, formatBytes, formatDuration, formatPercent, formatTime } from './common.js';

/** Overall progress where processing ends and the download begins. */
export const PROCESSING_SHARE = 80;

const LIVE_STATUSES = new Set(['pending', 'processing']);
const ENDED_STATUSES = new Set(['failed', 'cancelled']);

/** What the card of a job shows; it changes only through applyFrame and applyStatus. */
export class JobView {
  constructor(id, projectId, projectName) {
    this.id = id;
    this.projectId = projectId;
    this.seq = -1;
    /** The highest progress ever shown: the bar never goes below it. */
    this.shown = 0;
    /** A download of this archive was started from this tab. */
    this.downloadStarted = false;
    this.job = {
      id,
      projectId,
      projectName: projectName || '',
      status: 'pending',
      phase: 'queued',
      progress: 0,
      phaseProgress: 0,
      currentTask: null,
      tasks: [],
      itemsCompleted: 0,
      itemsTotal: 0,
      estimatedTimeRemainingMs: null,
      warnings: [],
    };
  }

  /** Pending or processing: events will still come. */
  get live() {
    return LIVE_STATUSES.has(this.job.status);
  }

  /** Worth following: live, or a download of it from this tab still under way. */
  get followed() {
    const job = this.job;
    return this.live || (job.status === 'completed' && job.phase === 'downloading' && this.downloadStarted);
  }

  /** Applies a WebSocket frame (`event`, `data`); false when it was stale and dropped. */
  applyFrame(event, data) {
    if (typeof data.seq !== 'number' || data.seq <= this.seq) return false;
    const job = this.job;
    this.seq = data.seq;
    if (ENDED_STATUSES.has(job.status)) return false;
    switch (event) {
      case 'export:started':
        job.status = 'processing';
        job.phase = 'processing';
        job.startedAt = data.startedAt;
        job.itemsTotal = data.itemsTotal;
        job.itemsCompleted = data.itemsCompleted ?? job.itemsCompleted;
        job.progress = data.progress ?? job.progress;
        if (Array.isArray(data.tasks)) job.tasks = data.tasks;
        break;
      case 'export:progress':
        job.progress = data.progress;
        job.phase = data.phase;
        job.phaseProgress = data.phaseProgress;
        job.itemsCompleted = data.itemsCompleted;
        job.itemsTotal = data.itemsTotal;
        job.estimatedTimeRemainingMs = data.estimatedTimeRemainingMs;
        if (data.phase === 'processing') {
          job.status = 'processing';
          job.currentTask = data.currentTask;
          const task = job.tasks.find((t) => t.name === data.currentTask);
          if (task && typeof data.taskProgress === 'number') {
            task.progress = Math.max(task.progress, data.taskProgress);
            if (task.status === 'pending') task.status = 'running';
          }
        } else {
          job.status = 'completed';
          job.currentTask = null;
        }
        break;
      case 'export:completed':
        job.status = 'completed';
        job.phase = 'downloading';
        job.phaseProgress = 0;
        job.progress = data.progress;
        job.currentTask = null;
        job.estimatedTimeRemainingMs = null;
        job.fileSize = data.fileSize;
        job.processingTimeMs = data.processingTimeMs;
        job.completedAt = data.completedAt;
        job.downloadUrl = data.downloadUrl;
        job.itemsCompleted = job.itemsTotal;
        for (const task of job.tasks) {
          if (task.status !== 'skipped') {
            task.status = 'completed';
            task.progress = 100;
            task.itemsCompleted = task.itemsTotal;
          }
        }
        break;
      case 'export:failed':
        job.status = 'failed';
        job.errorMessage = data.error;
        job.failedAt = data.failedAt;
        job.estimatedTimeRemainingMs = null;
        break;
      case 'export:cancelled':
        job.status = 'cancelled';
        job.cancelledAt = data.cancelledAt;
        job.cancelReason = data.reason;
        job.estimatedTimeRemainingMs = null;
        break;
      default:
        return false;
    }
    this.shown = Math.max(this.shown, job.progress || 0);
    return true;
  }

  /**
   * Applies a status snapshot (`ExportJob`). An older one is dropped; one of the same seq
   * describes the state already shown, so only what frames do not carry is taken from it.
   */
  applyStatus(snapshot) {
    if (typeof snapshot.seq !== 'number' || snapshot.seq < this.seq) return false;
    const job = this.job;
    if (snapshot.seq === this.seq) {
      for (const key of DETAILS) {
        if (snapshot[key] !== undefined) job[key] = snapshot[key];
      }
      return true;
    }
    const wasEnded = ENDED_STATUSES.has(job.status);
    this.seq = snapshot.seq;
    if (wasEnded && snapshot.status !== job.status) return false;
    this.job = { ...snapshot };
    this.shown = Math.max(this.shown, snapshot.progress || 0);
    return true;
  }
}

/** What only a status snapshot tells (events leave it out). */
const DETAILS = [
  'projectName', 'tasks', 'warnings', 'message', 'errorMessage', 'fileSize', 'downloadUrl',
  'createdAt', 'startedAt', 'completedAt', 'cancelledAt', 'failedAt', 'expiresAt', 'expired',
  'processingTimeMs', 'attempts', 'options',
];

/**
 * How many images an export takes: its selection, else the items of its per-image tasks
 * (every task but the archive has one item per image); null while that is not known yet.
 */
export function imageCount(job) {
  const selected = job.options && job.options.selectedImageCount;
  if (typeof selected === 'number') return selected;
  const perImage = (job.tasks || []).filter((t) => t.name !== 'archive').map((t) => t.itemsTotal);
  return perImage.length ? Math.max(...perImage) : null;
}

/** How the card names a job's phase. */
export function phaseLabel(view) {
  const job = view.job;
  switch (job.status) {
    case 'pending':
      return job.phase === 'queued' && job.progress > 0 ? 'queued again (resumes)' : 'queued';
    case 'processing':
      return 'processing';
    case 'failed':
      return 'failed';
    case 'cancelled':
      return 'cancelled';
    default:
      if (job.expired) return 'archive expired';
      if (job.phase === 'completed') return 'downloaded';
      if (view.downloadStarted || job.phaseProgress > 0) return 'downloading';
      return 'archive ready: download it';
  }
}

/** The live card of a job; `update` redraws it from the view. */
export class JobCard {
  constructor(view, { onCancel, onDownload, onDismiss }) {
    this.view = view;
    const id = `job-${view.id}`;
    this.title = el('h3', { class: 'card-title' });
    this.pill = el('span', { class: 'pill' });
    this.bar = el('progress', {
      class: 'bar', max: 100, value: 0, 'aria-labelledby': `${id}-label`,
    });
    this.percent = el('strong', { class: 'percent' });
    this.phase = el('span', { class: 'phase' });
    this.task = el('span', { class: 'task' });
    this.items = el('span', { class: 'items' });
    this.eta = el('span', { class: 'eta' });
    this.tasks = el('tbody');
    this.tasksTable = el('table', { class: 'tasks' },
      el('caption', { class: 'sr-only' }, 'Tasks of this export'),
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Task'), el('th', { scope: 'col' }, 'Status'),
        el('th', { scope: 'col' }, 'Items'), el('th', { scope: 'col' }, 'Progress'))),
      this.tasks);
    this.warningsSummary = el('summary');
    this.warningsList = el('ul');
    this.warnings = el('details', { class: 'warnings', hidden: true }, this.warningsSummary, this.warningsList);
    this.error = el('p', { class: 'error', role: 'alert', hidden: true });
    this.cancel = el('button', { type: 'button', class: 'cancel', onclick: () => onCancel(view) }, 'Cancel');
    this.download = el('button', { type: 'button', class: 'download primary', onclick: () => onDownload(view) }, 'Download');
    this.dismiss = el('button', { type: 'button', class: 'dismiss quiet', onclick: () => onDismiss(view) }, 'Dismiss');
    this.node = el('article', { class: 'card', id, 'data-job-id': view.id, 'aria-labelledby': `${id}-title` },
      el('div', { class: 'card-head' }, this.title, this.pill),
      el('div', { class: 'bar-wrap' },
        this.bar,
        el('span', { class: 'bar-mark', 'aria-hidden': 'true' })),
      el('div', { class: 'bar-legend', 'aria-hidden': 'true' },
        el('span', {}, 'processing 0–80 %'), el('span', {}, 'download 80–100 %')),
      el('p', { class: 'bar-text', id: `${id}-label` },
        this.percent, ' ', this.phase, this.task, this.items, this.eta),
      this.tasksTable,
      this.warnings,
      this.error,
      el('div', { class: 'actions' }, this.cancel, this.download, this.dismiss));
    this.title.id = `${id}-title`;
    this.update();
  }

  update() {
    const view = this.view;
    const job = view.job;
    const shown = Math.min(100, Math.max(0, view.shown));
    this.node.dataset.status = job.status;
    this.node.dataset.phase = job.phase;
    this.title.replaceChildren(
      job.projectName || 'Export',
      el('span', { class: 'muted' }, ` · ${formatTime(job.createdAt || job.startedAt)}`));
    this.pill.textContent = job.status;
    this.pill.dataset.status = job.status;
    // Set only upwards: the value attribute never shows less than before.
    if (shown > Number(this.bar.value)) this.bar.value = shown;
    const phase = phaseLabel(view);
    this.bar.setAttribute('aria-valuetext', `${formatPercent(shown)}, ${phase}`);
    this.percent.textContent = formatPercent(shown);
    this.phase.textContent = phase;
    this.task.textContent = job.status === 'processing' && job.currentTask ? ` · ${job.currentTask}` : '';
    this.items.textContent = job.itemsTotal ? ` · ${job.itemsCompleted} / ${job.itemsTotal} items` : '';
    const eta = job.status === 'processing' && job.estimatedTimeRemainingMs != null
      ? ` · about ${formatDuration(job.estimatedTimeRemainingMs)} left` : '';
    const size = job.status === 'completed' && job.fileSize != null ? ` · ${formatBytes(job.fileSize)}` : '';
    this.eta.textContent = eta || size;

    const ended = job.status === 'cancelled' || job.status === 'failed';
    this.tasks.replaceChildren(...(job.tasks || []).map((task) => el('tr', { 'data-task': task.name },
      el('th', { scope: 'row' }, task.name),
      el('td', { class: 'task-status' }, ended && task.status === 'running' ? 'stopped' : task.status),
      el('td', {}, task.itemsTotal ? `${task.itemsCompleted} / ${task.itemsTotal}` : '–'),
      el('td', {}, el('progress', {
        class: 'mini', max: 100, value: Math.round(task.progress || 0), 'aria-label': `${task.name} progress`,
      })))));
    this.tasksTable.hidden = !(job.tasks && job.tasks.length);

    const warnings = job.warnings || [];
    this.warnings.hidden = warnings.length === 0;
    this.warningsSummary.textContent = `${warnings.length} warning${warnings.length === 1 ? '' : 's'}`;
    this.warningsList.replaceChildren(...warnings.map((w) => el('li', {}, w)));

    const errorText = job.status === 'failed' ? job.errorMessage || 'The export failed.'
      : job.status === 'cancelled' ? `Cancelled${job.cancelReason && job.cancelReason !== 'user_cancelled' ? ` (${job.cancelReason.replace(/_/g, ' ')})` : ''}.`
        : this.actionError || '';
    this.error.textContent = errorText;
    this.error.hidden = !errorText;
    this.error.classList.toggle('neutral', job.status === 'cancelled');

    this.cancel.hidden = !view.live;
    this.cancel.disabled = Boolean(this.busy);
    this.download.hidden = !(job.status === 'completed' && !job.expired && job.downloadUrl);
    this.download.disabled = Boolean(this.busy);
    this.download.textContent = view.downloadStarted ? 'Download again' : 'Download';
    this.dismiss.hidden = view.live || (job.status === 'completed' && job.phase === 'downloading' && view.downloadStarted);
  }

  /** Shows an error of an action (cancel, download) until the next one. */
  setActionError(message) {
    this.actionError = message;
    this.update();
  }
}
