// The native REST API under /api/v1, typed. Errors come back as `ApiError` with the server's code. Every
// request body and answer is typed here or in types.ts, and openapi-checks.ts checks each against the OpenAPI
// document.

import type {
  Bot,
  BotSettings,
  Channel,
  ChannelKind,
  FileInfo,
  Member,
  Message,
  MessageType,
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
  cover_url?: string;
  /** Members. For `direct`: the other user (session token) or both users (master token). */
  user_ids?: string[];
  custom_type?: string;
  data?: unknown;
}

export interface ChannelPatch {
  name?: string;
  cover_url?: string;
  custom_type?: string;
  /** `null` clears the data. */
  data?: unknown;
}

/** A send over HTTP: the socket's `send`, and for the application `sender_id` and the `admin` type. */
export type HttpSendInput = Omit<SendInput, "message_type"> & { message_type?: MessageType; sender_id?: string };

/** The body of `POST /channels/{id}/messages`: the type is `type` here, `message_type` in a socket frame. */
export type SendMessageBody = Omit<HttpSendInput, "message_type"> & { type?: MessageType };

export interface MessagePatch {
  text?: string;
  custom_type?: string;
  /** `null` clears the data. */
  data?: unknown;
  payload?: unknown;
}

export interface NewUser {
  id: string;
  nickname?: string;
  profile_url?: string;
  metadata?: Record<string, string>;
  is_bot?: boolean;
}

export interface UserPatch {
  nickname?: string;
  profile_url?: string;
  /** Replaces the metadata as a whole. */
  metadata?: Record<string, string>;
}

export interface NewBot {
  id: string;
  nickname?: string;
  profile_url?: string;
  /** Omitted fields take their defaults. */
  settings: Partial<BotSettings>;
}

export interface BotPatch {
  nickname?: string;
  profile_url?: string;
  /** Replaces the settings as a whole. */
  settings?: Partial<BotSettings>;
}

export interface NewEndpoint {
  url: string;
  /** Event types (`message.sent`) or patterns (`message.*`); omitted or empty: every event. */
  events?: string[];
  description?: string;
  enabled?: boolean;
}

export type EndpointPatch = Partial<NewEndpoint>;

export interface InviteBody {
  user_ids: string[];
}

export interface ReadBody {
  /** Everything up to and including this sequence has been read. */
  seq: number;
}

export interface ReadResult {
  read_seq: number;
}

export interface ProviderName {
  name: string;
}

/** `GET /moderation/rules`: the configuration file's rules (read-only) and the application's. */
export interface ModerationRules {
  file: unknown;
  app: unknown;
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

// The lists the server answers with (unwrapped by the methods below).
export interface UserList {
  users: User[];
  next?: string;
}
export interface ChannelList {
  channels: Channel[];
  next?: string;
}
export interface MemberList {
  members: Member[];
  next?: string;
}
export interface MessageList {
  messages: Message[];
}
export interface BotList {
  bots: Bot[];
}
export interface UsageList {
  usage: UsageRow[];
}
export interface ProviderList {
  providers: ProviderView[];
}
export interface FlaggedList {
  flagged: Flagged[];
  /** Pass as `after` for the next page. */
  next?: number;
}
export interface EndpointList {
  endpoints: EndpointView[];
}
export interface AttemptList {
  attempts: Attempt[];
}
export interface DeadLetterList {
  dead_letters: DeadLetter[];
  /** Pass as `after` for the next page. */
  next?: number;
}
/** A new endpoint: the signing secret (`whsec_…`) is shown only in this answer. */
export type CreatedEndpoint = EndpointView & { secret: string };

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
    const r = await this.request<ChannelList>("GET", "/channels", undefined, opts);
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

  updateChannel(id: string, patch: ChannelPatch): Promise<Channel> {
    return this.request("PATCH", `/channels/${enc(id)}`, patch);
  }

  deleteChannel(id: string): Promise<void> {
    return this.request("DELETE", `/channels/${enc(id)}`);
  }

  async members(channelId: string): Promise<Member[]> {
    const out: Member[] = [];
    let after: string | undefined;
    do {
      const r = await this.request<MemberList>(
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
    return this.request("POST", `/channels/${enc(channelId)}/members`, { user_ids: userIds } satisfies InviteBody);
  }

  leave(channelId: string): Promise<void> {
    return this.request("POST", `/channels/${enc(channelId)}/leave`);
  }

  markRead(channelId: string, seq: number): Promise<ReadResult> {
    return this.request("POST", `/channels/${enc(channelId)}/read`, { seq } satisfies ReadBody);
  }

  /** Messages ascending by `seq`: the newest without a range, else before or after a sequence. */
  async history(channelId: string, range: HistoryRange = {}): Promise<Message[]> {
    const r = await this.request<MessageList>(
      "GET",
      `/channels/${enc(channelId)}/messages`,
      undefined,
      { ...range },
    );
    return r.messages;
  }

  /** A send over HTTP (the WebSocket's `send` is the usual way). */
  sendMessage(channelId: string, input: HttpSendInput): Promise<Message> {
    const { message_type, ...rest } = input;
    const body: SendMessageBody = message_type === undefined ? rest : { ...rest, type: message_type };
    return this.request("POST", `/channels/${enc(channelId)}/messages`, body);
  }

  getMessage(id: number): Promise<Message> {
    return this.request("GET", `/messages/${id}`);
  }

  editMessage(id: number, patch: MessagePatch): Promise<Message> {
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
  uploadFile(channelId: string, file: Blob, name: string): Promise<FileInfo> {
    const form = new FormData();
    form.append("channel_id", channelId);
    form.append("file", file, name);
    return this.request("POST", "/files", form);
  }

  // ---- the application (master token) ----

  async listUsers(opts: { after?: string; limit?: number } = {}): Promise<Page<User>> {
    const r = await this.request<UserList>("GET", "/users", undefined, opts);
    return { items: r.users, next: r.next };
  }

  getUser(id: string): Promise<User> {
    return this.request("GET", `/users/${enc(id)}`);
  }

  createUser(u: NewUser): Promise<User> {
    return this.request("POST", "/users", u);
  }

  updateUser(id: string, patch: UserPatch): Promise<User> {
    return this.request("PATCH", `/users/${enc(id)}`, patch);
  }

  deleteUser(id: string): Promise<void> {
    return this.request("DELETE", `/users/${enc(id)}`);
  }

  /** A session token for the user's clients. */
  issueSession(userId: string): Promise<SessionToken> {
    return this.request("POST", `/users/${enc(userId)}/sessions`);
  }

  async listBots(): Promise<Bot[]> {
    return (await this.request<BotList>("GET", "/bots")).bots;
  }

  createBot(b: NewBot): Promise<Bot> {
    return this.request("POST", "/bots", b);
  }

  updateBot(id: string, patch: BotPatch): Promise<Bot> {
    return this.request("PATCH", `/bots/${enc(id)}`, patch);
  }

  deleteBot(id: string): Promise<void> {
    return this.request("DELETE", `/bots/${enc(id)}`);
  }

  async usage(q: { from?: string; to?: string; bot_id?: string; user_id?: string } = {}): Promise<UsageRow[]> {
    return (await this.request<UsageList>("GET", "/usage", undefined, q)).usage;
  }

  async listProviders(): Promise<ProviderView[]> {
    return (await this.request<ProviderList>("GET", "/providers")).providers;
  }

  /** Adds or replaces a provider; the key is named by `api_key_env`, never sent. */
  addProvider(p: Record<string, unknown>): Promise<ProviderName> {
    return this.request("POST", "/providers", p);
  }

  deleteProvider(name: string): Promise<void> {
    return this.request("DELETE", `/providers/${enc(name)}`);
  }

  moderationRules(): Promise<ModerationRules> {
    return this.request("GET", "/moderation/rules");
  }

  setModerationRules(rules: unknown): Promise<ModerationRules> {
    return this.request("PUT", "/moderation/rules", rules);
  }

  async flagged(q: { state?: string; channel_id?: string; after?: number; limit?: number } = {}) {
    return this.request<FlaggedList>("GET", "/moderation/flags", undefined, q);
  }

  reviewFlag(messageId: number, verdict: "approve" | "remove"): Promise<Flagged> {
    return this.request("POST", `/moderation/flags/${messageId}/${verdict}`);
  }

  async listEndpoints(): Promise<EndpointView[]> {
    return (await this.request<EndpointList>("GET", "/webhooks/endpoints")).endpoints;
  }

  /** The secret (`whsec_…`) is shown only in this answer. */
  createEndpoint(e: NewEndpoint): Promise<CreatedEndpoint> {
    return this.request("POST", "/webhooks/endpoints", e);
  }

  updateEndpoint(id: string, patch: EndpointPatch): Promise<EndpointView> {
    return this.request("PATCH", `/webhooks/endpoints/${enc(id)}`, patch);
  }

  deleteEndpoint(id: string): Promise<void> {
    return this.request("DELETE", `/webhooks/endpoints/${enc(id)}`);
  }

  async attempts(endpointId: string): Promise<Attempt[]> {
    return (await this.request<AttemptList>("GET", `/webhooks/endpoints/${enc(endpointId)}/attempts`)).attempts;
  }

  /** The oldest dead letters (the first page of `GET .../dead_letters`). */
  async deadLetters(endpointId: string): Promise<DeadLetter[]> {
    const path = `/webhooks/endpoints/${enc(endpointId)}/dead_letters`;
    return (await this.request<DeadLetterList>("GET", path)).dead_letters;
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
