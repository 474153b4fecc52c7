// A protocol peer for the client's tests: speaks docs/protocol.md over a real WebSocket (package `ws`) on
// loopback, stores sends once per client_msg_id, and lets a test drop connections and push frames.

import { WebSocketServer, type WebSocket } from "ws";
import type { AddressInfo } from "node:net";

export interface Hello {
  type: "hello";
  resume?: Record<string, number>;
}

export class FakeServer {
  readonly hellos: Hello[] = [];
  readonly received: Record<string, unknown>[] = [];
  /** client_msg_id → stored seq. */
  readonly stored = new Map<string, number>();
  private seq = 0;
  private readonly wss: WebSocketServer;
  private sockets: WebSocket[] = [];
  /** Answer sends? When false, sends are received and never acknowledged. */
  acking = true;
  /** Errors to answer the next sends with. */
  readonly sendErrors: Record<string, unknown>[] = [];

  private constructor(wss: WebSocketServer) {
    this.wss = wss;
    wss.on("connection", (ws) => {
      this.sockets.push(ws);
      ws.on("close", () => (this.sockets = this.sockets.filter((s) => s !== ws)));
      ws.on("message", (data) => this.onFrame(ws, JSON.parse(String(data))));
    });
  }

  static async start(): Promise<FakeServer> {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/api/v1/ws" });
    await new Promise<void>((r) => wss.once("listening", () => r()));
    return new FakeServer(wss);
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${(this.wss.address() as AddressInfo).port}`;
  }

  get connections(): number {
    return this.sockets.length;
  }

  /** Sends a frame to every connected client. */
  push(frame: Record<string, unknown>): void {
    for (const s of this.sockets) s.send(JSON.stringify(frame));
  }

  /** Closes every connection with `code`. */
  drop(code = 1001): void {
    for (const s of this.sockets) s.close(code, "test");
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.terminate();
    await new Promise<void>((r) => this.wss.close(() => r()));
  }

  private onFrame(ws: WebSocket, f: Record<string, unknown>): void {
    this.received.push(f);
    switch (f.type) {
      case "hello":
        this.hellos.push(f as unknown as Hello);
        ws.send(
          JSON.stringify({
            type: "welcome",
            session_id: this.hellos.length,
            user_id: "alice",
            heartbeat_ms: 30000,
            max_frame_bytes: 65536,
          }),
        );
        break;
      case "send": {
        const err = this.sendErrors.shift();
        if (err) {
          ws.send(JSON.stringify({ type: "error", req_id: f.req_id, ...err }));
          return;
        }
        const id = String(f.client_msg_id);
        const duplicate = this.stored.has(id);
        if (!duplicate) this.stored.set(id, ++this.seq);
        if (!this.acking) return;
        const seq = this.stored.get(id)!;
        ws.send(
          JSON.stringify({
            type: "ack",
            req_id: f.req_id,
            channel_id: f.channel_id,
            seq,
            message_id: 1000 + seq,
            duplicate,
            message: message(String(f.channel_id), seq, String(f.text ?? "")),
          }),
        );
        break;
      }
      case "ping":
        ws.send(JSON.stringify({ type: "pong", req_id: f.req_id }));
        break;
    }
  }
}

export function message(channel: string, seq: number, text: string, extra: Record<string, unknown> = {}) {
  return {
    id: 1000 + seq,
    channel_id: channel,
    seq,
    sender_id: "alice",
    type: "text",
    text,
    custom_type: "",
    mentions: [],
    reply_count: 0,
    created_at: 1,
    updated_at: 1,
    edited: false,
    deleted: false,
    ...extra,
  };
}

export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
