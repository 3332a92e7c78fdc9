// signal-client.js: the browser (and Node) client of signal-node, PROTOCOL.md
// sections 2-6, 11, 12 and 14. An ES module without dependencies: serve it as is
// (GET /client/signal-client.js) or copy it into an app.
//
//   import { SignalClient, Mesh } from "/client/signal-client.js";
//   const client = new SignalClient({ url: "wss://signal.example.org", room: "r1", user: "alice" });
//   client.on("message", (frame) => console.log(frame.from, frame.payload));
//   const joined = await client.connect();          // the first room_users payload
//   client.send("bob", "message", { text: "hi" });
//
// Reconnects by itself after 1001, 1006, 1011, 1013, 4408 and 4413 (with backoff and
// jitter, or after the server's retry_after_ms), resuming the session so that nothing
// is lost; gives up after 4400, 4401, 4403, 4409, 4410 and 4429, which need a person.
// What the app sends while disconnected is held and sent after the resume, in order.
// Relayed frames are de-duplicated by seq.

/** Close codes after which the client reconnects (and resumes). */
export const RECONNECT_CODES = Object.freeze([1001, 1006, 1011, 1013, 4408, 4413]);
/** Close codes after which it stops: a new token, id or decision is needed. */
export const FINAL_CODES = Object.freeze([1000, 1009, 4400, 4401, 4403, 4409, 4410, 4429]);

/** The delay before reconnect attempt `attempt` (0-based): exponential from
 * `minMs`, capped at `maxMs`, with full jitter in its upper half. */
export function backoffDelay(attempt, minMs = 250, maxMs = 10000, random = Math.random) {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** Whether a close with `code` is followed by a reconnect. */
export function shouldReconnect(code) {
  return !FINAL_CODES.includes(code);
}

const SERVER_TYPES = new Set(["room_users", "user_joined", "user_left", "error", "pong"]);

/** One member's signaling connection to a room. Events (listen with `on` or
 * `addEventListener`; the frame or payload is `event.detail`): `room_users`,
 * `user_joined`, `user_left`, every relayed type (`sdp_offer`, `sdp_answer`,
 * `ice_candidate`, `message`, app types) and `relayed` for all of them, `error`,
 * `pong`, `state` (connecting, open, reconnecting, closed). */
export class SignalClient extends EventTarget {
  #options;
  #ws = null;
  #state = "idle";
  #token = null; // the resume token of the current session
  #lastSeq = 0;
  #held = []; // frames the app sent while no session was open
  #attempt = 0;
  #retryAfterMs = null;
  #timer = null;
  #closedByApp = false;
  #members = new Map();
  #self = null;
  #iceServers = [];
  #firstJoin = null;
  #sessionOpen = false;

  /**
   * @param {object} options `url` (the node's base, `ws://host:port` or `wss://...`),
   *   `room`, `user`; optional `token` (jwt mode), `password` (first join only),
   *   `minBackoffMs` (250), `maxBackoffMs` (10000), `WebSocket` (a constructor, for
   *   Node), `random` (for tests).
   */
  constructor(options) {
    super();
    if (!options || !options.url || !options.room || !options.user) {
      throw new TypeError("SignalClient needs url, room and user");
    }
    this.#options = { minBackoffMs: 250, maxBackoffMs: 10000, random: Math.random, ...options };
  }

  /** connecting, open, reconnecting, or closed. */
  get state() { return this.#state; }
  /** The other members: user_id -> USER. */
  get members() { return new Map(this.#members); }
  /** This member's USER once joined. */
  get self() { return this.#self; }
  /** The RTCIceServer list of the last room_users. */
  get iceServers() { return this.#iceServers; }
  /** The last seq received (what a resume asks to continue from). */
  get lastSeq() { return this.#lastSeq; }

  /** Listens to `type`; returns a function that stops listening. */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail, event);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /** Joins; resolves with the first `room_users` payload, rejects if the server
   * refuses for good (4400, 4401, 4403, 4409, 4410, 4429) before that. */
  connect() {
    if (this.#firstJoin) return this.#firstJoin.promise;
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    this.#firstJoin = { promise, resolve, reject };
    this.#closedByApp = false;
    this.#open();
    return promise;
  }

  /** Sends `payload` as `type` to `target` (held while reconnecting). */
  send(target, type, payload = null, id = undefined) {
    this.#send({ type, target, payload, ...(id === undefined ? {} : { id }) });
  }

  /** Sends `payload` as `type` to every other member. */
  broadcast(type, payload = null, id = undefined) {
    this.#send({ type, payload, ...(id === undefined ? {} : { id }) });
  }

  /** A ping the server answers with a `pong` carrying `payload`. */
  ping(payload = null) {
    this.#send({ type: "ping", payload });
  }

  /** Leaves the room for good (the room hears `user_left` `left`). */
  close(code = 1000) {
    this.#closedByApp = true;
    clearTimeout(this.#timer);
    this.#held = [];
    if (this.#ws && this.#ws.readyState <= 1) this.#ws.close(code);
    this.#setState("closed");
  }

  /** The underlying WebSocket (tests drop it to simulate a network loss). */
  get socket() { return this.#ws; }

  #send(frame) {
    if (this.#state === "closed") throw new Error("SignalClient is closed");
    const text = JSON.stringify(frame);
    if (this.#sessionOpen && this.#ws && this.#ws.readyState === 1) {
      this.#ws.send(text);
    } else {
      this.#held.push(text);
    }
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #url() {
    const { url, room, user, token, password } = this.#options;
    const base = url.replace(/\/+$/, "");
    const query = new URLSearchParams();
    if (token) query.set("token", token);
    if (this.#token) {
      query.set("resume", this.#token);
      query.set("last_seq", String(this.#lastSeq));
    } else if (password) {
      query.set("password", password);
    }
    const q = query.toString();
    return `${base}/ws/${encodeURIComponent(room)}/${encodeURIComponent(user)}${q ? `?${q}` : ""}`;
  }

  #open() {
    this.#setState(this.#token ? "reconnecting" : "connecting");
    const Socket = this.#options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new Socket(this.#url());
    } catch (error) {
      this.#emit("error", { code: "connect_failed", message: String(error) });
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    this.#sessionOpen = false;
    ws.onmessage = (event) => this.#onMessage(ws, event.data);
    ws.onclose = (event) => this.#onClose(ws, event.code);
    ws.onerror = () => {}; // a close follows, with its code
  }

  #onMessage(ws, data) {
    if (ws !== this.#ws) return;
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      return;
    }
    if (typeof frame.seq === "number") {
      if (frame.seq <= this.#lastSeq) return; // already had it (replayed and live)
      this.#lastSeq = frame.seq;
    }
    switch (frame.type) {
      case "room_users":
        this.#onRoomUsers(ws, frame.payload);
        return;
      case "user_joined":
        this.#members.set(frame.payload.user_id, frame.payload);
        break;
      case "user_left":
        this.#members.delete(frame.payload.user_id);
        break;
      case "error":
        if (frame.payload?.code === "shutdown") {
          this.#retryAfterMs = frame.payload.retry_after_ms ?? 0;
          this.#sessionOpen = false; // hold what the app sends until the resume
        }
        break;
      default:
        break;
    }
    this.#emit(frame.type, frame.type === "error" || SERVER_TYPES.has(frame.type) ? frame.payload : frame);
    if (!SERVER_TYPES.has(frame.type)) this.#emit("relayed", frame);
  }

  #onRoomUsers(ws, payload) {
    const session = payload.session ?? {};
    if (!session.resumed) this.#lastSeq = 0; // an ordinary join numbers from 1 again
    this.#token = session.resume_token ?? null;
    this.#self = payload.self;
    this.#iceServers = payload.ice_servers ?? [];
    this.#members = new Map((payload.users ?? []).map((u) => [u.user_id, u]));
    this.#attempt = 0;
    this.#retryAfterMs = null;
    this.#sessionOpen = true;
    this.#setState("open");
    // What the app sent meanwhile goes out now, in order, before anything new.
    const held = this.#held;
    this.#held = [];
    for (const text of held) ws.send(text);
    this.#emit("room_users", payload);
    if (this.#firstJoin) {
      this.#firstJoin.resolve(payload);
      this.#firstJoin.settled = true;
    }
  }

  #onClose(ws, code) {
    if (ws !== this.#ws) return;
    this.#sessionOpen = false;
    if (this.#closedByApp) {
      this.#setState("closed");
      return;
    }
    if (!shouldReconnect(code)) {
      this.#token = null;
      this.#setState("closed");
      this.#emit("closed", { code });
      if (this.#firstJoin && !this.#firstJoin.settled) {
        this.#firstJoin.reject(Object.assign(new Error(`refused with close code ${code}`), { code }));
      }
      return;
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    const { minBackoffMs, maxBackoffMs, random } = this.#options;
    const delay = this.#retryAfterMs ?? backoffDelay(this.#attempt, minBackoffMs, maxBackoffMs, random);
    this.#retryAfterMs = null;
    this.#attempt += 1;
    this.#setState("reconnecting");
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (!this.#closedByApp) this.#open();
    }, delay);
  }
}

/** A WebRTC mesh over a SignalClient: one RTCPeerConnection per member. The
 * newcomer offers to every member listed in `room_users`; members wait for its
 * offer; collisions are settled by perfect negotiation (the member with the
 * smaller user id is polite); candidates trickle as `ice_candidate`; the servers
 * of `room_users` are used; peers come with `user_joined` and go with `user_left`.
 * Events: `track` ({user, track, streams}), `channel` ({user, channel}: the data
 * channel is open), `data` ({user, data}), `peer` ({user, state}).
 */
export class Mesh extends EventTarget {
  #client;
  #options;
  #peers = new Map();
  #unsubscribe = [];

  /**
   * @param {SignalClient} client
   * @param {object} options `stream` (a MediaStream to send), `dataChannel` (a
   *   label, default "chat"; null for none), `config` (extra RTCConfiguration, e.g.
   *   `{iceTransportPolicy: "relay"}`), `RTCPeerConnection` (a constructor).
   */
  constructor(client, options = {}) {
    super();
    this.#client = client;
    this.#options = { dataChannel: "chat", config: {}, ...options };
    const on = (type, fn) => this.#unsubscribe.push(client.on(type, fn));
    on("room_users", (payload) => this.#onRoomUsers(payload));
    on("user_joined", (user) => this.#peer(user.user_id, false));
    on("user_left", (left) => this.#closePeer(left.user_id));
    on("sdp_offer", (frame) => this.#onDescription(frame));
    on("sdp_answer", (frame) => this.#onDescription(frame));
    on("ice_candidate", (frame) => this.#onCandidate(frame));
  }

  /** user_id -> RTCPeerConnection. */
  get peers() {
    return new Map([...this.#peers].map(([user, peer]) => [user, peer.pc]));
  }

  /** Sends `data` on the data channel to `user`, or to every peer when null. */
  sendData(user, data) {
    for (const [id, peer] of this.#peers) {
      if ((user === null || user === id) && peer.channel?.readyState === "open") peer.channel.send(data);
    }
  }

  /** Closes every peer connection and stops listening to the client. */
  close() {
    for (const user of [...this.#peers.keys()]) this.#closePeer(user);
    for (const off of this.#unsubscribe) off();
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #onRoomUsers(payload) {
    const present = new Set((payload.users ?? []).map((u) => u.user_id));
    if (!payload.session?.resumed) {
      // An ordinary join: the members see a newcomer; start every call afresh.
      for (const user of [...this.#peers.keys()]) this.#closePeer(user);
      for (const user of present) this.#peer(user, true);
      return;
    }
    for (const user of [...this.#peers.keys()]) if (!present.has(user)) this.#closePeer(user);
  }

  #peer(user, offerer) {
    let peer = this.#peers.get(user);
    if (peer) return peer;
    const Pc = this.#options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    const me = this.#client.self?.user_id ?? "";
    const pc = new Pc({ ...this.#options.config, iceServers: this.#client.iceServers });
    peer = { pc, polite: me < user, makingOffer: false, ignoreOffer: false, offerer, channel: null };
    this.#peers.set(user, peer);
    pc.onicecandidate = ({ candidate }) =>
      this.#client.send(user, "ice_candidate", candidate ? candidate.toJSON() : null);
    pc.ontrack = ({ track, streams }) => this.#emit("track", { user, track, streams });
    pc.onconnectionstatechange = () => this.#emit("peer", { user, state: pc.connectionState });
    pc.ondatachannel = ({ channel }) => this.#channel(user, peer, channel);
    pc.onnegotiationneeded = async () => {
      // Members wait for the newcomer's offer; after that either side renegotiates.
      if (!peer.offerer && !pc.remoteDescription) return;
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        this.#client.send(user, "sdp_offer", pc.localDescription.toJSON());
      } catch (error) {
        this.#emit("peer", { user, state: "failed", error });
      } finally {
        peer.makingOffer = false;
      }
    };
    for (const track of this.#options.stream?.getTracks() ?? []) pc.addTrack(track, this.#options.stream);
    if (offerer && this.#options.dataChannel) {
      this.#channel(user, peer, pc.createDataChannel(this.#options.dataChannel));
    }
    this.#emit("peer", { user, state: "new" });
    return peer;
  }

  #channel(user, peer, channel) {
    peer.channel = channel;
    channel.onopen = () => this.#emit("channel", { user, channel });
    channel.onmessage = ({ data }) => this.#emit("data", { user, data });
  }

  async #onDescription(frame) {
    const user = frame.from;
    const peer = this.#peer(user, false);
    const { pc } = peer;
    const description = frame.payload;
    try {
      const collision = description.type === "offer" && (peer.makingOffer || pc.signalingState !== "stable");
      peer.ignoreOffer = !peer.polite && collision;
      if (peer.ignoreOffer) return;
      await pc.setRemoteDescription(description);
      if (description.type === "offer") {
        await pc.setLocalDescription();
        this.#client.send(user, "sdp_answer", pc.localDescription.toJSON());
      }
    } catch (error) {
      this.#emit("peer", { user, state: "failed", error });
    }
  }

  async #onCandidate(frame) {
    const peer = this.#peers.get(frame.from);
    if (!peer) return;
    try {
      await peer.pc.addIceCandidate(frame.payload ?? null);
    } catch (error) {
      if (!peer.ignoreOffer) this.#emit("peer", { user: frame.from, state: "failed", error });
    }
  }

  #closePeer(user) {
    const peer = this.#peers.get(user);
    if (!peer) return;
    this.#peers.delete(user);
    peer.pc.close();
    this.#emit("peer", { user, state: "closed" });
  }
}
