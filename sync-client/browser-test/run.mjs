// Runs the browser scenarios of src/lib.rs in headless Chromium against a live entidb serve.
//
//   node run.mjs <entidb binary> <wasm-bindgen --target web output dir>
//
// ENTIDB_BROWSER_TOOLS: a directory whose node_modules holds playwright-core.
// CHROMIUM: the browser (default /usr/bin/chromium).
//
// The page is served from http://127.0.0.1:<page port>; the server, on another port, lists
// exactly that origin in cors_origins, so every request the page makes is cross-origin. The
// last scenario loads the same page from http://localhost:<page port>, an origin the server
// does not list. Exits 1 if any scenario fails.

import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const [entidb, pkgDir] = process.argv.slice(2);
if (!entidb || !pkgDir) {
  console.error('usage: node run.mjs <entidb binary> <wasm-bindgen output dir>');
  process.exit(2);
}
const tools = process.env.ENTIDB_BROWSER_TOOLS;
if (!tools) {
  console.error('ENTIDB_BROWSER_TOOLS must name a directory with node_modules/playwright-core');
  process.exit(2);
}
const { chromium } = createRequire(path.join(path.resolve(tools), 'package.json'))('playwright-core');

const SCENARIO_TIMEOUT_MS = 120_000;
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
const page_html = '<!doctype html><meta charset="utf-8"><title>entidb browser test</title>';

// The page server: index.html and the wasm-bindgen output under /pkg/.
function servePage() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/' || url.pathname === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(page_html);
      return;
    }
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    const name = url.pathname.startsWith('/pkg/') ? path.basename(url.pathname) : null;
    const file = name && path.join(pkgDir, name);
    if (!file || !fs.existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// entidb serve on a free port, allowing exactly `origin`; resolves with its URL.
function startServer(dataDir, origin) {
  const config = path.join(path.dirname(dataDir), 'server.toml');
  // Long polls of up to 60 s, so that a round that waited one out would miss the 30 s bound
  // of the long-poll scenario.
  fs.writeFileSync(config, 'max_wait_ms = 60000\nrequest_timeout_ms = 90000\n');
  const child = spawn(
    entidb,
    ['serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--cors-origins', origin, '--config', config],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ENTIDB_LOG: 'warn' } },
  );
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    lines.once('line', (first) => {
      const m = /^entidb serve: listening on (\S+)/.exec(first);
      if (m) resolve({ child, url: m[1] });
      else reject(new Error(`unexpected first line from entidb serve: ${first}`));
      lines.on('line', () => {}); // keep draining
    });
    child.once('exit', (code) => reject(new Error(`entidb serve exited with ${code}`)));
  });
}

function token(dataDir, client) {
  return execFileSync(entidb, ['token', '--data-dir', dataDir, '--db', 'app', '--client', client])
    .toString()
    .trim();
}

function freePort() {
  const probe = net.createServer();
  return new Promise((resolve) =>
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    }),
  );
}

async function liveWaiters(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = /^entidb_sync_live_waiters (\d+)/m.exec(text);
  if (!m) throw new Error('no entidb_sync_live_waiters in /metrics');
  return Number(m[1]);
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'entidb-browser-'));
const dataDir = path.join(tmp, 'data');
let server = null;
let browser = null;
// Whatever happens (a failed launch, an exception), the server does not outlive the runner.
process.on('exit', () => {
  if (server && server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
  fs.rmSync(tmp, { recursive: true, force: true });
});
const pages = await servePage();
const pagePort = pages.address().port;
const origin = `http://127.0.0.1:${pagePort}`;
let url;
({ child: server, url } = await startServer(dataDir, origin));

let failures = 0;
async function scenario(pageOrigin, name, args, after) {
  const page = await browser.newPage();
  page.on('console', (m) => console.log(`  [console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  const started = Date.now();
  try {
    await page.goto(`${pageOrigin}/`);
    const run = page.evaluate(
      async ({ name, args }) => {
        const m = await import('/pkg/entidb_sync_browser_test.js');
        await m.default();
        return await m[name](...args);
      },
      { name, args },
    );
    // After a timeout the page is closed under it: that rejection is expected, not fatal.
    run.catch(() => {});
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer in ${SCENARIO_TIMEOUT_MS} ms`)), SCENARIO_TIMEOUT_MS);
    });
    const summary = await Promise.race([run, timeout]).finally(() => clearTimeout(timer));
    if (after) await after();
    console.log(`ok   ${name} (${Date.now() - started} ms): ${summary}`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${name} (${Date.now() - started} ms): ${e.message ?? e}`);
  } finally {
    await page.close();
  }
}

try {
  // Chromium occasionally dies while starting on this shared machine (SIGSEGV before the
  // first page): try the launch three times. A scenario is never retried.
  for (let attempt = 1; ; attempt++) {
    try {
      browser = await chromium.launch({
        executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
        headless: true,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      });
      break;
    } catch (e) {
      if (attempt === 3) throw e;
      console.log(`chromium did not start (attempt ${attempt}): ${String(e.message).split('\n')[0]}`);
    }
  }
  await scenario(origin, 'host_clock_and_entropy', []);
  await scenario(origin, 'offline_writes_meet_through_the_server', [
    url,
    token(dataDir, 'tab-a'),
    token(dataDir, 'tab-b'),
  ]);
  await scenario(
    origin,
    'a_local_write_ends_the_long_poll',
    [url, token(dataDir, 'live-a'), token(dataDir, 'live-b')],
    // The poll of the round the page dropped last must not keep its place on the server
    // until its 60 s are up: the browser aborted the fetch, and the server saw the
    // connection go (nothing was committed that would have answered the poll).
    async () => {
      const deadline = Date.now() + 30_000;
      let n = await liveWaiters(url);
      while (n !== 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        n = await liveWaiters(url);
      }
      if (n !== 0) throw new Error(`the server still counts ${n} long poll(s) after 30 s`);
    },
  );
  // A port that was free a moment ago: the connection is refused.
  await scenario(origin, 'an_unreachable_server_is_a_network_error', [`http://127.0.0.1:${await freePort()}`]);
  const refused = token(dataDir, 'other-origin');
  await scenario(
    `http://localhost:${pagePort}`,
    'an_origin_the_server_does_not_allow_is_refused',
    [url, refused],
    // The browser sent no push (its preflight was refused): the server holds no trace of it.
    async () => {
      const resp = await fetch(`${url}/v2/db/app/pull?since=0`, {
        headers: { authorization: `Bearer ${refused}`, accept: 'application/json' },
      });
      const text = await resp.text();
      if (resp.status !== 200) throw new Error(`pull: ${resp.status} ${text}`);
      if (text.includes('an unlisted origin')) throw new Error(`the server stored the refused write: ${text}`);
    },
  );
} finally {
  if (browser) await browser.close();
  pages.close();
  // A clean shutdown (SIGTERM) is part of what is tested.
  if (server.exitCode === null && server.signalCode === null) {
    const exited = new Promise((r) => server.once('exit', (code) => r(code)));
    server.kill('SIGTERM');
    const code = await exited;
    if (code !== 0) {
      failures += 1;
      console.log(`FAIL entidb serve exited with ${code} after SIGTERM`);
    }
  } else {
    failures += 1;
    console.log(`FAIL entidb serve stopped during the run (${server.exitCode ?? server.signalCode})`);
  }
}
console.log(failures ? `${failures} browser scenario(s) failed` : 'every browser scenario passed');
process.exit(failures ? 1 : 0);
