//! `confab_messages_total{kind, actor}`: the messages [`crate::Confab::send`] accepted (stored, not a retry
//! found by its client id), whatever the surface. The handles are made once, when the service is built, so
//! a send counts with one atomic add: no registry lookup, no lock, no allocation.

use confab_domain::model::MessageKind;
use metrics::Counter;

use crate::Actor;

/// Every kind, in the order of [`kind_index`].
const KINDS: [MessageKind; 5] = [
    MessageKind::Text,
    MessageKind::Image,
    MessageKind::File,
    MessageKind::Custom,
    MessageKind::Admin,
];

/// Who sent: a user's session, or the application (the master token: server APIs, Sendbird's and NIM's).
const ACTORS: [&str; 2] = ["user", "application"];

pub(crate) struct SentCounters([[Counter; 2]; 5]);

impl SentCounters {
    /// Registers every series (ten), so each shows from the start at zero.
    pub(crate) fn new() -> SentCounters {
        SentCounters(KINDS.map(|kind| {
            ACTORS.map(|actor| {
                let c = metrics::counter!("confab_messages_total", "kind" => kind.as_str(), "actor" => actor);
                c.increment(0);
                c
            })
        }))
    }

    pub(crate) fn count(&self, kind: MessageKind, actor: &Actor) {
        let a = match actor {
            Actor::User(_) => 0,
            Actor::Admin => 1,
        };
        self.0[kind_index(kind)][a].increment(1);
    }
}

/// Exhaustive, so a new kind does not compile until it has its counters.
fn kind_index(kind: MessageKind) -> usize {
    match kind {
        MessageKind::Text => 0,
        MessageKind::Image => 1,
        MessageKind::File => 2,
        MessageKind::Custom => 3,
        MessageKind::Admin => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_counters() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            assert_eq!(kind_index(kind), i, "{}", kind.as_str());
        }
    }
}
