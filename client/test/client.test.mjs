// Tests of signal-client.js with Node's test runner: the reconnect rules and
// de-duplication against a scripted fake socket, and joins, resumes, held sends
// and refusals against a real signal-node process (SIGNAL_NODE_BIN, built by cargo).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { SignalClient, backoffDelay, shouldReconnect, RECONNECT_CODES, FINAL_CODES } from "../signal-client.js";

const BIN = process.env.SIGNAL_NODE_BIN ?? fileURLToPath(new URL("../../target/debug/signal-node", import.meta.url));
const WAIT_MS = 10000;

/** Resolves when `check()` holds; rejects after `ms` naming `what`. */
async function eventually(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

const nodes = [];
after(() => nodes.forEach((n) => n.kill("SIGKILL")));

/** A standalone node with resume on; resolves with its ws:// base once ready. */
async function startNode(env = {}) {
  const port = await freePort();
  const child = spawn(BIN, [], {
    env: { PATH: process.env.PATH, HOST: "127.0.0.1", PORT: String(port), RESUME_GRACE_SECONDS: "20", RUST_LOG: "warn", ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  nodes.push(child);
  let exited = null;
  child.on("exit", (code) => { exited = code; });
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (exited !== null) throw new Error(`signal-node exited with ${exited} (SIGNAL_NODE_BIN=${BIN})`);
    try {
      const reply = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (reply.status === 200) return `ws://127.0.0.1:${port}`;
    } catch {}
    if (Date.now() > deadline) throw new Error("signal-node not ready in time");
    await new Promise((r) => setTimeout(r, 25));
  }
}

function client(url, room, user, extra = {}) {
  return new SignalClient({ url, room, user, WebSocket, minBackoffMs: 50, maxBackoffMs: 400, ...extra });
}

/** Collects the payloads of `message` frames a client receives, with their seq. */
function inbox(c) {
  const got = [];
  c.on("message", (frame) => got.push({ n: frame.payload.n, seq: frame.seq }));
  return got;
}

// --- rules, without a server -------------------------------------------------------

test("backoff doubles from the minimum, stays within its bounds, and jitters", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(10000, 250 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 250, 10000, () => 0), ceiling / 2);
    assert.equal(backoffDelay(attempt, 250, 10000, () => 1), ceiling);
    const d = backoffDelay(attempt, 250, 10000);
    assert.ok(d >= ceiling / 2 && d <= ceiling, `${attempt}: ${d}`);
  }
  assert.equal(backoffDelay(100, 250, 10000, () => 1), 10000);
});

test("reconnects after 1001, 1006, 1011, 1013, 4408, 4413 only", () => {
  for (const code of [1001, 1006, 1011, 1013, 4408, 4413]) assert.ok(shouldReconnect(code), `${code}`);
  for (const code of [1000, 1009, 4400, 4401, 4403, 4409, 4410, 4429]) assert.ok(!shouldReconnect(code), `${code}`);
  assert.deepEqual([...RECONNECT_CODES].sort(), [1001, 1006, 1011, 1013, 4408, 4413]);
  assert.equal(FINAL_CODES.length, 8);
});

/** A socket the test drives: it records the URLs opened and the frames sent. */
function fakeSockets() {
  const opened = [];
  class Fake {
    constructor(url) { this.url = url; this.readyState = 1; this.sent = []; opened.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { this.readyState = 3; }
    receive(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
    drop(code) { this.readyState = 3; this.onclose({ code }); }
  }
  return { Fake, opened };
}

const roomUsers = (resumed, token) => ({
  type: "room_users",
  payload: { room_id: "r", self: { user_id: "me", room_id: "r", joined_at: "", role: "peer" }, users: [],
    session: { resume_token: token, resume_seconds: 20, resumed }, ice_servers: [{ urls: "stun:x" }] },
});
const relayed = (n, seq) => ({ type: "message", from: "bob", target: "me", payload: { n }, seq });

test("frames are de-duplicated by seq; an ordinary join numbers from 1 again", async () => {
  const { Fake, opened } = fakeSockets();
  const c = new SignalClient({ url: "ws://x", room: "r", user: "me", WebSocket: Fake });
  const got = inbox(c);
  const joined = c.connect();
  opened[0].receive(roomUsers(false, "t1"));
  assert.deepEqual((await joined).ice_servers, [{ urls: "stun:x" }]);
  for (const seq of [1, 2, 2, 1, 3]) opened[0].receive(relayed(seq, seq));
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3]);
  opened[0].drop(1006);
  await eventually("a reconnect", () => opened.length === 2);
  assert.match(opened[1].url, /resume=t1&last_seq=3$/);
  opened[1].receive(roomUsers(false, "t2")); // the resume failed: an ordinary join
  opened[1].receive(relayed(4, 1));
  assert.deepEqual(got.map((m) => m.n), [1, 2, 3, 4]);
  c.close();
});

test("a final close code stops; a shutdown reconnects after retry_after_ms and holds sends", async () => {
  const { Fake, opened } = fakeSockets();
  const c = new SignalClient({ url: "ws://x/", room: "r", user: "me", WebSocket: Fake, minBackoffMs: 5000 });
  c.connect();
  opened[0].receive(roomUsers(false, "t1"));
  opened[0].receive({ type: "error", payload: { code: "shutdown", message: "", retry_after_ms: 0 } });
  c.send("bob", "message", { n: 1 }); // held: the session is closing
  assert.equal(opened[0].sent.length, 0);
  opened[0].drop(1001);
  await eventually("the resume after retry_after_ms (not the 5 s backoff)", () => opened.length === 2, 1000);
  assert.match(opened[1].url, /^ws:\/\/x\/ws\/r\/me\?resume=t1&last_seq=0$/);
  opened[1].receive(roomUsers(true, "t2"));
  assert.deepEqual(opened[1].sent, [{ type: "message", target: "bob", payload: { n: 1 } }]);
  opened[1].drop(4409);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(opened.length, 2, "no reconnect after 4409");
  assert.equal(c.state, "closed");
});

// --- against a real node ---------------------------------------------------------

test("join, exchange, then a dropped connection resumes with nothing lost or twice", async () => {
  const url = await startNode();
  const room = `r-${Date.now()}`;
  const alice = client(url, room, "alice");
  const bob = client(url, room, "bob");
  const left = [];
  alice.on("user_left", (p) => left.push(p));
  await alice.connect();
  const joined = await bob.connect();
  assert.deepEqual(joined.users.map((u) => u.user_id), ["alice"]);
  await eventually("alice sees bob", () => alice.members.has("bob"));
  const got = inbox(bob);
  for (let n = 1; n <= 3; n++) alice.send("bob", "message", { n });
  await eventually("3 messages", () => got.length === 3);

  const resumed = new Promise((resolve) => bob.on("room_users", resolve));
  bob.socket.terminate(); // FAULT: the network drops bob's connection (no close frame)
  for (let n = 4; n <= 8; n++) alice.send("bob", "message", { n });
  const payload = await resumed;
  assert.equal(payload.session.resumed, true);
  await eventually("8 messages", () => got.length === 8);
  assert.deepEqual(got.map((m) => m.n), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(left, [], "the room never saw bob leave");
  alice.close();
  bob.close();
});

test("sends made while reconnecting are held and sent after the resume, in order", async () => {
  const url = await startNode();
  const room = `r-${Date.now()}`;
  const alice = client(url, room, "alice");
  const bob = client(url, room, "bob");
  await alice.connect();
  await bob.connect();
  const got = inbox(bob);
  alice.socket.terminate(); // FAULT: alice's connection drops
  for (let n = 1; n <= 4; n++) alice.send("bob", "message", { n }); // held
  await eventually("held sends delivered after alice resumed", () => got.length === 4);
  assert.deepEqual(got.map((m) => m.n), [1, 2, 3, 4]);
  assert.equal(alice.state, "open");
  alice.close();
  bob.close();
});

test("a replaced session (4409) stops without reconnecting; a refused join rejects", async () => {
  const url = await startNode({ MAX_CONNECTIONS: "10" });
  const room = `r-${Date.now()}`;
  const first = client(url, room, "carol");
  await first.connect();
  const closed = new Promise((resolve) => first.on("closed", resolve));
  const second = client(url, room, "carol");
  await second.connect();
  assert.deepEqual(await closed, { code: 4409 });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(first.state, "closed");
  const bad = client(url, "not a valid room!", "dave");
  await assert.rejects(bad.connect(), (e) => e.code === 4400);
  second.close();
});
