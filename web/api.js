// Calls to the clipalbum JSON API; every failure becomes an ApiError with a message a person can read.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status, or 0 when the server could not be reached
  }
}

/** Fired on window when the server wants its access token (a server shared on the network). */
export const UNAUTHORIZED_EVENT = "clipalbum:unauthorized";

async function request(path, { quietUnauthorized = false, ...options } = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("Cannot reach the clipalbum server. Is it still running?", 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401 && !quietUnauthorized) window.dispatchEvent(new Event(UNAUTHORIZED_EVENT));
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
    const prefix = response.status >= 500 ? "The server failed" : "The server refused the request";
    throw new ApiError(`${prefix} (${response.status}): ${detail || "no details"}`, response.status);
  }
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

/** Text search. */
export function searchText(state, k, offset, signal) {
  const params = filters(state, k, offset);
  params.set("q", state.q);
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
