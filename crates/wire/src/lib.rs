//! The native wire format: the JSON shapes shared by the REST API (`confab-api-native`), the WebSocket
//! protocol (`confab-gateway`, `docs/protocol.md`) and the standard webhooks (`confab-outbox`). Domain types
//! are converted here; they are never serialized as-is. The WebSocket frames that wrap these shapes are the
//! gateway's own.
//!
//! - `messages`: a message as sent to clients (`MessageDto`, with its bot reply's state) and the content of
//!   a message to send (`SendMessageBody`).
//! - `channels`: a channel (`ChannelDto`, with the calling member's read position) and its members
//!   (`MemberDto`).
//! - `users`: a user (`UserDto`).
//! - `files`: a stored file (`FileDto`) and where it is served from.
//! - `errors`: the stable error codes and the messages shown to clients.

mod channels;
mod errors;
mod files;
mod messages;
mod users;

pub use channels::{ChannelDto, MemberDto};
pub use errors::{error_code, error_message};
pub use files::{FileDto, file_url};
pub use messages::{MessageDto, ReplyDto, SendMessageBody};
pub use users::UserDto;
