// Benchmark peer: express `res.sendFile` serving DIR at /artifacts/ (what Skyvern's artifact server does).
//   node bench/peers/express_static.js --dir DIR --port PORT [--host 127.0.0.1]
// No logging middleware: what `res.sendFile` alone costs (ETag, Last-Modified, ranges and 304s are its own).
"use strict";

const express = require("express");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const dir = arg("--dir");
const port = Number(arg("--port"));
const host = arg("--host", "127.0.0.1");
if (!dir || !port) {
  console.error("usage: express_static.js --dir DIR --port PORT [--host HOST]");
  process.exit(2);
}

const app = express();
app.disable("x-powered-by");
app.get("/artifacts/*name", (req, res, next) => {
  res.sendFile(req.params.name.join("/"), { root: dir, dotfiles: "deny" }, (err) => {
    if (err && !res.headersSent) next(err);
  });
});
const server = app.listen(port, host);
server.keepAliveTimeout = 30000;
process.on("SIGTERM", () => server.close(() => process.exit(0)));
