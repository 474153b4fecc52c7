import { afterEach, beforeEach, describe, expect, it } from "vitest";
import WebSocket from "ws";

import { ConfabSocket, SendError, type ReplyProgress, type WebSocketLike } from "../src/index.js";
import { FakeServer, message, until } from "./fake-server.js";

let server: FakeServer;
let socket: ConfabSocket;

function client(extra: Partial<ConstructorParameters<typeof ConfabSocket>[0]> = {}): ConfabSocket {
  socket = new ConfabSocket({
    baseUrl: server.baseUrl,
    token: "cfs_test",
    connect: (url) => new WebSocket(url) as unknown as WebSocketLike,
    backoffMs: 20,
    maxBackoffMs: 100,
    ...extra,
  });
  return socket;
}

beforeEach(async () => {
  server = await FakeServer.start();
});

afterEach(async () => {
  socket?.close();
  await server.stop();
});

describe("ConfabSocket", () => {
  it("says hello and resolves at the welcome", async () => {
    const welcome = await client().connect();
    expect(welcome.user_id).toBe("alice");
    expect(socket.state).toBe("open");
    expect(server.hellos).toEqual([{ type: "hello", resume: {} }]);
  });

  it("acknowledges a send with the stored message", async () => {
    await client().connect();
    const ack = await socket.send("g", { text: "hi" });
    expect(ack.seq).toBe(1);
    expect(ack.duplicate).toBe(false);
    expect(ack.message.text).toBe("hi");
    const sent = server.received.find((f) => f.type === "send")!;
    expect(typeof sent.client_msg_id).toBe("string");
  });

  it("resends an unacknowledged send after a reconnection, stored once", async () => {
    await client().connect();
    server.acking = false;
    const pending = socket.send("g", { text: "once" });
    await until(() => server.stored.size === 1, "the send to arrive");
    server.acking = true;
    server.drop(1001);
    const ack = await pending;
    expect(ack.duplicate).toBe(true);
    expect(server.stored.size).toBe(1);
    const sends = server.received.filter((f) => f.type === "send");
    expect(sends).toHaveLength(2);
    expect(sends[0].client_msg_id).toBe(sends[1].client_msg_id);
  });

  it("resumes every channel from the last sequence it holds", async () => {
    await client().connect();
    socket.track("old", 7);
    server.push({ type: "message.new", channel_id: "g", seq: 1, message: message("g", 1, "a") });
    server.push({ type: "message.new", channel_id: "g", seq: 2, message: message("g", 2, "b") });
    await until(() => socket.lastSeq("g") === 2, "the messages");
    server.drop(1001);
    await until(() => server.hellos.length === 2 && socket.state === "open", "the reconnection");
    expect(server.hellos[1].resume).toEqual({ old: 7, g: 2 });
  });

  it("drops messages it already holds and resyncs on a gap", async () => {
    const seen: number[] = [];
    client().on("message.new", (f) => seen.push(f.seq));
    await socket.connect();
    server.push({ type: "message.new", channel_id: "g", seq: 1, message: message("g", 1, "a") });
    server.push({ type: "message.new", channel_id: "g", seq: 1, message: message("g", 1, "a") });
    server.push({ type: "message.new", channel_id: "g", seq: 3, message: message("g", 3, "c") });
    await until(() => server.hellos.length === 2, "a resume after the gap");
    expect(seen).toEqual([1]);
    expect(server.hellos[1].resume).toEqual({ g: 1 });
  });

  it("assembles a streaming reply from byte offsets, overlaps and multibyte text included", async () => {
    const progress: ReplyProgress[] = [];
    const gaps: number[] = [];
    client().on("reply", (r) => progress.push(r));
    socket.on("reply.gap", (g) => gaps.push(g.message_id));
    await socket.connect();
    const generating = message("g", 1, "", { sender_id: "bot", reply: { state: "generating", trigger_id: 5 } });
    server.push({ type: "message.new", channel_id: "g", seq: 1, message: generating });
    const delta = (offset: number, d: string) =>
      server.push({ type: "message.delta", channel_id: "g", seq: 1, message_id: 1001, offset, delta: d });
    delta(0, "Hé");
    delta(3, "llo");
    delta(3, "llo w"); // repeats "llo", adds " w"
    delta(8, "örld");
    delta(99, "lost");
    await until(() => gaps.length === 1, "the gap");
    expect(progress.at(-1)).toEqual({ channel_id: "g", message_id: 1001, text: "Héllo wörld" });
    expect(gaps).toEqual([1001]);
  });

  it("fails a send the server refuses and retries one that is rate limited", async () => {
    await client().connect();
    server.sendErrors.push({ code: "not_a_member", message: "not a member" });
    await expect(socket.send("g", { text: "x" })).rejects.toMatchObject({ code: "not_a_member" });
    server.sendErrors.push({ code: "rate_limited", message: "slow down", retry_after_ms: 30 });
    const ack = await socket.send("g", { text: "y" });
    expect(ack.message.text).toBe("y");
  });

  it("does not reconnect once access is revoked", async () => {
    const states: string[] = [];
    client().on("state", (s) => states.push(s));
    await socket.connect();
    server.acking = false;
    const pending = socket.send("g", { text: "x" });
    server.drop(4003);
    await expect(pending).rejects.toBeInstanceOf(SendError);
    expect(socket.state).toBe("closed");
    await new Promise((r) => setTimeout(r, 150));
    expect(server.hellos).toHaveLength(1);
    expect(states).toContain("closed");
  });

  it("times out a send that is never acknowledged", async () => {
    await client({ sendTimeoutMs: 100 }).connect();
    server.acking = false;
    await expect(socket.send("g", { text: "x" })).rejects.toMatchObject({ code: "timeout" });
  });
});
