//! Carries the span of a send across the bus, in process, to the consumers of the event its commit
//! publishes (the gateway's fan-out, the bot runtime): each opens its own span under it, so one trace follows
//! a message from the request to the bot's reply. Nothing is serialized (the bus and NATS carry events only).
//!
//! The event is published by the store's writer, before the append returns, so the send registers its span
//! just before the append, by what identifies the message before it has an id: channel, sender, client id
//! and text (identical concurrent messages may swap traces; nothing else depends on it). Each follower takes
//! its share of an entry when it sees the event; the entry goes once every follower has (or after
//! [`MAX_AGE`], a follower that stopped). Only a span that something records registers: with tracing off, a
//! send pays one check of a disabled span, and a follower one atomic load per message.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use confab_domain::model::{Appended, Message, NewMessage};
use confab_domain::{ChannelId, DomainError, DomainResult, UserId};
use tracing::{Instrument, Span};

/// How long an entry waits for the followers that have not taken it.
const MAX_AGE: Duration = Duration::from_secs(30);

/// Spans of sends whose events the followers have not all seen yet.
#[derive(Default)]
pub(crate) struct SendTraces {
    /// One bit per follower (at most 64).
    followers: AtomicU64,
    /// Entries waiting: lets followers skip the lock while nothing is traced.
    live: AtomicUsize,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    by_message: HashMap<u64, Vec<Entry>>,
    pruned_at: Option<Instant>,
}

struct Entry {
    span: Span,
    /// The followers registered when the send registered, and those that took it since.
    expected: u64,
    taken: u64,
    at: Instant,
}

/// A consumer of committed messages that continues the trace of each message's send (see
/// `Confab::follow_send_traces`).
#[derive(Clone, Copy, Debug)]
pub struct TraceFollower {
    bit: u64,
}

/// A send's registration, settled after its append.
pub(crate) struct Registered {
    key: u64,
    span: Span,
}

impl SendTraces {
    pub(crate) fn follower(&self) -> TraceFollower {
        let mut current = self.followers.load(Ordering::Relaxed);
        loop {
            let free = !current;
            if free == 0 {
                return TraceFollower { bit: 0 }; // never takes anything
            }
            let bit = free & free.wrapping_neg();
            match self
                .followers
                .compare_exchange(current, current | bit, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return TraceFollower { bit },
                Err(now) => current = now,
            }
        }
    }

    /// Registers `span` as the send of `msg`, about to be appended; `None` when nothing records the span or
    /// nobody follows.
    pub(crate) fn register(&self, span: &Span, msg: &NewMessage) -> Option<Registered> {
        if span.is_disabled() {
            return None;
        }
        let expected = self.followers.load(Ordering::Acquire);
        if expected == 0 {
            return None;
        }
        let key = fingerprint(
            &msg.channel_id,
            msg.sender_id.as_ref(),
            msg.client_msg_id.as_deref(),
            &msg.text,
        );
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .pruned_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            pending.pruned_at = Some(now);
            let mut dropped = 0;
            pending.by_message.retain(|_, entries| {
                let before = entries.len();
                entries.retain(|e| now.duration_since(e.at) < MAX_AGE);
                dropped += before - entries.len();
                !entries.is_empty()
            });
            self.live.fetch_sub(dropped, Ordering::Relaxed);
        }
        pending.by_message.entry(key).or_default().push(Entry {
            span: span.clone(),
            expected,
            taken: 0,
            at: now,
        });
        self.live.fetch_add(1, Ordering::Relaxed);
        Some(Registered {
            key,
            span: span.clone(),
        })
    }

    /// The append published no event (it failed, or returned an earlier send): the entry goes.
    pub(crate) fn cancel(&self, r: Registered) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entries) = pending.by_message.get_mut(&r.key)
            && let Some(i) = entries.iter().position(|e| e.span.id() == r.span.id())
        {
            entries.remove(i);
            self.live.fetch_sub(1, Ordering::Relaxed);
            if entries.is_empty() {
                pending.by_message.remove(&r.key);
            }
        }
    }

    /// The span of the send that stored `m`, taken by `follower` (each follower takes an entry once).
    pub(crate) fn take(&self, follower: TraceFollower, m: &Message) -> Option<Span> {
        if self.live.load(Ordering::Relaxed) == 0 || follower.bit == 0 {
            return None;
        }
        let key = fingerprint(&m.channel_id, m.sender_id.as_ref(), m.client_msg_id.as_deref(), &m.text);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entries = pending.by_message.get_mut(&key)?;
        let i = entries
            .iter()
            .position(|e| e.expected & follower.bit != 0 && e.taken & follower.bit == 0)?;
        let entry = &mut entries[i];
        entry.taken |= follower.bit;
        let span = entry.span.clone();
        if entry.taken & entry.expected == entry.expected {
            entries.remove(i);
            self.live.fetch_sub(1, Ordering::Relaxed);
            if entries.is_empty() {
                pending.by_message.remove(&key);
            }
        }
        Some(span)
    }
}

impl crate::Confab {
    /// Registers a consumer of committed messages (`Event::MessageCreated`) that continues the trace of each
    /// message's send: it must call [`Confab::send_span`] for every such event it receives, so the span is
    /// let go once every follower has seen it.
    pub fn follow_send_traces(&self) -> TraceFollower {
        self.traces.follower()
    }

    /// The span of the send that stored `m` in this process, if it was traced: parent of the follower's own
    /// span for the event.
    pub fn send_span(&self, follower: TraceFollower, m: &Message) -> Option<Span> {
        self.traces.take(follower, m)
    }
}

impl SendTraces {
    /// Records the append's outcome on the send's span; a registration without an event to come goes.
    pub(crate) fn settle(&self, registered: Option<Registered>, res: &DomainResult<Appended>) {
        let span = Span::current();
        match res {
            Ok(a) => {
                span.record("message_id", a.message.id.0);
                span.record("seq", a.message.seq.0);
                span.record("duplicate", a.duplicate);
            }
            Err(e) => record_error(e),
        }
        if let Some(r) = registered
            && !res.as_ref().is_ok_and(|a| !a.duplicate)
        {
            self.cancel(r);
        }
    }
}

/// Marks the current span failed with `e` (a span declaring `error` and `otel.status_code`).
pub(crate) fn record_error(e: &DomainError) {
    let span = Span::current();
    span.record("error", tracing::field::display(e));
    span.record("otel.status_code", "error");
}

/// A store write traced from its submission until the store answers (after its group commit).
pub(crate) fn appending<F: std::future::Future>(write: F) -> tracing::instrument::Instrumented<F> {
    write.instrument(tracing::debug_span!("store.append"))
}

fn fingerprint(channel: &ChannelId, sender: Option<&UserId>, client_msg_id: Option<&str>, text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (channel.as_str(), sender.map(UserId::as_str), client_msg_id, text).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_domain::model::NewMessage;

    /// Runs `f` with a subscriber that records every span.
    fn recording(f: impl FnOnce()) {
        tracing::subscriber::with_default(tracing_subscriber::registry(), f);
    }

    fn draft(text: &str) -> NewMessage {
        NewMessage::text(ChannelId::parse("c").unwrap(), UserId::parse("alice").unwrap(), text)
    }

    /// The message the store makes of a draft (what the followers see in the event).
    fn stored(d: &NewMessage, id: i64) -> Message {
        Message {
            id: confab_domain::MessageId(id),
            channel_id: d.channel_id.clone(),
            seq: confab_domain::ChannelSeq(id as u64),
            sender_id: d.sender_id.clone(),
            kind: d.kind,
            text: d.text.clone(),
            custom_type: String::new(),
            data: None,
            payload: None,
            mentions: Vec::new(),
            client_msg_id: d.client_msg_id.clone(),
            parent_id: None,
            reply_count: 0,
            file: None,
            created_at: 0,
            updated_at: 0,
            edited: false,
            deleted: false,
            reply: None,
        }
    }

    #[test]
    fn each_follower_takes_each_send_once_and_the_entry_goes_after_the_last() {
        recording(|| {
            let traces = SendTraces::default();
            let (hub, bots) = (traces.follower(), traces.follower());
            let (a, b) = (tracing::info_span!("a"), tracing::info_span!("b"));
            // Two identical messages: each follower gets one span per event, in order.
            let d = draft("hi");
            traces.register(&a, &d).unwrap();
            traces.register(&b, &d).unwrap();
            let (m1, m2) = (stored(&d, 1), stored(&d, 2));
            assert_eq!(traces.take(hub, &m1).unwrap().id(), a.id());
            assert_eq!(traces.take(hub, &m2).unwrap().id(), b.id());
            assert_eq!(traces.take(bots, &m1).unwrap().id(), a.id());
            assert_eq!(traces.live.load(Ordering::Relaxed), 1);
            assert_eq!(traces.take(bots, &m2).unwrap().id(), b.id());
            assert_eq!(traces.live.load(Ordering::Relaxed), 0);
            assert!(traces.take(hub, &m1).is_none(), "taken once");
            // A cancelled registration (no event will come) is gone at once.
            let r = traces.register(&a, &draft("other")).unwrap();
            traces.cancel(r);
            assert_eq!(traces.live.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn nothing_registers_without_a_recorded_span_or_a_follower() {
        let traces = SendTraces::default();
        traces.follower();
        // No subscriber: the span is disabled.
        assert!(traces.register(&tracing::info_span!("a"), &draft("hi")).is_none());
        recording(|| {
            let nobody = SendTraces::default();
            assert!(nobody.register(&tracing::info_span!("a"), &draft("hi")).is_none());
        });
    }
}
