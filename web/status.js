// The album's index status: counts, a progress bar while a scan runs, failed files and the rescan button.

import * as api from "./api.js";
import { plural } from "./format.js";

const FAST_POLL_MS = 500; // while a scan runs, so short scans still show their progress
const SLOW_POLL_MS = 15000; // otherwise, to notice periodic rescans

export class StatusPanel {
  /** @param {(status: object, previous: object|null) => void} onUpdate  called after every successful poll */
  constructor(onUpdate) {
    this.onUpdate = onUpdate;
    this.last = null;
    this.timer = 0;
    this.watchUntil = 0; // poll fast until then: a requested scan may take a moment to start
    this.counts = document.getElementById("counts");
    this.progress = document.getElementById("progress");
    this.failed = document.getElementById("failed");
    this.rescanButton = document.getElementById("rescan");
    this.rescanButton.addEventListener("click", () => this.rescan());
    document.addEventListener("visibilitychange", () => { if (!document.hidden) this.poll(); });
  }

  async poll() {
    clearTimeout(this.timer);
    let next = SLOW_POLL_MS;
    try {
      const status = await api.status();
      const previous = this.last;
      this.last = status;
      this.render(status);
      this.onUpdate(status, previous);
      if (status.progress.running || Date.now() < this.watchUntil) next = FAST_POLL_MS;
    } catch (error) {
      if (error.status === 401) return; // the login form is up; logging in reloads the page
      this.counts.textContent = error.message;
      this.counts.classList.add("error");
      next = 5000;
    }
    if (!document.hidden) this.timer = setTimeout(() => this.poll(), next);
  }

  async rescan() {
    this.rescanButton.disabled = true;
    this.watchUntil = Date.now() + 5000;
    try {
      await api.refresh();
    } catch (error) {
      this.counts.textContent = error.message;
      this.counts.classList.add("error");
    }
    await this.poll();
  }

  render(status) {
    const { progress } = status;
    this.counts.classList.remove("error");
    const parts = [`${plural(status.indexed, "photo")} indexed`];
    if (status.pending) parts.push(`${status.pending.toLocaleString()} waiting`);
    if (status.failed) parts.push(`${status.failed.toLocaleString()} failed`);
    // A model switch: the current model answers while the new one embeds every photo, then takes over.
    if (status.switch) {
      parts.push(`switching to ${status.switch.model_id}: ${status.switch.done.toLocaleString()} of ` +
        `${status.switch.total.toLocaleString()} photos re-embedded`);
    }
    let text = parts.join(" · ");
    if (progress.running) {
      const phase = progress.phase === "scanning" ? "Scanning folders" : "Indexing";
      const of = progress.total ? ` ${progress.done.toLocaleString()} of ${progress.total.toLocaleString()}` : "";
      text = `${phase}${of}… ${text}`;
    } else if (progress.phase === "error" && progress.message) {
      text = `Last scan failed: ${progress.message}. ${text}`;
    }
    this.counts.textContent = text;
    this.counts.title = status.roots.length ? `Album: ${status.roots.join(", ")} · model ${status.model_id}` : "";

    this.progress.hidden = !progress.running;
    if (progress.running) {
      if (progress.total > 0) {
        this.progress.max = progress.total;
        this.progress.value = Math.min(progress.done, progress.total);
      } else {
        this.progress.removeAttribute("value"); // indeterminate while the folders are being listed
      }
    }
    this.rescanButton.disabled = progress.running;
    this.rescanButton.textContent = progress.running ? "Scanning…" : "Rescan album";
    this.renderFailures(status);
  }

  renderFailures(status) {
    const errors = status.errors || [];
    this.failed.hidden = errors.length === 0;
    if (!errors.length) return;
    // errors_total: failed files plus what the last scan could not walk (links outside, loops, lost folders)
    const total = Math.max(status.errors_total ?? status.failed, errors.length);
    document.getElementById("failed-summary").textContent =
      `${plural(total, "file or folder", "files or folders")} could not be read` +
      (total > errors.length ? ` (first ${errors.length} shown)` : "");
    const list = document.getElementById("failed-list");
    list.replaceChildren(...errors.map((failure) => {
      const item = document.createElement("li");
      const path = document.createElement("code");
      path.textContent = failure.path;
      item.append(path, document.createTextNode(`: ${failure.error}`));
      return item;
    }));
  }
}
