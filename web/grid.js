// The result grid: lazily loaded thumbnails; each one is a link that opens the viewer.

import { thumbnailUrl } from "./api.js";
import { altText, fileName } from "./format.js";

// Thumbnail widths the browser picks from: 256 px suits a ~170 CSS px cell on an ordinary screen, 384 px a
// phone's ~125 CSS px cell at 3x. Both are sizes the server caches.
const THUMB_SIZES = [256, 384];
const CELL_SIZES = "(max-width: 640px) 34vw, 200px";

export class Grid {
  /**
   * @param {HTMLUListElement} list
   * @param {(index: number) => void} onOpen  called with the result's index when a thumbnail is activated
   * @param {(hit: object) => string} hrefFor  the URL that shows this photo in the viewer
   */
  constructor(list, onOpen, hrefFor) {
    this.list = list;
    this.hits = [];
    this.hrefFor = hrefFor;
    list.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-index]");
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      onOpen(Number(link.dataset.index));
    });
  }

  clear() {
    this.hits = [];
    this.list.replaceChildren();
  }

  append(hits) {
    const items = document.createDocumentFragment();
    for (const hit of hits) {
      const index = this.hits.length;
      this.hits.push(hit);
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = this.hrefFor(hit);
      link.dataset.index = String(index);
      link.dataset.id = String(hit.id);
      link.title = hit.path;
      const img = document.createElement("img");
      img.loading = "lazy"; // before src, or the browser starts every download at once
      img.decoding = "async";
      img.sizes = CELL_SIZES;
      img.srcset = THUMB_SIZES.map((size) => `${thumbnailUrl(hit.id, size)} ${size}w`).join(", ");
      img.src = thumbnailUrl(hit.id, THUMB_SIZES[0]);
      img.alt = altText(hit);
      img.addEventListener("error", () => item.classList.add("broken"), { once: true });
      const caption = document.createElement("span");
      caption.className = "cell-name";
      caption.textContent = fileName(hit.path);
      link.append(img, caption);
      item.append(link);
      items.append(item);
    }
    this.list.append(items);
  }

  /** Moves keyboard focus to a result's link (after the viewer closes, so keyboard users keep their place). */
  focus(index) {
    this.list.querySelector(`a[data-index="${index}"]`)?.focus();
  }
}
