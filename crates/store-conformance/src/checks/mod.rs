//! Every check of the suite, one `pub async fn name<B: Backend>(b: B)` each: it opens a fresh store through
//! the backend (with a `LocalBus` of its own), asserts what it observes (state read back, or events received
//! within a timeout) and panics on the first difference. [`suite!`](crate::suite) runs each as its own test.

mod bots_replies;
mod channels_members;
mod events;
mod files;
mod flags;
mod messages;
mod outbox_deadletters;
mod preconditions;
mod settings_providers;
mod threads_reads;
mod users_sessions;

pub use bots_replies::*;
pub use channels_members::*;
pub use events::*;
pub use files::*;
pub use flags::*;
pub use messages::*;
pub use outbox_deadletters::*;
pub use preconditions::*;
pub use settings_providers::*;
pub use threads_reads::*;
pub use users_sessions::*;
