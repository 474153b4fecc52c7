//! Content review before a message is stored, for every surface: a port the server fills with the
//! configured policy (crate `confab-moderation`). The service applies the verdict: a rejection refuses the
//! send with the rule's reason, a rewrite (masking) replaces the text that is stored and delivered.

use confab_domain::ChannelId;

/// What the policy says of a message's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Review {
    Allow {
        /// The text to store instead (masked), if any rule changed it.
        rewritten: Option<String>,
        /// Flag rules that matched: the message is stored as is and listed for review.
        flagged_by: Vec<String>,
    },
    Reject {
        rule: String,
        reason: String,
    },
}

pub trait ContentGuard: Send + Sync {
    fn review(&self, channel: &ChannelId, text: &str) -> Review;
}
