// Calls to the clipalbum JSON API; every failure becomes an ApiError with a message a person can read.

export class ApiError extends Error {
  constructor(message, status, detail = null) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status, or 0 when the server could not be reached
    this.detail = detail; // the server's own reason ({"detail": ...}), for messages that add their context
  }
}

/** Fired on window when the server wants its access token (a server shared on the network). */
export const UNAUTHORIZED_EVENT = "clipalbum:unauthorized";

async function send(path, options) {
  try {
    return await fetch(path, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("Cannot reach the clipalbum server. Is it still running?", 0);
  }
}

function refusal(response, body) {
  const detail = body && typeof body.detail === "string" ? body.detail : null;
  const prefix = response.status >= 500 ? "The server failed" : "The server refused the request";
  return new ApiError(`${prefix} (${response.status}): ${detail || response.statusText || "no details"}`,
    response.status, detail);
}

async function request(path, { quietUnauthorized = false, ...options } = {}) {
  const response = await send(path, { headers: { Accept: "application/json" }, ...options });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401 && !quietUnauthorized) window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
  if (!response.ok) throw refusal(response, body);
  if (body === null) throw new ApiError("The server sent an answer that is not JSON.", response.status);
  return body;
}

function filters(state, k, offset) {
  const params = new URLSearchParams({ k: String(k), offset: String(offset) });
  if (state.sort !== "relevance") params.set("sort", state.sort);
  if (state.from) params.set("from", state.from);
  if (state.to) params.set("to", state.to);
  return params;
}

/** Text search; minScore (or null) leaves out results scoring below it. */
export function searchText(state, k, offset, signal, minScore = null) {
  const params = filters(state, k, offset);
  params.set("q", state.q);
  if (minScore != null) params.set("min_score", String(minScore));
  return request(`api/search?${params}`, { signal });
}

/** Photos like an indexed photo. */
export function searchSimilar(state, k, offset, signal) {
  return request(`api/images/${state.similar}/similar?${filters(state, k, offset)}`, { signal });
}

/** Photos like an uploaded photo (a File or Blob). */
export function searchByPhoto(file, state, k, offset, signal) {
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  return request(`api/search/image?${filters(state, k, offset)}`, { method: "POST", body: form, signal });
}

export function photoInfo(id, signal) {
  return request(`api/images/${id}`, { signal });
}

export function status() {
  return request("api/status", { cache: "no-store" });
}

export function refresh() {
  return request("api/index/refresh", { method: "POST" });
}

/** Whether this server needs the token and whether this browser has logged in: {token_required, authenticated, via}. */
export function session() {
  return request("api/session", { cache: "no-store" });
}

/** Trades the access token for a login cookie (HttpOnly: the page never sees it again). */
export function login(token) {
  return request("api/login", {
    method: "POST", body: JSON.stringify({ token }), quietUnauthorized: true,
    headers: { Accept: "application/json", "Content-Type": "application/json" },
  });
}

export function logout() {
  return request("api/logout", { method: "POST" });
}

export function thumbnailUrl(id, size) {
  return size ? `api/images/${id}/thumbnail?size=${size}` : `api/images/${id}/thumbnail`;
}

export function originalUrl(id) {
  return `api/images/${id}/file`;
}

// ---- enhancement jobs (server/enhance/api.py): start one, poll it, fetch or download its result, cancel it ----

/** Starts enhancing an indexed photo; `options` as the server's EnhanceBody (a field left out: the model's
 * choice). Answers the job (state "queued"). */
export function enhancePhoto(id, options) {
  return request(`api/images/${id}/enhance`, {
    method: "POST", body: JSON.stringify(options),
    headers: { Accept: "application/json", "Content-Type": "application/json" },
  });
}

/** A job's state and progress (never cached: it changes while it runs). */
export function enhanceJob(jobId) {
  return request(`api/jobs/${jobId}`, { cache: "no-store" });
}

/** Cancels a queued or running job, or makes the server forget a finished one (and delete its result). */
export function cancelEnhanceJob(jobId) {
  return request(`api/jobs/${jobId}`, { method: "DELETE" });
}

/** A finished job's result, relative like every URL here (the server gives it from its root: "/api/..."),
 * so that a page served under a path prefix still reaches it. */
export function jobResultUrl(job) {
  return job.result_url.replace(/^\/+/, "");
}

/** A finished job's result image as a Blob (for the screen; the full size is downloaded via jobResultUrl). */
export async function jobResult(job) {
  const response = await send(jobResultUrl(job), { cache: "no-store" });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { body = null; }
    if (response.status === 401) window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
    throw refusal(response, body);
  }
  return response.blob();
}
