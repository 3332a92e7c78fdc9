// Type declarations of signal-client.js (PROTOCOL.md sections 2-6, 11, 12, 14).

/** A member of a room (PROTOCOL.md section 2). */
export interface User {
  user_id: string;
  room_id: string;
  joined_at: string;
  role: "peer" | "host" | "audience";
}

/** The session part of `room_users` (section 11). */
export interface Session {
  resume_token: string;
  resume_seconds: number;
  resumed: boolean;
}

/** The payload of `room_users`. */
export interface RoomUsers {
  room_id: string;
  self: User;
  users: User[];
  session: Session;
  ice_servers: RTCIceServer[];
}

/** A relayed frame: `from` set by the server, `target` absent on broadcasts. */
export interface Relayed<P = unknown> {
  type: string;
  from: string;
  target?: string;
  payload: P;
  seq: number;
}

/** The payload of an `error` frame. */
export interface ErrorPayload {
  code: string;
  message: string;
  id?: string | number;
  target?: string;
  retry_after_ms?: number;
}

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface SignalClientOptions {
  /** The node's base URL, `ws://host:port` or `wss://host`. */
  url: string;
  room: string;
  user: string;
  /** A client token (AUTH_MODE=jwt). */
  token?: string;
  /** The room password (first join only; a resume does not need it). */
  password?: string;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** A WebSocket constructor (Node: `ws`); the global one by default. */
  WebSocket?: unknown;
  random?: () => number;
}

export interface SignalClientEvents {
  room_users: RoomUsers;
  user_joined: User;
  user_left: { user_id: string; room_id: string; reason: string };
  error: ErrorPayload;
  pong: unknown;
  state: State;
  closed: { code: number };
  relayed: Relayed;
  sdp_offer: Relayed<RTCSessionDescriptionInit>;
  sdp_answer: Relayed<RTCSessionDescriptionInit>;
  ice_candidate: Relayed<RTCIceCandidateInit | null>;
  message: Relayed;
  [appType: string]: unknown;
}

export declare const RECONNECT_CODES: readonly number[];
export declare const FINAL_CODES: readonly number[];
export declare function backoffDelay(attempt: number, minMs?: number, maxMs?: number, random?: () => number): number;
export declare function shouldReconnect(code: number): boolean;

export declare class SignalClient extends EventTarget {
  constructor(options: SignalClientOptions);
  readonly state: State;
  readonly members: Map<string, User>;
  readonly self: User | null;
  readonly iceServers: RTCIceServer[];
  readonly lastSeq: number;
  readonly socket: WebSocket | null;
  on<K extends keyof SignalClientEvents>(type: K, listener: (detail: SignalClientEvents[K], event: CustomEvent) => void): () => void;
  connect(): Promise<RoomUsers>;
  send(target: string, type: string, payload?: unknown, id?: string | number): void;
  broadcast(type: string, payload?: unknown, id?: string | number): void;
  ping(payload?: unknown): void;
  close(code?: number): void;
}

export interface MeshOptions {
  stream?: MediaStream;
  /** The data channel's label, or null for none (default "chat"). */
  dataChannel?: string | null;
  config?: RTCConfiguration;
  RTCPeerConnection?: unknown;
}

export declare class Mesh extends EventTarget {
  constructor(client: SignalClient, options?: MeshOptions);
  readonly peers: Map<string, RTCPeerConnection>;
  sendData(user: string | null, data: string | ArrayBuffer | Blob): void;
  close(): void;
}
