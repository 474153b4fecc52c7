export * from "./types.js";
export { ApiError, ConfabApi } from "./rest.js";
export type {
  ApiOptions,
  Attempt,
  BotPatch,
  ChannelPatch,
  CreatedEndpoint,
  DeadLetter,
  EndpointPatch,
  EndpointView,
  Flagged,
  FlaggedList,
  HistoryRange,
  HttpSendInput,
  MessagePatch,
  ModerationRules,
  NewBot,
  NewChannel,
  NewEndpoint,
  NewUser,
  Page,
  ProviderView,
  ReadResult,
  UserPatch,
} from "./rest.js";
export { ConfabSocket, SendError } from "./socket.js";
export type { ReplyProgress, SocketOptions, SocketState, WebSocketFactory, WebSocketLike } from "./socket.js";
