//! The rules in force (configuration file, admin API, per channel), compiled by `confab-moderation`'s
//! [`RuleBook`], as the content guard of every send, edit and bot reply.

use std::borrow::Cow;

use confab_domain::ChannelId;
use confab_moderation::{RuleBook, Verdict};

use super::{ContentGuard, ReplyReview, Review};

impl ContentGuard for RuleBook {
    fn review(&self, channel: &ChannelId, text: &str) -> Review {
        match self.review_reply(channel, text) {
            ReplyReview::Reject { rule, reason, .. } => Review::Reject { rule, reason },
            ReplyReview::Allow { rewritten, flagged_by } => Review::Allow { rewritten, flagged_by },
        }
    }

    fn is_active(&self, channel: &ChannelId) -> bool {
        RuleBook::is_active(self, channel.as_str())
    }

    fn review_reply(&self, channel: &ChannelId, text: &str) -> ReplyReview {
        match self.check(channel.as_str(), text) {
            Verdict::Blocked { rule, reason, span } => ReplyReview::Reject { rule, reason, span },
            Verdict::Allowed { text: out, flagged_by } => ReplyReview::Allow {
                rewritten: match out {
                    Cow::Owned(t) => Some(t),
                    Cow::Borrowed(_) => None,
                },
                flagged_by,
            },
        }
    }
}
