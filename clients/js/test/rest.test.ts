import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { ApiError, ConfabApi } from "../src/index.js";

let server: Server;
let base: string;
const seen: { method: string; url: string; auth?: string; body: string }[] = [];

function read(req: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => resolve(body));
  });
}

beforeEach(async () => {
  seen.length = 0;
  server = createServer(async (req, res) => {
    const body = await read(req);
    seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, body });
    if (req.url === "/api/v1/channels/g/messages?before=10&limit=2") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ messages: [{ seq: 8 }, { seq: 9 }] }));
    } else if (req.url?.startsWith("/api/v1/channels?")) {
      const after = new URL(req.url, "http://x").searchParams.get("after");
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(after ? { channels: [{ id: "b" }] } : { channels: [{ id: "a" }], next: "a" }));
    } else if (req.method === "POST" && req.url === "/api/v1/channels/g/messages") {
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify({ id: 1, channel_id: "g", seq: 1 }));
    } else if (req.url === "/api/v1/messages/5/stop") {
      res.writeHead(204).end();
    } else {
      res.writeHead(429, { "content-type": "application/json", "retry-after": "2" });
      res.end(JSON.stringify({ error: { code: "rate_limited", message: "slow down" } }));
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterEach(async () => {
  await new Promise<void>((r) => server.close(() => r()));
});

describe("ConfabApi", () => {
  it("reads history with sequence cursors and the bearer token", async () => {
    const api = new ConfabApi({ baseUrl: base, token: "cfs_1" });
    const page = await api.history("g", { before: 10, limit: 2 });
    expect(page.map((m) => m.seq)).toEqual([8, 9]);
    expect(seen[0].auth).toBe("Bearer cfs_1");
  });

  it("follows channel pages to the end", async () => {
    const api = new ConfabApi({ baseUrl: base, token: "t" });
    expect((await api.allChannels()).map((c) => c.id)).toEqual(["a", "b"]);
  });

  it("returns nothing for 204 and throws the server's error code otherwise", async () => {
    const api = new ConfabApi({ baseUrl: base, token: "t" });
    await expect(api.stopReply(5)).resolves.toBeUndefined();
    const err = await api.me().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 429, code: "rate_limited", message: "slow down", retryAfterMs: 2000 });
  });

  it("sends over HTTP with the type as REST names it", async () => {
    const api = new ConfabApi({ baseUrl: base, token: "t" });
    await api.sendMessage("g", { message_type: "image", file_id: "f1", client_msg_id: "k" });
    await api.sendMessage("g", { text: "hi" });
    expect(seen.map((r) => JSON.parse(r.body))).toEqual([
      { type: "image", file_id: "f1", client_msg_id: "k" },
      { text: "hi" },
    ]);
  });

  it("builds file URLs a browser can load", () => {
    const api = new ConfabApi({ baseUrl: base + "/", token: "a b" });
    expect(api.fileUrl("/api/v1/files/f1")).toBe(`${base}/api/v1/files/f1?token=a%20b`);
  });
});
