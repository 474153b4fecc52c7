// The native REST API under /api/v1, typed. Errors come back as `ApiError` with the server's code.

import type {
  Bot,
  BotSettings,
  Channel,
  ChannelKind,
  Member,
  Message,
  SendInput,
  SessionToken,
  UsageRow,
  User,
} from "./types.js";

/** A refused request: the HTTP status and the server's `{error: {code, message}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** From `Retry-After`, for `rate_limited`. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export interface ApiOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:8080` (empty: the page's own origin). */
  baseUrl?: string;
  /** A user's session token, or the master API token for the admin calls. */
  token: string;
  fetch?: typeof fetch;
}

type Query = Record<string, string | number | boolean | undefined>;

export interface Page<T> {
  items: T[];
  /** Pass as `after` for the next page; absent on the last one. */
  next?: string;
}

export interface HistoryRange {
  /** Older than this sequence. */
  before?: number;
  /** Newer than this sequence. */
  after?: number;
  /** 1 to 200 (default 50). */
  limit?: number;
}

export interface NewChannel {
  kind?: ChannelKind;
  id?: string;
  name?: string;
  user_ids: string[];
  custom_type?: string;
  data?: unknown;
}

export interface EndpointView {
  id: string;
  url: string;
  events: string[];
  description: string;
  enabled: boolean;
  /** `standard`, or the surface that keeps it (`sendbird`, `nim`). */
  format: string;
  created_at: number;
  updated_at: number;
  pending: number;
  delivered: number;
  failed_attempts: number;
  dead_lettered: number;
}

export interface Attempt {
  event_id: number;
  event_type: string;
  at: number;
  duration_ms: number;
  status?: number;
  error?: string;
  delivered: boolean;
}

export interface DeadLetter {
  event_id: number;
  event_type: string;
  channel_id?: string;
  payload: unknown;
  created_at: number;
  attempts: number;
  last_error: string;
  failed_at: number;
}

export interface Flagged {
  message: Message;
  rules: string[];
  state: "pending" | "approved" | "removed";
  flagged_at: number;
  reviewed_at?: number;
}

/** A provider as listed: its configuration without any key. */
export type ProviderView = Record<string, unknown> & { name: string; kind: string; source: string };

export class ConfabApi {
  readonly baseUrl: string;
  readonly token: string;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ApiOptions) {
    this.baseUrl = (opts.baseUrl ?? "").replace(/\/+$/, "");
    this.token = opts.token;
    this.fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** One call; JSON in and out. `undefined` for `204`. */
  async request<T>(method: string, path: string, body?: unknown, query?: Query): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    let payload: BodyInit | undefined;
    if (body instanceof FormData) {
      payload = body;
    } else if (body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const res = await this.fetchImpl(this.url(path, query), { method, headers, body: payload });
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    const json = text ? safeJson(text) : undefined;
    if (!res.ok) {
      const err = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
      const retry = Number(res.headers.get("retry-after"));
      throw new ApiError(
        res.status,
        err?.code ?? `http_${res.status}`,
        err?.message ?? (text || res.statusText),
        Number.isFinite(retry) && retry > 0 ? retry * 1000 : undefined,
      );
    }
    return json as T;
  }

  url(path: string, query?: Query): string {
    const q = Object.entries(query ?? {}).filter(([, v]) => v !== undefined);
    const search = q.length
      ? "?" + q.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`).join("&")
      : "";
    return `${this.baseUrl}/api/v1${path}${search}`;
  }

  /** A file's URL that a browser can load directly (`<img src>`, a download link). */
  fileUrl(relativeUrl: string): string {
    const sep = relativeUrl.includes("?") ? "&" : "?";
    return `${this.baseUrl}${relativeUrl}${sep}token=${encodeURIComponent(this.token)}`;
  }

  // ---- the signed-in user ----

  me(): Promise<User> {
    return this.request("GET", "/me");
  }

  async listChannels(opts: { after?: string; limit?: number; user_id?: string } = {}): Promise<Page<Channel>> {
    const r = await this.request<{ channels: Channel[]; next?: string }>("GET", "/channels", undefined, opts);
    return { items: r.channels, next: r.next };
  }

  /** Every page of the caller's channels. */
  async allChannels(): Promise<Channel[]> {
    const out: Channel[] = [];
    let after: string | undefined;
    do {
      const page = await this.listChannels({ after, limit: 100 });
      out.push(...page.items);
      after = page.next;
    } while (after);
    return out;
  }

  getChannel(id: string): Promise<Channel> {
    return this.request("GET", `/channels/${enc(id)}`);
  }

  createChannel(c: NewChannel): Promise<Channel> {
    return this.request("POST", "/channels", c);
  }

  updateChannel(id: string, patch: { name?: string; cover_url?: string; custom_type?: string; data?: unknown }) {
    return this.request<Channel>("PATCH", `/channels/${enc(id)}`, patch);
  }

  deleteChannel(id: string): Promise<void> {
    return this.request("DELETE", `/channels/${enc(id)}`);
  }

  async members(channelId: string): Promise<Member[]> {
    const out: Member[] = [];
    let after: string | undefined;
    do {
      const r = await this.request<{ members: Member[]; next?: string }>(
        "GET",
        `/channels/${enc(channelId)}/members`,
        undefined,
        { after, limit: 100 },
      );
      out.push(...r.members);
      after = r.next;
    } while (after);
    return out;
  }

  invite(channelId: string, userIds: string[]): Promise<Channel> {
    return this.request("POST", `/channels/${enc(channelId)}/members`, { user_ids: userIds });
  }

  leave(channelId: string): Promise<void> {
    return this.request("POST", `/channels/${enc(channelId)}/leave`);
  }

  markRead(channelId: string, seq: number): Promise<{ read_seq: number }> {
    return this.request("POST", `/channels/${enc(channelId)}/read`, { seq });
  }

  /** Messages ascending by `seq`: the newest without a range, else before or after a sequence. */
  async history(channelId: string, range: HistoryRange = {}): Promise<Message[]> {
    const r = await this.request<{ messages: Message[] }>(
      "GET",
      `/channels/${enc(channelId)}/messages`,
      undefined,
      { ...range },
    );
    return r.messages;
  }

  /** A send over HTTP (the WebSocket's `send` is the usual way). */
  sendMessage(channelId: string, input: SendInput & { sender_id?: string }): Promise<Message> {
    return this.request("POST", `/channels/${enc(channelId)}/messages`, input);
  }

  getMessage(id: number): Promise<Message> {
    return this.request("GET", `/messages/${id}`);
  }

  editMessage(id: number, patch: { text?: string; data?: unknown }): Promise<Message> {
    return this.request("PATCH", `/messages/${id}`, patch);
  }

  deleteMessage(id: number): Promise<void> {
    return this.request("DELETE", `/messages/${id}`);
  }

  /** Stops a bot reply that is still generating. */
  stopReply(messageId: number): Promise<void> {
    return this.request("POST", `/messages/${messageId}/stop`);
  }

  /** Uploads a file for a channel; send it with `file_id` and `message_type: "image" | "file"`. */
  uploadFile(channelId: string, file: Blob, name: string): Promise<{ id: string; content_type: string }> {
    const form = new FormData();
    form.append("channel_id", channelId);
    form.append("file", file, name);
    return this.request("POST", "/files", form);
  }

  // ---- the application (master token) ----

  async listUsers(opts: { after?: string; limit?: number } = {}): Promise<Page<User>> {
    const r = await this.request<{ users: User[]; next?: string }>("GET", "/users", undefined, opts);
    return { items: r.users, next: r.next };
  }

  getUser(id: string): Promise<User> {
    return this.request("GET", `/users/${enc(id)}`);
  }

  createUser(u: { id: string; nickname?: string; profile_url?: string; metadata?: Record<string, string> }) {
    return this.request<User>("POST", "/users", u);
  }

  updateUser(id: string, patch: { nickname?: string; profile_url?: string; disabled?: boolean }) {
    return this.request<User>("PATCH", `/users/${enc(id)}`, patch);
  }

  deleteUser(id: string): Promise<void> {
    return this.request("DELETE", `/users/${enc(id)}`);
  }

  /** A session token for the user's clients. */
  issueSession(userId: string): Promise<SessionToken> {
    return this.request("POST", `/users/${enc(userId)}/sessions`);
  }

  async listBots(): Promise<Bot[]> {
    return (await this.request<{ bots: Bot[] }>("GET", "/bots")).bots;
  }

  createBot(b: { id: string; nickname?: string; profile_url?: string; settings: Partial<BotSettings> }) {
    return this.request<Bot>("POST", "/bots", b);
  }

  updateBot(id: string, patch: { nickname?: string; profile_url?: string; settings?: Partial<BotSettings> }) {
    return this.request<Bot>("PATCH", `/bots/${enc(id)}`, patch);
  }

  deleteBot(id: string): Promise<void> {
    return this.request("DELETE", `/bots/${enc(id)}`);
  }

  async usage(q: { from?: string; to?: string; bot_id?: string; user_id?: string } = {}): Promise<UsageRow[]> {
    return (await this.request<{ usage: UsageRow[] }>("GET", "/usage", undefined, q)).usage;
  }

  async listProviders(): Promise<ProviderView[]> {
    return (await this.request<{ providers: ProviderView[] }>("GET", "/providers")).providers;
  }

  /** Adds or replaces a provider; the key is named by `api_key_env`, never sent. */
  addProvider(p: Record<string, unknown>): Promise<{ name: string }> {
    return this.request("POST", "/providers", p);
  }

  deleteProvider(name: string): Promise<void> {
    return this.request("DELETE", `/providers/${enc(name)}`);
  }

  moderationRules(): Promise<{ file: unknown; app: unknown }> {
    return this.request("GET", "/moderation/rules");
  }

  setModerationRules(rules: unknown): Promise<{ file: unknown; app: unknown }> {
    return this.request("PUT", "/moderation/rules", rules);
  }

  async flagged(q: { state?: string; channel_id?: string; after?: number; limit?: number } = {}) {
    return this.request<{ flagged: Flagged[]; next?: number }>("GET", "/moderation/flags", undefined, q);
  }

  reviewFlag(messageId: number, verdict: "approve" | "remove"): Promise<unknown> {
    return this.request("POST", `/moderation/flags/${messageId}/${verdict}`);
  }

  async listEndpoints(): Promise<EndpointView[]> {
    return (await this.request<{ endpoints: EndpointView[] }>("GET", "/webhooks/endpoints")).endpoints;
  }

  /** The secret (`whsec_…`) is shown only in this answer. */
  createEndpoint(e: { url: string; events?: string[]; description?: string; enabled?: boolean }) {
    return this.request<EndpointView & { secret: string }>("POST", "/webhooks/endpoints", e);
  }

  updateEndpoint(id: string, patch: { url?: string; events?: string[]; description?: string; enabled?: boolean }) {
    return this.request<EndpointView>("PATCH", `/webhooks/endpoints/${enc(id)}`, patch);
  }

  deleteEndpoint(id: string): Promise<void> {
    return this.request("DELETE", `/webhooks/endpoints/${enc(id)}`);
  }

  async attempts(endpointId: string): Promise<Attempt[]> {
    return (await this.request<{ attempts: Attempt[] }>("GET", `/webhooks/endpoints/${enc(endpointId)}/attempts`))
      .attempts;
  }

  async deadLetters(endpointId: string): Promise<DeadLetter[]> {
    const path = `/webhooks/endpoints/${enc(endpointId)}/dead_letters`;
    return (await this.request<{ dead_letters: DeadLetter[] }>("GET", path)).dead_letters;
  }

  redeliver(endpointId: string, eventId: number): Promise<Attempt> {
    return this.request("POST", `/webhooks/endpoints/${enc(endpointId)}/dead_letters/${eventId}/redeliver`);
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
