// The photo viewer: a modal dialog with a larger image, its details, "more like this", enhancing, and arrow-key
// paging.

import { originalUrl, thumbnailUrl } from "./api.js";
import { EnhancePanel } from "./enhance.js";
import { altText, captureDate, fileName, folderOf, pixelSize } from "./format.js";

const VIEW_SIZE = 1024; // px on the long side (the largest thumbnail the server makes): sharp on a laptop, far lighter than originals
// (enhance.js's PREVIEW_SIDE is the same, so that its before and after line up)

export class Viewer {
  /**
   * @param {object} hooks
   *   count(): how many results are loaded; hit(i): the i-th result;
   *   more(): Promise<boolean> loads further results (false when there are none);
   *   changed(hit|null): the shown photo changed (null: the viewer closed);
   *   similar(hit): "more like this" was chosen.
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.index = -1; // position in the results, or -1 for a photo opened on its own (from a bookmark)
    this.hit = null;
    this.dialog = document.getElementById("viewer");
    this.img = document.getElementById("viewer-img");
    this.prevButton = document.getElementById("viewer-prev");
    this.nextButton = document.getElementById("viewer-next");
    this.prevButton.addEventListener("click", () => this.step(-1));
    this.nextButton.addEventListener("click", () => this.step(1));
    document.getElementById("viewer-close").addEventListener("click", () => this.dialog.close());
    const enhanceButton = document.getElementById("viewer-enhance");
    this.enhance = new EnhancePanel(enhanceButton);
    enhanceButton.addEventListener("click", () => { if (this.hit) this.enhance.toggle(this.hit); });
    document.getElementById("viewer-similar").addEventListener("click", () => {
      const hit = this.hit;
      this.dialog.close();
      if (hit) this.hooks.similar(hit);
    });
    this.dialog.addEventListener("keydown", (event) => {
      if (event.target.closest("input, select, textarea")) return; // the arrows move a slider or the caret there
      if (event.key === "ArrowRight") { event.preventDefault(); this.step(1); }
      else if (event.key === "ArrowLeft") { event.preventDefault(); this.step(-1); }
    });
    this.dialog.addEventListener("close", () => {
      this.enhance.reset(); // cancels its jobs: nobody is looking at them any more
      this.hit = null;
      this.img.removeAttribute("src");
      this.hooks.changed(null);
    });
    // A click on the backdrop (outside the panel) closes, as people expect of a lightbox.
    this.dialog.addEventListener("click", (event) => { if (event.target === this.dialog) this.dialog.close(); });
    // Swipe left/right on a touch screen pages like the arrow keys.
    let touchX = null;
    this.img.parentElement.addEventListener("touchstart", (event) => {
      // Not on the before/after divider: dragging it must not page.
      touchX = event.target.closest(".compare") ? null : event.touches[0].clientX;
    }, { passive: true });
    this.img.parentElement.addEventListener("touchend", (event) => {
      if (touchX === null) return;
      const dx = event.changedTouches[0].clientX - touchX;
      touchX = null;
      if (Math.abs(dx) > 50) this.step(dx < 0 ? 1 : -1);
    });
    this.img.addEventListener("error", () => { // no thumbnail at this size: fall back to the original
      if (this.hit && !this.img.src.endsWith(originalUrl(this.hit.id))) this.img.src = originalUrl(this.hit.id);
    });
  }

  get isOpen() { return this.dialog.open; }

  /** Shows result `index` (or a lone photo when index is -1). */
  show(hit, index) {
    if (hit.id !== this.hit?.id) this.enhance.reset(); // its preview and jobs were for the photo before
    this.index = index;
    this.hit = hit;
    this.img.src = thumbnailUrl(hit.id, VIEW_SIZE);
    this.img.alt = altText(hit);
    if (hit.width && hit.height) { this.img.width = hit.width; this.img.height = hit.height; }
    document.getElementById("viewer-title").textContent = fileName(hit.path);
    document.getElementById("viewer-folder").textContent = folderOf(hit);
    document.getElementById("viewer-date").textContent = hit.taken_at ? captureDate(hit.taken_at) : "not recorded";
    document.getElementById("viewer-size").textContent = pixelSize(hit);
    const score = document.getElementById("viewer-score");
    score.textContent = typeof hit.score === "number" ? hit.score.toFixed(3) : "—";
    const original = document.getElementById("viewer-original");
    original.href = originalUrl(hit.id);
    original.setAttribute("download", fileName(hit.path));
    this.updateNav();
    if (index >= 0 && index + 1 < this.hooks.count()) { // fetch the next photo now, so paging feels instant
      new Image().src = thumbnailUrl(this.hooks.hit(index + 1).id, VIEW_SIZE);
    }
    if (!this.dialog.open) this.dialog.showModal();
    this.hooks.changed(hit);
  }

  updateNav() {
    const count = this.hooks.count();
    const paged = this.index >= 0;
    this.prevButton.disabled = !paged || this.index === 0;
    this.nextButton.disabled = !paged || (this.index >= count - 1 && !this.hooks.canLoadMore());
    document.getElementById("viewer-pos").textContent = paged ? `${this.index + 1} of ${count}` : "";
  }

  async step(delta) {
    if (this.index < 0) return;
    let target = this.index + delta;
    if (target < 0) return;
    if (target >= this.hooks.count()) {
      if (!this.hooks.canLoadMore() || !(await this.hooks.more())) return;
      if (!this.dialog.open || target >= this.hooks.count()) return; // closed while loading, or nothing came
    }
    this.show(this.hooks.hit(target), target);
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }
}
