// The export dialog: every ExportOptions field with the web app's defaults, the image
// selection paged from the API, and the POST that starts the export.

import { api, el, randomKey } from './common.js';

const IMAGES_PAGE = 100;

export class ExportDialog {
  /** `onStarted(answer, project)` runs with the API's 202 answer. */
  constructor({ onStarted }) {
    this.onStarted = onStarted;
    this.dialog = document.getElementById('export-dialog');
    this.form = document.getElementById('export-form');
    this.error = document.getElementById('dialog-error');
    this.start = document.getElementById('dialog-start');
    this.picker = document.getElementById('image-picker');
    this.list = document.getElementById('image-list');
    this.more = document.getElementById('images-more');
    this.count = document.getElementById('selected-count');
    this.selected = new Set();
    this.project = null;
    this.cursor = null;
    this.loading = false;

    document.getElementById('dialog-cancel').addEventListener('click', () => this.dialog.close());
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    const transparency = this.form.elements.transparency;
    const transparencyValue = document.getElementById('transparency-value');
    transparency.addEventListener('input', () => {
      transparencyValue.textContent = Number(transparency.value).toFixed(2);
    });
    for (const radio of this.form.elements.imageScope) {
      radio.addEventListener('change', () => this.scopeChanged());
    }
    this.form.elements.includeVisualizations.addEventListener('change', () => this.vizChanged());
    this.more.addEventListener('click', () => this.loadImages());
    document.getElementById('select-loaded').addEventListener('click', () => {
      for (const box of this.list.querySelectorAll('input[type=checkbox]')) {
        box.checked = true;
        this.selected.add(box.value);
      }
      this.countChanged();
    });
    document.getElementById('select-none').addEventListener('click', () => {
      for (const box of this.list.querySelectorAll('input[type=checkbox]')) box.checked = false;
      this.selected.clear();
      this.countChanged();
    });
  }

  /** Opens the dialog for `project`, every field at its default. */
  open(project) {
    this.project = project;
    this.form.reset();
    document.getElementById('transparency-value').textContent = '0.30';
    document.getElementById('dialog-project').textContent = `“${project.name}”`;
    document.getElementById('image-total').textContent = `(${project.imageCount})`;
    this.selected.clear();
    this.list.replaceChildren();
    this.cursor = null;
    this.loadedAll = false;
    this.picker.hidden = true;
    this.more.hidden = true;
    this.idempotencyKey = randomKey();
    this.showError('');
    this.start.disabled = false;
    this.vizChanged();
    this.countChanged();
    this.dialog.showModal();
  }

  scopeChanged() {
    const selecting = this.form.elements.imageScope.value === 'selected';
    this.picker.hidden = !selecting;
    if (selecting && this.list.childElementCount === 0 && !this.loadedAll) this.loadImages();
  }

  vizChanged() {
    const on = this.form.elements.includeVisualizations.checked;
    for (const input of document.querySelectorAll('#viz-options input')) input.disabled = !on;
  }

  countChanged() {
    this.count.textContent = `${this.selected.size} selected`;
  }

  async loadImages() {
    if (this.loading || !this.project) return;
    this.loading = true;
    this.more.disabled = true;
    const project = this.project;
    try {
      const query = new URLSearchParams({ limit: String(IMAGES_PAGE) });
      if (this.cursor) query.set('cursor', this.cursor);
      const page = await api(`/api/projects/${encodeURIComponent(project.id)}/images?${query}`);
      if (this.project !== project) return;
      for (const image of page.items) {
        const box = el('input', {
          type: 'checkbox', value: image.id, checked: this.selected.has(image.id),
          onchange: (event) => {
            if (event.target.checked) this.selected.add(image.id);
            else this.selected.delete(image.id);
            this.countChanged();
          },
        });
        const size = image.width && image.height ? `${image.width}×${image.height}` : 'size unknown';
        this.list.append(el('li', {}, el('label', { class: 'check' }, box, ' ', image.name,
          el('span', { class: 'muted' }, ` · ${size} · ${image.polygonCount} cells`))));
      }
      this.cursor = page.nextCursor;
      this.loadedAll = !page.nextCursor;
      this.more.hidden = this.loadedAll;
    } catch (error) {
      this.showError(`The images could not be listed: ${error.message}`);
    } finally {
      this.loading = false;
      this.more.disabled = false;
    }
  }

  /** The options as the API takes them, or throws an Error naming the field to fix. */
  options() {
    const f = this.form.elements;
    const checked = (name) => Array.from(this.form.querySelectorAll(`input[name=${name}]:checked`), (i) => i.value);
    const number = (input, label, min, max, integer) => {
      const value = Number(input.value);
      if (input.value.trim() === '' || !Number.isFinite(value) || value < min || value > max
        || (integer && !Number.isInteger(value))) {
        input.focus();
        throw new Error(`${label} must be ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}.`);
      }
      return value;
    };
    const options = {
      includeOriginalImages: f.includeOriginalImages.checked,
      includeVisualizations: f.includeVisualizations.checked,
      includeDocumentation: f.includeDocumentation.checked,
      annotationFormats: checked('annotationFormats'),
      metricsFormats: checked('metricsFormats'),
      visualizationOptions: {
        showNumbers: f.showNumbers.checked,
        polygonColors: {
          external: f.colorExternal.value.toUpperCase(),
          internal: f.colorInternal.value.toUpperCase(),
        },
        strokeWidth: number(f.strokeWidth, 'Stroke width', 1, 10, true),
        fontSize: number(f.fontSize, 'Font size', 10, 50, true),
        transparency: number(f.transparency, 'Fill opacity', 0, 1, false),
      },
    };
    if (f.pixelToMicrometerScale.value.trim() !== '') {
      options.pixelToMicrometerScale = number(f.pixelToMicrometerScale, 'The scale', 0.001, 1000, false);
    }
    if (f.imageScope.value === 'selected') {
      if (this.selected.size === 0) throw new Error('Choose at least one image, or export all images.');
      options.selectedImageIds = Array.from(this.selected);
    }
    return options;
  }

  async submit() {
    let options;
    try {
      options = this.options();
    } catch (error) {
      this.showError(error.message);
      return;
    }
    const project = this.project;
    this.start.disabled = true;
    this.showError('');
    try {
      const answer = await api(`/api/projects/${encodeURIComponent(project.id)}/export`, {
        method: 'POST',
        body: { options, projectName: project.name },
        headers: { 'Idempotency-Key': this.idempotencyKey },
      });
      this.dialog.close();
      this.onStarted(answer, project);
    } catch (error) {
      let message = error.message;
      if (error.status === 429 && error.retryAfter) message += ` Try again in ${error.retryAfter} s.`;
      this.showError(message);
      // A refused export may be retried with other options: a fresh key, not the old answer.
      if (error.status !== 0) this.idempotencyKey = randomKey();
    } finally {
      this.start.disabled = false;
    }
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }
}
