export * from "./types.js";
export { ApiError, ConfabApi } from "./rest.js";
export type {
  ApiOptions,
  Attempt,
  DeadLetter,
  EndpointView,
  Flagged,
  HistoryRange,
  NewChannel,
  Page,
  ProviderView,
} from "./rest.js";
export { ConfabSocket, SendError } from "./socket.js";
export type { ReplyProgress, SocketOptions, SocketState, WebSocketFactory, WebSocketLike } from "./socket.js";
