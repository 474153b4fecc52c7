// The WebSocket protocol (docs/protocol.md): hello with resume, sends acknowledged by `req_id` and retried
// across reconnects with their `client_msg_id` (the server stores each once), streaming bot replies,
// typing, read receipts, stop, and reconnection with backoff that resumes every channel from the last
// sequence number the client holds.

import type { Ack, FrameOf, Message, SendInput, ServerFrame, Welcome } from "./types.js";

/** What the socket needs of a WebSocket: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketFactory = (url: string) => WebSocketLike;

export type SocketState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A bot reply's text as it streams (assembled from `message.delta` frames). */
export interface ReplyProgress {
  channel_id: string;
  message_id: number;
  text: string;
}

/** A send the server refused (its error code), or one that timed out. */
export class SendError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SendError";
  }
}

export interface SocketOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:8080`; default: the page's origin. */
  baseUrl?: string;
  /** A user's session token. */
  token: string;
  /** Default: `new WebSocket(url)` (browsers, Node 22+). */
  connect?: WebSocketFactory;
  /** First reconnection delay, doubled up to `maxBackoffMs` (with jitter); reset by a welcome. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** How long a send may wait for its ack, reconnections included, before it fails. */
  sendTimeoutMs?: number;
}

type Events = {
  [K in ServerFrame["type"]]: FrameOf<K>;
} & {
  state: SocketState;
  /** A generating reply's text so far. */
  reply: ReplyProgress;
  /** Deltas of a reply were missed (the client should read the message again and call `seedReply`). */
  "reply.gap": { channel_id: string; message_id: number };
};

type Handler<T> = (value: T) => void;

interface PendingSend {
  reqId: string;
  frame: Record<string, unknown>;
  resolve: (ack: Ack) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
  /** Sent on the current connection and not yet answered. */
  inFlight: boolean;
}

/** Close codes after which reconnecting with the same token is pointless. */
const FINAL_CLOSE = new Set([1002, 4003]);

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

export class ConfabSocket {
  private ws: WebSocketLike | null = null;
  private _state: SocketState = "idle";
  private readonly listeners = new Map<string, Set<Handler<never>>>();
  /** The last sequence number held per channel: the resume point. */
  private readonly seqs = new Map<string, number>();
  /** Unacknowledged sends, in the order they were made. */
  private readonly unacked = new Map<string, PendingSend>();
  /** Generating replies: text and its length in UTF-8 bytes (delta offsets count bytes). */
  private readonly replies = new Map<number, { channel_id: string; text: string; bytes: number }>();
  private reqCounter = 0;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private lastFrameAt = 0;
  private welcome: Welcome | null = null;
  private waiters: { resolve: (w: Welcome) => void; reject: (e: Error) => void }[] = [];
  private readonly opts: Required<Omit<SocketOptions, "baseUrl" | "token">> & { url: string };

  constructor(opts: SocketOptions) {
    const base = (opts.baseUrl ?? defaultOrigin()).replace(/\/+$/, "").replace(/^http/, "ws");
    this.opts = {
      url: `${base}/api/v1/ws?token=${encodeURIComponent(opts.token)}`,
      connect: opts.connect ?? ((url) => new WebSocket(url) as unknown as WebSocketLike),
      backoffMs: opts.backoffMs ?? 500,
      maxBackoffMs: opts.maxBackoffMs ?? 15_000,
      sendTimeoutMs: opts.sendTimeoutMs ?? 30_000,
    };
  }

  get state(): SocketState {
    return this._state;
  }

  /** The user this session belongs to, once welcomed. */
  get userId(): string | undefined {
    return this.welcome?.user_id;
  }

  /** Opens the connection; resolves at the server's welcome. Reconnects by itself after that. */
  connect(): Promise<Welcome> {
    if (this._state === "open" && this.welcome) return Promise.resolve(this.welcome);
    const p = new Promise<Welcome>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this._state === "idle" || this._state === "closed") this.open();
    return p;
  }

  /** Closes for good: no reconnection; unacknowledged sends fail. */
  close(): void {
    this.setState("closed");
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, "bye");
    for (const p of this.unacked.values()) {
      clearTimeout(p.timer);
      p.reject(new SendError("closed", "the socket was closed"));
    }
    this.unacked.clear();
    this.failWaiters(new SendError("closed", "the socket was closed"));
  }

  on<K extends keyof Events>(type: K, handler: Handler<Events[K]>): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(handler as Handler<never>);
    return () => set.delete(handler as Handler<never>);
  }

  /** The client holds the channel's messages up to `seq` (e.g. from history): resume from there. */
  track(channelId: string, seq: number): void {
    if ((this.seqs.get(channelId) ?? -1) < seq) this.seqs.set(channelId, seq);
  }

  /** Stops resuming a channel (left or deleted). */
  untrack(channelId: string): void {
    this.seqs.delete(channelId);
  }

  lastSeq(channelId: string): number | undefined {
    return this.seqs.get(channelId);
  }

  /**
   * Sends a message; resolves with the server's ack once it is stored. Retried after a reconnection with the
   * same `client_msg_id`, so it is stored once (a retry's ack has `duplicate: true` and the original).
   */
  send(channelId: string, input: SendInput): Promise<Ack> {
    const reqId = `s${++this.reqCounter}`;
    const frame = {
      type: "send",
      req_id: reqId,
      channel_id: channelId,
      ...input,
      client_msg_id: input.client_msg_id ?? randomId(),
    };
    return new Promise<Ack>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.unacked.delete(reqId);
        reject(new SendError("timeout", "no acknowledgement in time"));
      }, this.opts.sendTimeoutMs);
      const pending: PendingSend = { reqId, frame, resolve, reject, timer, inFlight: false };
      this.unacked.set(reqId, pending);
      this.transmit(pending);
    });
  }

  /** Typing indicator; dropped while disconnected. */
  typing(channelId: string, active: boolean): void {
    this.raw({ type: "typing", channel_id: channelId, active });
  }

  /** Read receipt: everything up to `seq` is read; dropped while disconnected (send it again on open). */
  read(channelId: string, seq: number): void {
    this.raw({ type: "read", channel_id: channelId, seq });
  }

  /** Asks to stop a generating reply; its final `message.updated` says `stopped`. */
  stop(messageId: number): void {
    this.raw({ type: "stop", message_id: messageId, req_id: `x${++this.reqCounter}` });
  }

  /** Starts assembling a reply from a message read over REST (after `reply.gap`, or one found generating). */
  seedReply(m: Message): void {
    if (m.reply?.state === "generating") {
      const known = this.replies.get(m.id);
      if (!known || utf8.encode(m.text).length >= known.bytes) {
        this.replies.set(m.id, { channel_id: m.channel_id, text: m.text, bytes: utf8.encode(m.text).length });
        this.emit("reply", { channel_id: m.channel_id, message_id: m.id, text: m.text });
      }
    } else {
      this.replies.delete(m.id);
    }
  }

  // ---- connection ----

  private open(): void {
    this.clearTimers();
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let ws: WebSocketLike;
    try {
      ws = this.opts.connect(this.opts.url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      const resume = Object.fromEntries(this.seqs);
      ws.send(JSON.stringify({ type: "hello", resume }));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = Date.now();
      let frame: ServerFrame;
      try {
        frame = JSON.parse(String(ev.data)) as ServerFrame;
      } catch {
        return;
      }
      this.dispatch(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.welcome = null;
      for (const p of this.unacked.values()) p.inFlight = false;
      if (this._state === "closed") return;
      if (FINAL_CLOSE.has(ev.code)) {
        this.close();
        return;
      }
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      /* onclose follows */
    };
  }

  private scheduleReconnect(): void {
    this.setState("reconnecting");
    const base = Math.min(this.opts.maxBackoffMs, this.opts.backoffMs * 2 ** Math.min(this.attempt, 16));
    this.attempt += 1;
    // ±25% jitter, so clients cut off together do not come back together.
    const delay = base * (0.75 + Math.random() * 0.5);
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  private onWelcome(w: Welcome): void {
    this.welcome = w;
    this.attempt = 0;
    this.setState("open");
    for (const p of this.unacked.values()) this.transmit(p);
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.resolve(w);
    // Browsers cannot see the server's pings: a ping of ours must come back, or the connection is dead.
    this.lastFrameAt = Date.now();
    this.heartbeat = setInterval(() => {
      const idle = Date.now() - this.lastFrameAt;
      if (idle > 2 * w.heartbeat_ms) {
        this.ws?.close(4000, "no answer");
        this.forceReconnect();
      } else if (idle >= w.heartbeat_ms / 2) {
        this.raw({ type: "ping", req_id: `p${++this.reqCounter}` });
      }
    }, Math.max(1000, w.heartbeat_ms / 2));
  }

  /** Drops the connection and reconnects (resuming every channel from its last sequence). */
  private forceReconnect(): void {
    const ws = this.ws;
    this.ws = null;
    this.welcome = null;
    for (const p of this.unacked.values()) p.inFlight = false;
    ws?.close(4000, "resync");
    this.clearTimers();
    this.scheduleReconnect();
  }

  private transmit(p: PendingSend): void {
    if (this._state !== "open" || !this.ws || p.inFlight) return;
    p.inFlight = true;
    this.ws.send(JSON.stringify(p.frame));
  }

  private raw(frame: Record<string, unknown>): void {
    if (this._state === "open" && this.ws) this.ws.send(JSON.stringify(frame));
  }

  // ---- frames ----

  private dispatch(frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        break;
      case "ack": {
        const p = frame.req_id ? this.unacked.get(frame.req_id) : undefined;
        if (p) {
          clearTimeout(p.timer);
          this.unacked.delete(p.reqId);
          p.resolve(frame);
        }
        break;
      }
      case "error": {
        const p = frame.req_id ? this.unacked.get(frame.req_id) : undefined;
        if (p) {
          if (frame.code === "rate_limited" || frame.code === "unavailable") {
            // Try again later, still with the same client_msg_id.
            p.inFlight = false;
            setTimeout(() => this.transmit(p), frame.retry_after_ms ?? this.opts.backoffMs);
            return;
          }
          clearTimeout(p.timer);
          this.unacked.delete(p.reqId);
          p.reject(new SendError(frame.code, frame.message));
          return;
        }
        break;
      }
      case "resumed":
        for (const [c, seq] of Object.entries(frame.channels)) this.track(c, seq);
        break;
      case "message.new": {
        const last = this.seqs.get(frame.channel_id);
        if (last !== undefined && frame.seq <= last) return; // already held
        if (last !== undefined && frame.seq > last + 1) {
          // Missed messages: resume from what is held, which brings them in order.
          this.forceReconnect();
          return;
        }
        this.seqs.set(frame.channel_id, frame.seq);
        if (frame.message.reply?.state === "generating") this.seedReply(frame.message);
        break;
      }
      case "message.updated":
        if (frame.message.reply && frame.message.reply.state !== "generating") this.replies.delete(frame.message.id);
        break;
      case "message.delta":
        this.onDelta(frame);
        break;
      case "channel.created":
      case "channel.members_joined":
        if (!this.seqs.has(frame.channel.id)) this.seqs.set(frame.channel.id, frame.channel.last_seq);
        break;
      case "channel.deleted":
        this.seqs.delete(frame.channel_id);
        break;
      case "channel.member_left":
        if (frame.user_id === this.welcome?.user_id) this.seqs.delete(frame.channel.id);
        break;
    }
    this.emit(frame.type, frame as never);
  }

  private onDelta(f: FrameOf<"message.delta">): void {
    let r = this.replies.get(f.message_id);
    if (!r) {
      if (f.offset !== 0) {
        this.emit("reply.gap", { channel_id: f.channel_id, message_id: f.message_id });
        return;
      }
      r = { channel_id: f.channel_id, text: "", bytes: 0 };
      this.replies.set(f.message_id, r);
    }
    const piece = utf8.encode(f.delta);
    if (f.offset > r.bytes) {
      this.emit("reply.gap", { channel_id: f.channel_id, message_id: f.message_id });
      return;
    }
    const fresh = piece.subarray(Math.min(piece.length, r.bytes - f.offset));
    if (fresh.length === 0) return;
    r.text += utf8Decoder.decode(fresh);
    r.bytes += fresh.length;
    this.emit("reply", { channel_id: f.channel_id, message_id: f.message_id, text: r.text });
  }

  private emit<K extends keyof Events>(type: K, value: Events[K]): void {
    for (const h of this.listeners.get(type) ?? []) {
      try {
        (h as Handler<Events[K]>)(value);
      } catch (e) {
        console.error(`confab: a ${String(type)} handler failed`, e);
      }
    }
  }

  private setState(s: SocketState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit("state", s);
  }

  private clearTimers(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.reconnectTimer = null;
    this.heartbeat = null;
  }

  private failWaiters(e: Error): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(e);
  }
}

function defaultOrigin(): string {
  const loc = (globalThis as { location?: { origin: string } }).location;
  if (!loc) throw new Error("baseUrl is required outside a browser");
  return loc.origin;
}

function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}
