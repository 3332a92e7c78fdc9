// Drives two Chromium pages through the demo page (GET /) for tests/browser.rs:
// both join one room, reach a connected call with video frames decoded, and chat
// both ways over the data channel. Optional steps, by argument: `kill` waits for
// the test to kill a node (it prints {"readyToKill":true} and waits for a line on
// stdin) and checks the call and chat survive; `relay` forces TURN only; `fail`
// expects the call NOT to connect within 10 s (a TURN secret that does not match).
// Prints one JSON line with what it saw; exits non-zero on failure. Screenshots go
// to $SHOTS.
//
//   node call.mjs URL_A URL_B ROOM [relay] [kill] [fail]
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [urlA, urlB, room, ...flags] = process.argv.slice(2);
const relay = flags.includes("relay");
const kill = flags.includes("kill");
const fail = flags.includes("fail");
const shots = process.env.SHOTS ?? "/tmp";
const WAIT = 30000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
});
const result = { ok: false, steps: [] };
const step = (name, extra = {}) => { result.steps.push({ name, at: Date.now(), ...extra }); };
try {
  const context = await browser.newContext();
  const query = (user) => `?room=${room}&user=${user}&autojoin=1${relay ? "&relay=1" : ""}`;
  const alice = await context.newPage();
  const bob = await context.newPage();
  const logs = { alice: [], bob: [] };
  alice.on("console", (m) => logs.alice.push(m.text()));
  bob.on("console", (m) => logs.bob.push(m.text()));
  await alice.goto(`${urlA}/${query("alice")}`);
  await alice.waitForFunction(() => window.demo.state === "open", null, { timeout: WAIT });
  await bob.goto(`${urlB}/${query("bob")}`);
  const connected = (peer) => `window.demo.peers[${JSON.stringify(peer)}] === "connected"`;
  if (fail) {
    const reached = await alice.waitForFunction(connected("bob"), null, { timeout: 10000 }).then(() => true, () => false);
    result.peerStates = await alice.evaluate(() => window.demo.peers);
    if (reached) throw new Error("the call connected though it must not");
    step("not connected");
    result.ok = true;
    throw null; // done: nothing more to check
  }
  await alice.waitForFunction(connected("bob"), null, { timeout: WAIT });
  await bob.waitForFunction(connected("alice"), null, { timeout: WAIT });
  step("connected");
  const frames = (peer) => `(() => { const v = document.querySelector("#tile-${peer} video");
    return v && v.getVideoPlaybackQuality().totalVideoFrames > 0; })()`;
  await alice.waitForFunction(frames("bob"), null, { timeout: WAIT });
  await bob.waitForFunction(frames("alice"), null, { timeout: WAIT });
  step("video");
  const say = async (page, text) => { await page.fill("#text", text); await page.press("#text", "Enter"); };
  const heard = (from, text) => `window.demo.chat.some((m) => m.from === ${JSON.stringify(from)} && m.text === ${JSON.stringify(text)})`;
  const channelOpen = (peer) => `document.querySelector("#log").textContent.includes("data channel with ${peer} open")`;
  await alice.waitForFunction(channelOpen("bob"), null, { timeout: WAIT });
  await bob.waitForFunction(channelOpen("alice"), null, { timeout: WAIT });
  await say(alice, "hello bob");
  await bob.waitForFunction(heard("alice", "hello bob"), null, { timeout: WAIT });
  await say(bob, "hello alice");
  await alice.waitForFunction(heard("bob", "hello alice"), null, { timeout: WAIT });
  step("chat");
  await alice.screenshot({ path: `${shots}/alice-connected.png` });
  await bob.screenshot({ path: `${shots}/bob-connected.png` });
  if (relay) {
    const kinds = await alice.evaluate(async () => {
      const pc = window.demo.mesh.peers.get("bob");
      const stats = await pc.getStats();
      const pairs = [...stats.values()].filter((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
      return pairs.map((p) => stats.get(p.localCandidateId)?.candidateType);
    });
    result.localCandidates = kinds;
  }
  if (kill) {
    console.log(JSON.stringify({ readyToKill: true }));
    const lines = createInterface({ input: process.stdin });
    await new Promise((resolve) => lines.once("line", resolve));
    step("killed");
    // The resumed room_users (not just "open": the old socket may not have closed yet).
    await bob.waitForFunction(() => document.querySelector("#log").textContent.includes("(resumed: true)"), null, { timeout: WAIT });
    step("resumed");
    await say(bob, "still here");
    await alice.waitForFunction(heard("bob", "still here"), null, { timeout: WAIT });
    await say(alice, "me too");
    await bob.waitForFunction(heard("alice", "me too"), null, { timeout: WAIT });
    step("chat after kill");
    result.aliceSawLeave = await alice.evaluate(() => document.querySelector("#log").textContent.includes("user_left bob"));
  }
  result.ok = true;
  result.logs = { alice: await alice.evaluate(() => document.querySelector("#log").textContent),
    bob: await bob.evaluate(() => document.querySelector("#log").textContent) };
} catch (error) {
  if (error !== null) result.error = String(error);
} finally {
  await browser.close();
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}
