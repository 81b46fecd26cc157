// The page: search as you type, paging, the viewer, search by photo, and the URL as the page's state.

import * as api from "./api.js";
import { fileName, plural } from "./format.js";
import { Grid } from "./grid.js";
import { LoginPanel } from "./login.js";
import { emptyState, sameQuery, stateFromUrl, urlFromState } from "./state.js";
import { StatusPanel } from "./status.js";
import { Viewer } from "./viewer.js";

const PAGE = 48; // results per request: a few screens of thumbnails
const TYPING_DEBOUNCE_MS = 250;
const TYPING_MERGE_MS = 2000; // keystrokes this close together share one history entry
const EXAMPLES = ["a cat", "a cup of coffee", "people on a beach", "a dog running on grass", "a city at night"];

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const input = $("q");
const sortSelect = $("sort");
const fromInput = $("from");
const toInput = $("to");
const summary = $("summary");
const message = $("message");
const moreButton = $("more");
const weakerButton = $("weaker");

let state = emptyState();
let upload = null; // {file, key} while the results are for an uploaded photo (not expressible in a URL)
const uploads = new Map(); // history key -> File, so back/forward can return to an upload's results
let similarSource = null; // the photo "more like this" started from, for the summary line
let generation = 0; // bumps with every new search; answers for an older one are dropped
let controller = null;
let loading = false;
let exhausted = true;
let lastTypingPush = 0;
let lastTookMs = 0; // the server's time for the latest page, for the summary line
let albumStatus = null;
let searchCut = null; // the min_score of the search on screen, fixed when it starts (see cutoff())
let statusReady = null; // resolves after the first status poll
let syncingHistory = false; // true while the viewer follows a URL change, so it doesn't write the URL back

const grid = new Grid($("grid"), (index) => openResult(index), (hit) => urlFromState({ ...state, view: hit.id }) || "./");
const viewer = new Viewer({
  count: () => grid.hits.length,
  hit: (i) => grid.hits[i],
  canLoadMore: () => !exhausted,
  more: () => loadMore(),
  changed: (hit) => viewerChanged(hit),
  similar: (hit) => searchSimilar(hit),
});
const statusPanel = new StatusPanel((status, previous) => {
  albumStatus = status;
  // A scan just finished: an empty page may now have answers.
  if (previous?.progress.running && !status.progress.running && grid.hits.length === 0 && hasQuery()) runSearch();
  // The start page says whether there is anything to search yet (without hiding an error shown meanwhile,
  // e.g. a picked file that is no photo, when the first status arrives after it).
  const landingShown = message.hidden || /\b(landing|empty)\b/.test(message.className);
  if (!hasQuery() && landingShown && (previous === null || (previous.indexed === 0) !== (status.indexed === 0))) {
    showLanding();
  }
});

function hasQuery() {
  return Boolean(upload || state.similar != null || state.q);
}

// ---- navigation: every change of what is shown goes through here and the URL ----

function navigate(next, how) {
  const url = urlFromState(next) || location.pathname;
  // "viewer" marks the entry pushed on opening the viewer; paging through photos keeps that mark.
  const viewerEntry = how === "viewer" || (how === "replace" && next.view != null && Boolean(history.state?.viewer));
  const entry = { upload: next.uploadKey ?? null, viewer: viewerEntry };
  if (how === "replace") history.replaceState(entry, "", url);
  else history.pushState(entry, "", url);
}

function setState(next, how, uploaded = null) {
  const searchChanged = !sameQuery(state, next) || uploaded !== upload;
  state = { ...next };
  upload = uploaded;
  if (how) navigate({ ...state, uploadKey: upload?.key }, how);
  syncControls();
  if (searchChanged) runSearch();
}

function syncControls() {
  if (document.activeElement !== input || input.value.trim() !== state.q) input.value = state.q;
  sortSelect.value = state.sort;
  fromInput.value = state.from;
  toInput.value = state.to;
  toInput.min = state.from;
  fromInput.max = state.to;
  document.title = state.q ? `“${state.q}” — clipalbum` : upload || state.similar != null
    ? "Similar photos — clipalbum" : "clipalbum";
}

window.addEventListener("popstate", (event) => {
  const next = stateFromUrl(location.search);
  const key = event.state?.upload;
  const uploaded = key != null && uploads.has(key) ? { file: uploads.get(key), key } : null;
  syncingHistory = true;
  try {
    if (!sameQuery(state, next) || uploaded?.key !== upload?.key) {
      state = next;
      upload = uploaded;
      syncControls();
      runSearch();
    } else {
      state = next;
      showViewFromState();
    }
  } finally {
    syncingHistory = false;
  }
});

// ---- searching ----

async function runSearch() {
  generation += 1;
  const mine = generation;
  controller?.abort();
  controller = new AbortController();
  grid.clear();
  exhausted = true;
  loading = false;
  moreButton.hidden = true;
  weakerButton.hidden = true;
  hideMessage();
  if (!hasQuery()) {
    summary.textContent = "";
    showLanding();
    showViewFromState();
    return;
  }
  summary.textContent = "Searching…";
  await statusReady; // it says the model's cut-off for weak matches
  if (mine !== generation) return;
  searchCut = cutoff(); // one cut for every page of this search, whatever later status polls say
  await fetchPage(mine, 0);
  if (mine === generation) showViewFromState();
}

/** The score below which a text search's results are left out until "Show weaker matches": the model's
 * measured cut-off (from /api/status), so that a query matching nothing doesn't fill the page with noise.
 * Photo-to-photo searches score on another scale and are never cut. */
function cutoff() {
  if (upload || state.similar != null || !state.q || state.weak) return null;
  return albumStatus?.suggested_min_score ?? null;
}

/** Shows the weak matches too: by relevance they continue the list; by date the list is made again. */
function showWeaker() {
  state = { ...state, weak: true, view: null };
  navigate({ ...state, uploadKey: upload?.key }, "push");
  if (state.sort !== "relevance") { runSearch(); return; }
  searchCut = null;
  hideMessage();
  weakerButton.hidden = true;
  exhausted = false;
  loadMore();
}
weakerButton.addEventListener("click", showWeaker);

function loadMore() {
  if (loading || exhausted) return Promise.resolve(false);
  return fetchPage(generation, grid.hits.length);
}

/** Fetches one page of results for the current search; true when it added any. */
async function fetchPage(mine, offset) {
  loading = true;
  moreButton.disabled = true;
  const signal = controller.signal;
  try {
    const cut = searchCut;
    const answer = upload ? await api.searchByPhoto(upload.file, state, PAGE, offset, signal)
      : state.similar != null ? await api.searchSimilar(state, PAGE, offset, signal)
      : await api.searchText(state, PAGE, offset, signal, cut);
    if (mine !== generation) return false;
    if (state.similar != null && (!similarSource || similarSource.id !== state.similar)) describeSimilar(mine);
    grid.append(answer.results);
    // A short page means the end; the server's echo of k counts, since it may cap what was asked.
    exhausted = answer.results.length < (answer.k > 0 ? Math.min(answer.k, PAGE) : PAGE);
    moreButton.hidden = exhausted;
    weakerButton.hidden = !(exhausted && cut != null && grid.hits.length > 0);
    await showSummary(answer.took_ms);
    if (viewer.isOpen) viewer.updateNav();
    requestAnimationFrame(fillScreen);
    return answer.results.length > 0;
  } catch (error) {
    if (error.name === "AbortError" || mine !== generation) return false;
    summary.textContent = "";
    showMessage("error", error.message, offset === 0 ? "Try again" : "Retry loading more",
      offset === 0 ? () => runSearch() : () => { hideMessage(); loadMore(); });
    return false;
  } finally {
    if (mine === generation) {
      loading = false;
      moreButton.disabled = false;
    }
  }
}

async function showSummary(tookMs) {
  lastTookMs = tookMs;
  const count = grid.hits.length;
  const what = upload ? `Photos like ${fileName(upload.file.name || "your photo")}`
    : state.similar != null ? `Photos like ${similarSource ? fileName(similarSource.path) : `photo ${state.similar}`}`
    : null;
  const order = state.sort === "date" ? ", by capture date" : "";
  const found = `${plural(count, "photo")}${exhausted ? "" : " so far"}${order}`;
  const cut = count > 0 && exhausted && searchCut != null ? " · weaker matches left out" : "";
  summary.textContent = `${what ? `${what}: ` : ""}${found} in ${Math.round(tookMs)} ms${cut}`;
  if (count > 0) return;
  await statusReady;
  const status = albumStatus;
  if (status && status.indexed === 0) {
    summary.textContent = "";
    showMessage("empty", status.progress.running
      ? "Your album is being indexed. Photos will appear here as soon as they are ready."
      : `Your album has no indexed photos yet${status.roots.length ? ` (looking in ${status.roots.join(", ")})` : ""}. `
        + "Add photos there and press “Rescan album”.");
    return;
  }
  if (searchCut != null) {
    showMessage("none", `No strong matches for “${state.q}”${state.from || state.to ? " in this date range" : ""}.`,
      "Show weaker matches", showWeaker);
    return;
  }
  const dated = state.from || state.to;
  showMessage("none", dated
    ? "No photos match in this date range. Photos without a recorded capture date are left out; try “Any date”."
    : state.q ? `No photos match “${state.q}”. Try describing it differently.` : "No similar photos found.");
}

async function describeSimilar(mine) {
  try {
    const info = await api.photoInfo(state.similar);
    if (mine !== generation) return;
    similarSource = info;
    if (!loading) await showSummary(lastTookMs);
  } catch {
    // the summary keeps saying "photo ID"; the results themselves are what matters
  }
}

// ---- messages ----

function showMessage(kind, text, actionLabel, action) {
  message.className = `message ${kind}`;
  message.setAttribute("role", kind === "error" ? "alert" : "status");
  const paragraph = document.createElement("p");
  paragraph.textContent = text;
  message.replaceChildren(paragraph);
  if (actionLabel) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = actionLabel;
    button.addEventListener("click", action);
    message.append(button);
  }
  message.hidden = false;
}

function hideMessage() {
  message.hidden = true;
  message.replaceChildren();
}

function showLanding() {
  if (albumStatus && albumStatus.indexed === 0) {
    showMessage("empty", albumStatus.progress.running
      ? "Your album is being indexed; you can search as soon as the first photos are ready."
      : `No photos are indexed yet${albumStatus.roots.length ? ` (looking in ${albumStatus.roots.join(", ")})` : ""}.`
        + " Add photos there and press “Rescan album”.");
    return;
  }
  message.className = "message landing";
  message.removeAttribute("role");
  const intro = document.createElement("p");
  intro.textContent = "Describe a photo in plain English, drop a photo here, or try:";
  const examples = document.createElement("p");
  examples.className = "examples";
  for (const text of EXAMPLES) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chip";
    button.textContent = text;
    button.addEventListener("click", () => { input.value = text; submitQuery("push"); });
    examples.append(button);
  }
  message.replaceChildren(intro, examples);
  message.hidden = false;
}

// ---- the viewer and the URL ----

function openResult(index) {
  const hit = grid.hits[index];
  if (hit) viewer.show(hit, index);
}

function viewerChanged(hit) {
  if (syncingHistory) return;
  if (hit) {
    if (state.view === hit.id) return;
    const opening = state.view == null;
    state = { ...state, view: hit.id };
    navigate({ ...state, uploadKey: upload?.key }, opening ? "viewer" : "replace");
    return;
  }
  if (state.view == null) return;
  const focusIndex = grid.hits.findIndex((h) => h.id === state.view);
  state = { ...state, view: null };
  if (history.state?.viewer) history.back(); // the entry we pushed on opening: back returns to the grid
  else navigate({ ...state, uploadKey: upload?.key }, "replace");
  if (focusIndex >= 0) grid.focus(focusIndex);
}

/** Opens or closes the viewer to match state.view (after a reload, a bookmark, or back/forward). */
async function showViewFromState() {
  if (state.view == null) { viewer.close(); return; }
  if (viewer.hit?.id === state.view && viewer.isOpen) return;
  const index = grid.hits.findIndex((h) => h.id === state.view);
  syncingHistory = true;
  try {
    if (index >= 0) { viewer.show(grid.hits[index], index); return; }
  } finally {
    syncingHistory = false;
  }
  const wanted = state.view;
  try {
    const info = await api.photoInfo(wanted);
    if (state.view !== wanted) return;
    syncingHistory = true;
    try { viewer.show({ score: null, ...info }, -1); } finally { syncingHistory = false; }
  } catch (error) {
    showMessage("error", error.message);
  }
}

function searchSimilar(hit) {
  similarSource = hit;
  setState({ ...state, q: "", similar: hit.id, view: null, weak: false }, "push", null);
  window.scrollTo({ top: 0 });
}

// ---- input: typing, options, photos ----

function submitQuery(how) {
  const q = input.value.trim();
  if (q === state.q && state.similar == null && !upload) return;
  setState({ ...state, q, similar: null, view: null, weak: false }, how, null);
}

let typingTimer = 0;
input.addEventListener("input", () => {
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => {
    // One history entry per burst of typing, not per keystroke.
    const now = Date.now();
    const how = now - lastTypingPush < TYPING_MERGE_MS && state.q ? "replace" : "push";
    lastTypingPush = now;
    submitQuery(how);
  }, TYPING_DEBOUNCE_MS);
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(typingTimer);
  lastTypingPush = 0;
  const q = input.value.trim();
  if (q === state.q && state.similar == null && !upload) runSearch(); // Enter again: search again
  else submitQuery("push");
});

sortSelect.addEventListener("change", () => setState({ ...state, sort: sortSelect.value, view: null }, "push", upload));
for (const field of [fromInput, toInput]) {
  field.addEventListener("change", () => {
    // Browsers give "" while a date is half typed; only a whole date (or a cleared field) changes the search.
    if (field.value && !/^\d{4}-\d{2}-\d{2}$/.test(field.value)) return;
    setState({ ...state, from: fromInput.value, to: toInput.value, view: null }, "push", upload);
  });
}
$("clear-dates").addEventListener("click", () => setState({ ...state, from: "", to: "", view: null }, "push", upload));
moreButton.addEventListener("click", () => loadMore());
$("home").addEventListener("click", (event) => {
  event.preventDefault();
  input.value = "";
  setState(emptyState(), "push", null);
  input.focus();
});

let uploadCount = 0;
function searchByPhoto(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showMessage("error", `${file.name} is not a photo (its type is ${file.type}).`);
    return;
  }
  uploadCount += 1;
  const key = `${Date.now()}-${uploadCount}`;
  uploads.set(key, file);
  input.value = "";
  setState({ ...state, q: "", similar: null, view: null, weak: false }, "push", { file, key });
  window.scrollTo({ top: 0 });
}

$("pick").addEventListener("change", (event) => {
  searchByPhoto(event.target.files[0]);
  event.target.value = ""; // picking the same file again still searches
});

const drop = $("drop");
let dragDepth = 0;
const carriesFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  drop.hidden = false;
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) drop.hidden = true;
});
window.addEventListener("dragover", (event) => { if (carriesFiles(event)) event.preventDefault(); });
window.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  drop.hidden = true;
  searchByPhoto(event.dataTransfer.files[0]);
});
window.addEventListener("paste", (event) => {
  const file = Array.from(event.clipboardData?.files || []).find((f) => f.type.startsWith("image/"));
  if (file) { event.preventDefault(); searchByPhoto(file); }
});

document.addEventListener("keydown", (event) => {
  // "/" jumps to the search box, as on many sites, unless one is typing somewhere already.
  if (event.key === "/" && !viewer.isOpen && !event.target.closest("input, select, textarea")) {
    event.preventDefault();
    input.focus();
    input.select();
  }
});

/** Loads another page while the grid's end is still on screen (a tall window, or small photos). */
function fillScreen() {
  const sentinel = $("sentinel").getBoundingClientRect();
  if (!exhausted && !loading && grid.hits.length && sentinel.top < window.innerHeight + 600) loadMore();
}

// More results when the end of the grid comes near (the button stays for keyboards and old browsers).
if ("IntersectionObserver" in window) {
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && grid.hits.length) loadMore();
  }, { rootMargin: "600px" }).observe($("sentinel"));
}

// ---- start ----

new LoginPanel().checkSession();
statusReady = statusPanel.poll();
state = stateFromUrl(location.search);
history.replaceState({ upload: null, viewer: false }, "", location.href);
syncControls();
runSearch();
// Ready to type on a computer; on a phone, popping up the keyboard unasked would hide the page.
if (!state.q && state.similar == null && matchMedia("(pointer: fine)").matches) input.focus();
