// "Enhance" in the viewer: a quick preview job compared with the shown photo by a before/after divider, four
// corrections and a prompt that re-run it, and a full-size job that ends in a download.

import * as api from "./api.js";
import { plural } from "./format.js";

const PREVIEW_SIDE = 1024; // the viewer's own size (viewer.js): the preview lines up with the thumbnail shown
const POLL_MS = 250; // a preview takes a few seconds; this keeps its progress bar moving
const SETTLE_MS = 400; // a dragged slider or a typed word settles before a job starts (each one costs seconds)
const FINISHED = new Set(["done", "failed", "cancelled"]);

function signed(value, digits) {
  const rounded = Number(value.toFixed(digits));
  const sign = rounded > 0 ? "+" : rounded < 0 ? "−" : "±";
  return `${sign}${Math.abs(rounded).toFixed(digits)}`;
}

/**
 * The corrections, by their field in the server's EnhanceBody. `reported` names the field of the finished job's
 * `applied` that says what the model chose on Auto: temperature comes back only as red/blue gains (not a
 * kelvin figure a person could compare), so it just says "Auto".
 */
const CORRECTIONS = [
  { key: "denoise", format: (v) => `${Math.round(v * 100)} %`, reported: "denoise" },
  { key: "exposure", format: (v) => `${signed(v, 1)} EV`, reported: "exposure" },
  { key: "contrast", format: (v) => `+${Math.round(v * 100)} %`, reported: "contrast" },
  { key: "temperature", format: (v) => `${Math.round(v)} K`, reported: null },
];

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/**
 * Polls a job until it finishes. Answers null as soon as `current()` turns false (a newer job replaced it, or
 * the panel was reset): the caller then drops it, whatever the server says about it later.
 */
async function follow(job, current, onUpdate) {
  while (!FINISHED.has(job.state)) {
    await sleep(POLL_MS);
    if (!current()) return null;
    job = await api.enhanceJob(job.id);
    if (!current()) return null;
    onUpdate(job);
  }
  return job;
}

/** A message a person can act on, from an API error; `options` is what was asked for. */
function explain(error, options) {
  if (!(error instanceof api.ApiError)) return `Something went wrong: ${error.message}`;
  const detail = error.detail || error.message;
  switch (error.status) {
    case 400: return `The server refused these settings: ${detail}`;
    case 409: return options?.prompt ? `The prompt cannot be used: ${detail}` : `Not possible now: ${detail}`;
    case 404: return `Not found: ${detail}`;
    case 422: return `This photo cannot be enhanced: ${detail}`;
    case 503: return `Enhancing is not available right now: ${detail}`;
    default: return error.message;
  }
}

function waiting(job, what) {
  if (job.state === "queued" && job.queue_position) return `${what}: waiting for ${plural(job.queue_position, "job")} ahead…`;
  return `${what}…`;
}

export class EnhancePanel {
  /** @param {HTMLButtonElement} toggle  the viewer's "Enhance" button (its aria-expanded follows the panel) */
  constructor(toggle) {
    this.toggleButton = toggle;
    this.photo = null; // the photo being enhanced while the panel is open
    this.previewRun = 0; // bumps with every preview (and on reset): answers for an older one are dropped
    this.previewJob = null; // the preview job not seen finished yet: what to cancel
    this.saveRun = 0;
    this.saveJob = null;
    this.saving = false;
    this.afterUrl = null; // object URL of the preview on screen
    this.timer = 0;
    const $ = (id) => document.getElementById(id);
    this.panel = $("enhance");
    this.status = $("enhance-status");
    this.progress = $("enhance-progress");
    this.error = $("enhance-error");
    this.prompt = $("enhance-prompt");
    this.saveButton = $("enhance-save");
    this.saveStatus = $("enhance-save-status");
    this.saveProgress = $("enhance-save-progress");
    this.compare = $("compare");
    this.after = $("enhance-after");
    this.split = $("compare-split");
    this.controls = CORRECTIONS.map((c) => ({
      ...c, range: $(`enhance-${c.key}`), auto: $(`enhance-${c.key}-auto`), output: $(`enhance-${c.key}-value`),
      initial: $(`enhance-${c.key}`).value,
      chosen: null, // the model's value on Auto, from the latest preview
    }));
    for (const control of this.controls) {
      control.range.addEventListener("input", () => { // moving a slider means "this value, not Auto"
        control.auto.checked = false;
        this.label(control);
        this.schedulePreview();
      });
      control.auto.addEventListener("change", () => {
        control.chosen = null; // the model will choose again; its last choice was for other settings
        this.label(control);
        this.schedulePreview();
      });
    }
    this.prompt.addEventListener("input", () => this.schedulePreview());
    this.prompt.addEventListener("keydown", (event) => { if (event.key === "Enter") this.schedulePreview(0); });
    $("enhance-auto-all").addEventListener("click", () => {
      this.resetControls();
      this.schedulePreview(0);
    });
    this.saveButton.addEventListener("click", () => { if (this.saving) this.cancelSave(); else this.save(); });
    this.split.addEventListener("input", () => this.showSplit());
    this.showSplit();
  }

  get isOpen() { return !this.panel.hidden; }

  /** Opens the panel for `photo` (the viewer's hit) and starts its preview, or closes it. */
  toggle(photo) {
    if (this.isOpen) this.reset();
    else this.open(photo);
  }

  open(photo) {
    this.reset();
    this.photo = photo;
    this.panel.hidden = false;
    this.toggleButton.setAttribute("aria-expanded", "true");
    this.schedulePreview(0);
  }

  /** Cancels what runs (DELETE), takes the preview off the photo and closes the panel: on closing the viewer,
   * on another photo, or on the Enhance button. */
  reset() {
    clearTimeout(this.timer);
    this.previewRun += 1;
    this.saveRun += 1;
    for (const job of [this.previewJob, this.saveJob]) if (job) this.cancel(job);
    this.previewJob = this.saveJob = null;
    this.photo = null;
    this.setSaving(false);
    this.compare.hidden = true;
    this.after.removeAttribute("src");
    if (this.afterUrl) URL.revokeObjectURL(this.afterUrl);
    this.afterUrl = null;
    this.split.value = "50";
    this.showSplit();
    this.resetControls();
    this.status.textContent = "";
    this.saveStatus.textContent = "";
    this.progress.hidden = true;
    this.showError(null);
    this.panel.hidden = true;
    this.toggleButton.setAttribute("aria-expanded", "false");
  }

  resetControls() {
    for (const control of this.controls) {
      control.auto.checked = true;
      control.chosen = null;
      control.range.value = control.initial;
      this.label(control);
    }
    this.prompt.value = "";
  }

  /** The request's corrections: a field on Auto is left out, so the model chooses it. */
  options() {
    const options = {};
    for (const control of this.controls) if (!control.auto.checked) options[control.key] = Number(control.range.value);
    const prompt = this.prompt.value.trim();
    if (prompt) options.prompt = prompt;
    return options;
  }

  label(control) {
    let text;
    if (!control.auto.checked) text = control.format(Number(control.range.value));
    else text = control.chosen === null ? "Auto" : `Auto: ${control.format(control.chosen)}`;
    control.output.textContent = text;
    control.range.setAttribute("aria-valuetext", text);
  }

  showSplit() {
    const value = Number(this.split.value);
    this.compare.style.setProperty("--split", `${value}%`);
    this.split.setAttribute("aria-valuetext", `original on the left ${value} %, enhanced on the right ${100 - value} %`);
  }

  showError(message) {
    this.error.textContent = message || "";
    this.error.hidden = !message;
  }

  /** Sets a live region's text only when it changes, so a screen reader hears each step once, not every poll. */
  say(region, text) {
    if (region.textContent !== text) region.textContent = text;
  }

  schedulePreview(delay = SETTLE_MS) {
    clearTimeout(this.timer);
    if (this.photo) this.timer = setTimeout(() => this.preview(), delay);
  }

  /**
   * Starts a job for `photo` and follows it to its end, keeping `this[slot]` on its latest state (what a reset
   * cancels) and `bar` and `region` on its progress. Null when `current()` turns false on the way (a job
   * started meanwhile is cancelled).
   */
  async runJob(photo, options, current, slot, bar, region, what) {
    let job = await api.enhancePhoto(photo.id, options);
    if (!current()) { this.cancel(job); return null; }
    this[slot] = job;
    job = await follow(job, current, (update) => {
      this[slot] = update;
      bar.value = update.progress;
      this.say(region, waiting(update, what()));
    });
    if (job) this[slot] = null;
    return job;
  }

  /** Cancels a job, not minding the answer (it may have finished, or the server may be gone). */
  cancel(job) {
    api.cancelEnhanceJob(job.id).catch(() => {});
  }

  async preview() {
    const run = ++this.previewRun;
    const photo = this.photo;
    const current = () => run === this.previewRun && this.photo === photo;
    const options = { ...this.options(), preview: PREVIEW_SIDE };
    try {
      const previous = this.previewJob; // still running: its result would be stale, and it holds the queue
      this.previewJob = null;
      if (previous) await api.cancelEnhanceJob(previous.id).catch(() => {});
      if (!current()) return;
      this.showError(null);
      this.say(this.status, this.compare.hidden ? "Enhancing a preview…" : "Updating the preview…");
      this.progress.value = 0;
      this.progress.hidden = false;
      const job = await this.runJob(photo, options, current, "previewJob", this.progress, this.status,
        () => (this.compare.hidden ? "Enhancing a preview" : "Updating the preview"));
      if (!job) return;
      if (job.state !== "done") {
        this.progress.hidden = true;
        this.say(this.status, "");
        this.showError(job.state === "failed" ? `Enhancing failed: ${job.error || "the server gave no reason"}`
          : "The preview was cancelled.");
        return;
      }
      let blob;
      try {
        blob = await api.jobResult(job);
      } finally {
        this.cancel(job); // forgets it: the page keeps the image, the server need not
      }
      if (!current()) return;
      if (!(await this.showAfter(blob, current))) return;
      for (const control of this.controls) {
        const chosen = control.reported && job.applied ? job.applied[control.reported] : null;
        if (control.auto.checked && typeof chosen === "number") {
          control.chosen = chosen;
          control.range.value = String(chosen); // where a person's own adjustment would start from
        }
        this.label(control);
      }
      this.progress.hidden = true;
      this.say(this.status, "Preview ready: drag across the photo to compare before and after.");
    } catch (error) {
      if (!current()) return;
      this.progress.hidden = true;
      this.say(this.status, "");
      this.showError(explain(error, options));
    }
  }

  /** Puts a preview over the photo; the previous one stays until this one is decoded, so nothing flickers.
   * False (and nothing shown) when `current()` turned false meanwhile: another photo, or the viewer closed. */
  async showAfter(blob, current) {
    const url = URL.createObjectURL(blob);
    const probe = new Image();
    probe.src = url;
    try {
      await probe.decode();
    } catch {
      URL.revokeObjectURL(url);
      throw new Error("the enhanced preview is not an image the browser can show");
    }
    if (!current()) {
      URL.revokeObjectURL(url);
      return false;
    }
    if (this.afterUrl) URL.revokeObjectURL(this.afterUrl);
    this.afterUrl = url;
    this.after.src = url;
    this.compare.hidden = false;
    return true;
  }

  setSaving(on) {
    this.saving = on;
    this.saveButton.textContent = on ? "Cancel saving" : "Save full size";
    this.saveProgress.hidden = !on;
    if (on) this.saveProgress.value = 0;
  }

  /** Enhances the full-size photo with the panel's settings, then downloads it (the server names the file,
   * e.g. IMG-enhanced.jpg, and sends it as an attachment). */
  async save() {
    const run = ++this.saveRun;
    const photo = this.photo;
    const current = () => run === this.saveRun && this.photo === photo;
    const options = this.options();
    if (this.saveJob) this.cancel(this.saveJob); // one left running by a save whose polling failed
    this.saveJob = null;
    this.setSaving(true);
    this.showError(null);
    this.say(this.saveStatus, "Enhancing the full-size photo…");
    try {
      const job = await this.runJob(photo, options, current, "saveJob", this.saveProgress, this.saveStatus,
        () => "Enhancing the full-size photo");
      if (!job) return;
      this.setSaving(false);
      if (job.state === "done") {
        this.download(api.jobResultUrl(job));
        this.say(this.saveStatus, `Saved: the enhanced photo (${job.width} × ${job.height} px) is downloading.`);
      } else {
        this.say(this.saveStatus, "");
        this.showError(job.state === "failed" ? `Saving failed: ${job.error || "the server gave no reason"}`
          : "Saving was cancelled.");
      }
    } catch (error) {
      if (!current()) return;
      if (this.saveJob) this.cancel(this.saveJob); // its progress is unknown now: don't leave it holding the queue
      this.saveJob = null;
      this.setSaving(false);
      this.say(this.saveStatus, "");
      this.showError(explain(error, options));
    }
  }

  cancelSave() {
    this.saveRun += 1;
    if (this.saveJob) this.cancel(this.saveJob);
    this.saveJob = null;
    this.setSaving(false);
    this.say(this.saveStatus, "Saving cancelled.");
  }

  /** A download through a link, so the browser saves it under the server's file name (Content-Disposition);
   * the link lives in the panel because the modal viewer makes the rest of the page inert. */
  download(url) {
    const link = document.createElement("a");
    link.href = url;
    link.download = "";
    link.hidden = true;
    this.panel.append(link);
    link.click();
    link.remove();
  }
}
