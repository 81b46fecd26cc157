// The result grid: lazily loaded thumbnails; each one is a link that opens the viewer.

import { thumbnailUrl } from "./api.js";
import { altText, fileName } from "./format.js";

const THUMB_SIZE = 256; // px on the long side; cells are at most ~200 CSS px, so this stays sharp on 1.5x screens

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
      img.src = thumbnailUrl(hit.id, THUMB_SIZE);
      img.alt = altText(hit);
      img.loading = "lazy";
      img.decoding = "async";
      if (hit.width && hit.height) { // reserve the photo's shape so the grid doesn't jump while loading
        img.width = hit.width;
        img.height = hit.height;
      }
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
