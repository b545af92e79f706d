// A stand-in for the Janus chat UI's artifact routes, written from their described behaviour (no Janus code):
//   POST /api/artifacts/cache {chatId, artifact}: download artifact.url with a plain fetch (no auth header),
//     store <root>/<chatId>/<id><ext> and <id><ext>.json beside it, never download an id it already has;
//     200 {"url": "/api/artifacts/<chatId>/<id><ext>"} when cached, 200 {"url": <the url it was sent>} when the
//     download answered non-2xx, 500 when fetch threw, 400 for an invalid Artifact.
//   GET /api/artifacts/<chatId>/<file>: a cached file.
//   With CHUTES_JANUS_PRE_RELEASE_PWD set, every /api/* call without a matching X-PreReleasePassword: 401.
// Test controls (environment): JANUS_UI_ROOT (where files go), JANUS_UI_PORT (0: any),
// JANUS_UI_FAIL_FIRST_DOWNLOAD=1 (the first download of each id asks the sidecar for a dotfile, which is a
// real 404, so the route answers with the url it was sent).
// Prints {"listening": port} once, then one JSON line per /api call (never a header value).
// Run with Node 20, no dependencies: node tests/support/janus_ui.mjs
import { createServer } from "node:http";
import { mkdir, readdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";

const root = process.env.JANUS_UI_ROOT ?? path.resolve("janus-ui-cache");
const password = process.env.CHUTES_JANUS_PRE_RELEASE_PWD ?? "";
const failFirst = process.env.JANUS_UI_FAIL_FIRST_DOWNLOAD === "1";
const attempted = new Set();
const TYPES = new Set(["image", "file", "dataset", "binary"]);
const SAFE = /^[A-Za-z0-9_.-]+$/;
const EXT_BY_MIME = { "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
  "image/svg+xml": ".svg", "application/json": ".json", "text/csv": ".csv", "text/plain": ".txt" };

function record(doc) {
  process.stdout.write(JSON.stringify(doc) + "\n");
}

function answer(res, status, doc) {
  const body = JSON.stringify(doc);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function invalid(chatId, a) {
  if (typeof chatId !== "string" || !SAFE.test(chatId) || chatId.startsWith(".")) return "chatId";
  if (a === null || typeof a !== "object") return "artifact";
  for (const key of ["id", "mime_type", "display_name", "created_at", "url"]) {
    if (typeof a[key] !== "string" || a[key] === "") return key;
  }
  if (!SAFE.test(a.id) || a.id.startsWith(".")) return "id";
  if (!TYPES.has(a.type)) return "type";
  for (const key of ["size_bytes", "ttl_seconds"]) {
    if (!Number.isInteger(a[key]) || a[key] < 0) return key;
  }
  if (a.sha256 !== undefined && a.sha256 !== null && typeof a.sha256 !== "string") return "sha256";
  return null;
}

function extension(a) {
  const ext = path.extname(a.display_name);
  if (/^\.[A-Za-z0-9]{1,10}$/.test(ext)) return ext.toLowerCase();
  return EXT_BY_MIME[a.mime_type.split(";")[0].trim()] ?? "";
}

async function cachedName(dir, id) {
  let names = [];
  try {
    names = await readdir(dir);
  } catch {
    return null;
  }
  const meta = names.find((n) => n.startsWith(`${id}.`) && n.endsWith(".json"));
  return meta ? meta.slice(0, -".json".length) : null;
}

async function cache(req, res) {
  let doc;
  try {
    doc = await readJson(req);
  } catch {
    return answer(res, 400, { error: "INVALID_JSON" });
  }
  const { chatId, artifact: a } = doc ?? {};
  const bad = invalid(chatId, a);
  if (bad) {
    record({ route: "cache", status: 400, field: bad });
    return answer(res, 400, { error: "INVALID_ARTIFACT", field: bad });
  }
  const dir = path.join(root, chatId);
  const had = await cachedName(dir, a.id);
  if (had) {
    record({ route: "cache", status: 200, id: a.id, outcome: "had" });
    return answer(res, 200, { url: `/api/artifacts/${chatId}/${had}` });
  }
  let url = a.url;
  if (failFirst && !attempted.has(a.id)) {
    attempted.add(a.id);
    const u = new URL(a.url);
    u.pathname = "/artifacts/.janus-stand-in-missing";
    url = u.toString();
  }
  let resp;
  let bytes;
  try {
    resp = await fetch(url);
    bytes = Buffer.from(await resp.arrayBuffer());
  } catch (e) {
    record({ route: "cache", status: 500, id: a.id, outcome: "network_error", error: String(e?.cause?.code ?? e) });
    return answer(res, 500, { error: "DOWNLOAD_ERROR" });
  }
  if (!resp.ok) {
    record({ route: "cache", status: 200, id: a.id, outcome: "download_failed", download_status: resp.status });
    return answer(res, 200, { url: a.url });
  }
  const file = `${a.id}${extension(a)}`;
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, `.${file}.tmp`), bytes);
  await rename(path.join(dir, `.${file}.tmp`), path.join(dir, file));
  await writeFile(path.join(dir, `${file}.json`), JSON.stringify({ ...a, chatId, cached_bytes: bytes.length }));
  record({ route: "cache", status: 200, id: a.id, outcome: "cached", bytes: bytes.length });
  return answer(res, 200, { url: `/api/artifacts/${chatId}/${file}` });
}

async function serve(req, res, rest) {
  const [chatId, file] = rest.split("/").map(decodeURIComponent);
  if (!chatId || !file || !SAFE.test(chatId) || !SAFE.test(file) || file.startsWith(".") || file.endsWith(".json")) {
    return answer(res, 404, { error: "NOT_FOUND" });
  }
  try {
    const meta = JSON.parse(await readFile(path.join(root, chatId, `${file}.json`), "utf8"));
    const body = await readFile(path.join(root, chatId, file));
    res.writeHead(200, { "content-type": meta.mime_type, "content-length": body.length });
    return res.end(body);
  } catch {
    return answer(res, 404, { error: "NOT_FOUND" });
  }
}

const server = createServer(async (req, res) => {
  const { pathname } = new URL(req.url, "http://stand-in");
  try {
    if (pathname.startsWith("/api/") && password && req.headers["x-prereleasepassword"] !== password) {
      record({ route: pathname, status: 401 });
      return answer(res, 401, { error: "PRE_RELEASE_PASSWORD_REQUIRED" });
    }
    if (pathname === "/api/artifacts/cache" && req.method === "POST") return await cache(req, res);
    if (pathname.startsWith("/api/artifacts/") && req.method === "GET") {
      return await serve(req, res, pathname.slice("/api/artifacts/".length));
    }
    return answer(res, 404, { error: "NOT_FOUND" });
  } catch (e) {
    record({ route: pathname, status: 500, error: String(e) });
    return answer(res, 500, { error: "INTERNAL" });
  }
});

server.listen(Number(process.env.JANUS_UI_PORT ?? 0), "127.0.0.1", () => {
  record({ listening: server.address().port });
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
