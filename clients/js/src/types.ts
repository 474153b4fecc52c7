// The native API's objects and WebSocket frames (docs/protocol.md, /api/v1/openapi.json). The objects are
// checked against the OpenAPI document by openapi-checks.ts; the frames are the protocol's (docs/protocol.md).

/** Milliseconds since the Unix epoch. */
export type Millis = number;

export interface User {
  id: string;
  nickname: string;
  profile_url: string;
  metadata: Record<string, unknown>;
  is_bot: boolean;
  online: boolean;
  last_seen_at?: Millis;
  created_at: Millis;
}

export interface Member extends User {
  joined_at: Millis;
  read_seq: number;
}

export type ChannelKind = "direct" | "group";

export interface Channel {
  id: string;
  kind: ChannelKind;
  name: string;
  cover_url: string;
  custom_type: string;
  data?: unknown;
  created_by?: string;
  created_at: Millis;
  updated_at: Millis;
  /** Sequence of the newest message (0 when empty). */
  last_seq: number;
  last_message_at?: Millis;
  member_count: number;
  /** For the calling member. */
  read_seq?: number;
  unread_count?: number;
}

export type MessageType = "text" | "image" | "file" | "custom" | "admin";

export type ReplyState = "generating" | "complete" | "stopped" | "failed" | "interrupted";

/** `length`: a `complete` reply cut at its length limit; otherwise a failure's reason, free text. */
export type ReplyReason = "length" | (string & {});

export interface ReplyInfo {
  state: ReplyState;
  /** The message the reply answers. */
  trigger_id?: number;
  /**
   * Why a reply ended as it did, for the user: the reason of a `failed` or `interrupted` reply, or
   * `length` on a `complete` one cut at its length limit.
   */
  reason?: ReplyReason;
}

export interface FileInfo {
  id: string;
  name: string;
  size: number;
  content_type: string;
  /** Relative; fetched with the session token (header or `?token=`). */
  url: string;
  sha256: string;
}

export interface Message {
  id: number;
  channel_id: string;
  /** 1, 2, 3… in its channel with no gaps. */
  seq: number;
  sender_id?: string;
  type: MessageType;
  text: string;
  custom_type: string;
  data?: unknown;
  payload?: unknown;
  mentions: string[];
  client_msg_id?: string;
  parent_id?: number;
  reply_count: number;
  file?: FileInfo;
  created_at: Millis;
  updated_at: Millis;
  edited: boolean;
  deleted: boolean;
  reply?: ReplyInfo;
}

/** What a client sends; `client_msg_id` makes retries safe (the server stores one message per id). */
export interface SendInput {
  text?: string;
  message_type?: Exclude<MessageType, "admin">;
  custom_type?: string;
  data?: unknown;
  payload?: unknown;
  mentions?: string[];
  client_msg_id?: string;
  parent_id?: number;
  file_id?: string;
}

export interface Welcome {
  type: "welcome";
  session_id: number;
  user_id: string;
  heartbeat_ms: number;
  max_frame_bytes: number;
}

export interface Ack {
  type: "ack";
  req_id?: string;
  channel_id: string;
  seq: number;
  message_id: number;
  /** A retry of a send the server already stored: `message` is the original. */
  duplicate: boolean;
  message: Message;
}

export interface ErrorFrame {
  type: "error";
  req_id?: string;
  code: string;
  message: string;
  retry_after_ms?: number;
}

export type ServerFrame =
  | Welcome
  | Ack
  | ErrorFrame
  | { type: "resumed"; channels: Record<string, number> }
  | { type: "pong"; req_id?: string }
  | { type: "message.new"; channel_id: string; seq: number; message: Message }
  | { type: "message.updated"; channel_id: string; seq: number; message: Message }
  | { type: "message.deleted"; channel_id: string; seq: number; message_id: number }
  | {
      type: "message.delta";
      channel_id: string;
      seq: number;
      message_id: number;
      offset: number;
      delta: string;
    }
  | { type: "typing"; channel_id: string; user_id: string; active: boolean }
  | { type: "read"; channel_id: string; user_id: string; seq: number }
  | { type: "presence"; user_id: string; online: boolean; last_seen_at?: Millis }
  | { type: "channel.created"; channel: Channel }
  | { type: "channel.updated"; channel: Channel }
  | { type: "channel.deleted"; channel_id: string }
  | { type: "channel.members_joined"; channel: Channel; user_ids: string[]; by?: string }
  | { type: "channel.member_left"; channel: Channel; user_id: string; by?: string };

export type FrameOf<T extends ServerFrame["type"]> = Extract<ServerFrame, { type: T }>;

/**
 * Which group messages address a bot (1:1 messages always do): `mentions` (mentions, commands naming it,
 * follow-ups in its threads), `mentions_and_commands` (also every `/` command: Sendbird's privacy mode),
 * `all_messages`.
 */
export type BotTrigger = "mentions" | "mentions_and_commands" | "all_messages";

export interface BotSettings {
  provider: string;
  fallbacks: string[];
  model: string;
  system_prompt: string;
  temperature: number | null;
  max_output_tokens: number;
  topic: string;
  custom_content: string;
  context_messages: number;
  context_tokens: number;
  reply_in_threads: boolean;
  user_daily_tokens: number;
  bot_daily_tokens: number;
  max_concurrent: number;
  trigger: BotTrigger;
  /**
   * A user may summon the bot into a channel it is not a member of by mentioning it. Default false:
   * it answers users only where it is a member.
   */
  summonable?: boolean;
  message_context: boolean;
  callback_url: string;
}

export interface Bot extends User {
  /** For the application (master token) only: a user's client sees the bot's profile, never its settings. */
  settings?: BotSettings;
}

export interface UsageRow {
  day: string;
  bot_id: string;
  user_id: string;
  channel_id: string;
  prompt_tokens: number;
  completion_tokens: number;
  replies: number;
}

export interface SessionToken {
  token: string;
  user_id: string;
  expires_at?: Millis;
}
