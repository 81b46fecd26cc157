// What the page shows, as plain data, and its round trip through the URL (so bookmarks and back/forward work).

const DATE = /^\d{4}-\d{2}-\d{2}$/;
const SORTS = new Set(["relevance", "date"]);

/** The default view: nothing searched yet. */
export function emptyState() {
  // weak: the text search's weak matches too (past the model's cut-off), after "Show weaker matches".
  return { q: "", similar: null, sort: "relevance", from: "", to: "", view: null, weak: false };
}

/** Reads a state from a URL's query string; anything malformed falls back to the default. */
export function stateFromUrl(search) {
  const params = new URLSearchParams(search);
  const state = emptyState();
  state.q = (params.get("q") || "").trim();
  state.similar = positiveInt(params.get("similar"));
  if (SORTS.has(params.get("sort"))) state.sort = params.get("sort");
  if (DATE.test(params.get("from") || "")) state.from = params.get("from");
  if (DATE.test(params.get("to") || "")) state.to = params.get("to");
  state.view = positiveInt(params.get("view"));
  state.weak = params.get("all") === "1";
  return state;
}

/** The query string for a state (only what differs from the default), with a leading "?" or empty. */
export function urlFromState(state) {
  const params = new URLSearchParams();
  if (state.similar != null) params.set("similar", String(state.similar));
  else if (state.q) params.set("q", state.q);
  if (state.sort !== "relevance") params.set("sort", state.sort);
  if (state.from) params.set("from", state.from);
  if (state.to) params.set("to", state.to);
  if (state.view != null) params.set("view", String(state.view));
  if (state.weak) params.set("all", "1");
  const text = params.toString();
  return text ? `?${text}` : "";
}

/** True when two states ask the server the same question (the open viewer aside). */
export function sameQuery(a, b) {
  return a.q === b.q && a.similar === b.similar && a.sort === b.sort && a.from === b.from && a.to === b.to
    && a.weak === b.weak;
}

function positiveInt(text) {
  if (!text || !/^\d+$/.test(text)) return null;
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : null;
}
