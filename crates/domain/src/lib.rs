//! Confab's domain: identifiers, entities, commands, events, limits and the ports (traits) that storage
//! and the event bus implement. No I/O and no async runtime here.

pub mod bot;
pub mod error;
pub mod event;
pub mod flag;
pub mod ids;
pub mod limits;
pub mod model;
pub mod outbox;
pub mod ports;
pub mod precondition;
pub mod rules;
pub mod settings;

pub use error::{DomainError, DomainResult};
pub use event::Event;
pub use ids::{ChannelId, ChannelSeq, FileId, MessageId, Millis, UserId, now_millis};
pub use limits::Limits;
pub use precondition::{Condition, Fact, Precondition};
