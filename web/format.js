// Small text helpers: file names, capture dates, sizes, counts.

// The server's paths are always "/"-separated (POSIX); a backslash is part of a file name there.
export function fileName(path) {
  const parts = path.split("/");
  return parts[parts.length - 1] || path;
}

export function folderOf(hit) {
  const cut = hit.path.lastIndexOf("/");
  const inner = cut > 0 ? hit.path.slice(0, cut) : "";
  const root = hit.root || "";
  if (root && inner) return `${root.replace(/\/$/, "")}/${inner}`;
  return root || inner || "(album root)";
}

/** "12 May 2023, 14:05" from an ISO 8601 capture time, or the text as given if it does not parse. */
export function captureDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const withTime = /T\d{2}:\d{2}/.test(iso);
  return date.toLocaleString(undefined, withTime
    ? { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }
    : { year: "numeric", month: "short", day: "numeric" });
}

export function pixelSize(hit) {
  if (!hit.width || !hit.height) return "unknown";
  const mp = (hit.width * hit.height) / 1e6;
  return `${hit.width} × ${hit.height} px (${mp >= 0.95 ? mp.toFixed(1) : mp.toFixed(2)} MP)`;
}

export function plural(count, one, many = `${one}s`) {
  return `${count.toLocaleString()} ${count === 1 ? one : many}`;
}

/** What a screen reader hears for a result: the file name, and the capture date when known. */
export function altText(hit) {
  const when = hit.taken_at ? `, taken ${captureDate(hit.taken_at)}` : "";
  return `Photo ${fileName(hit.path)}${when}`;
}
