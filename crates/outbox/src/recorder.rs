//! What the store records: application events as domain snapshots ([`RecordedEvent`]), only while some
//! endpoint subscribes to their type (so a server without endpoints writes nothing extra).

use std::sync::atomic::{AtomicU32, Ordering};

use confab_domain::Event;
use confab_domain::bot::ReplyState;
use confab_domain::model::Message;
use confab_domain::now_millis;
use confab_domain::outbox::{ChangeCause, ChangeRecorder, OutboxRecord, RecordedChange, RecordedEvent};

use crate::endpoint::{BOT_TRIGGERED, EVENT_TYPES, EventFilter};

/// Installed as the store's `ChangeRecorder`. The relay keeps its interest current.
#[derive(Default)]
pub struct EventRecorder {
    /// One bit per entry of [`EVENT_TYPES`]: some endpoint takes that type.
    wanted: AtomicU32,
}

impl EventRecorder {
    /// Records the types that at least one of `filters` takes.
    pub fn set_interest<'a>(&self, filters: impl IntoIterator<Item = &'a EventFilter>) {
        let mut mask = 0u32;
        for f in filters {
            for (i, t) in EVENT_TYPES.iter().enumerate() {
                if f.matches(t) {
                    mask |= 1 << i;
                }
            }
        }
        self.wanted.store(mask, Ordering::Release);
    }

    fn wants(&self, event_type: &str) -> bool {
        let mask = self.wanted.load(Ordering::Acquire);
        mask != 0
            && EVENT_TYPES
                .iter()
                .position(|t| *t == event_type)
                .is_some_and(|i| mask & (1 << i) != 0)
    }
}

impl ChangeRecorder for EventRecorder {
    fn record(&self, cause: ChangeCause, event: &Event) -> Option<OutboxRecord> {
        let event_type = event_type(cause, event)?;
        if !self.wants(event_type) {
            return None;
        }
        let change = RecordedChange::of(event)?;
        let channel_id = change.channel_id().cloned();
        let payload = serde_json::to_vec(&RecordedEvent {
            event_type: event_type.to_string(),
            timestamp: now_millis(),
            change,
        })
        .ok()?;
        Some(OutboxRecord {
            event_type,
            channel_id,
            payload,
        })
    }
}

/// The webhook type of an event, or `None` for events not announced (deltas, typing, a generating reply's
/// placeholder, a thread's reply count...).
pub fn event_type(cause: ChangeCause, event: &Event) -> Option<&'static str> {
    Some(match (cause, event) {
        (ChangeCause::Send, Event::MessageCreated(m)) if m.reply.is_none() => "message.sent",
        // A bot's reply is announced when it is final, as bot_reply.*; its later edits are edits.
        (ChangeCause::Edit, Event::MessageUpdated(_)) => "message.edited",
        (ChangeCause::FinishReply, Event::MessageUpdated(m)) => reply_type(m)?,
        (_, Event::MessageDeleted { .. }) => "message.deleted",
        (_, Event::ChannelCreated { .. }) => "channel.created",
        (_, Event::ChannelUpdated(_)) => "channel.updated",
        (_, Event::ChannelDeleted { .. }) => "channel.deleted",
        (_, Event::MembersJoined { .. }) => "member.joined",
        (_, Event::MemberLeft { .. }) => "member.left",
        (_, Event::UserCreated(_)) => "user.created",
        (_, Event::UserUpdated(_)) => "user.updated",
        (_, Event::UserDeleted(_)) => "user.deleted",
        (_, Event::BotTriggered { .. }) => BOT_TRIGGERED,
        _ => return None,
    })
}

fn reply_type(m: &Message) -> Option<&'static str> {
    Some(match m.reply.as_ref()?.state {
        ReplyState::Complete => "bot_reply.completed",
        ReplyState::Failed => "bot_reply.failed",
        ReplyState::Stopped => "bot_reply.stopped",
        ReplyState::Interrupted => "bot_reply.interrupted",
        ReplyState::Generating => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use confab_domain::bot::ReplyInfo;
    use confab_domain::model::NewMessage;
    use confab_domain::{ChannelId, ChannelSeq, MessageId, UserId};

    use super::*;

    fn message(reply: Option<ReplyState>) -> Arc<Message> {
        let n = NewMessage::text(ChannelId::parse("c1").unwrap(), UserId::parse("u1").unwrap(), "hi");
        Arc::new(Message {
            id: MessageId(7),
            channel_id: n.channel_id,
            seq: ChannelSeq(3),
            sender_id: n.sender_id,
            kind: n.kind,
            text: n.text,
            custom_type: String::new(),
            data: None,
            payload: None,
            mentions: vec![],
            client_msg_id: None,
            parent_id: None,
            reply_count: 0,
            file: None,
            created_at: 1,
            updated_at: 1,
            edited: false,
            deleted: false,
            reply: reply.map(|state| ReplyInfo {
                state,
                trigger_id: Some(MessageId(6)),
                reason: None,
            }),
        })
    }

    #[test]
    fn names_changes_by_their_cause() {
        let plain = Event::MessageCreated(message(None));
        assert_eq!(event_type(ChangeCause::Send, &plain), Some("message.sent"));
        let placeholder = Event::MessageCreated(message(Some(ReplyState::Generating)));
        assert_eq!(event_type(ChangeCause::Send, &placeholder), None);
        let finished = Event::MessageUpdated(message(Some(ReplyState::Stopped)));
        assert_eq!(
            event_type(ChangeCause::FinishReply, &finished),
            Some("bot_reply.stopped")
        );
        // A thread reply bumps its parent's count: not an edit, not announced.
        assert_eq!(event_type(ChangeCause::Send, &finished), None);
        let edited = Event::MessageUpdated(message(None));
        assert_eq!(event_type(ChangeCause::Edit, &edited), Some("message.edited"));
        let triggered = Event::BotTriggered {
            bot: UserId::parse("helper").unwrap(),
            message: message(None),
        };
        assert_eq!(event_type(ChangeCause::Other, &triggered), Some("bot.triggered"));
        // The bus's own signal is never an application event, whatever an endpoint takes.
        assert_eq!(event_type(ChangeCause::Other, &Event::Resync), None);
        let r = EventRecorder::default();
        r.set_interest([&EventFilter::parse(vec!["*".into()]).unwrap()]);
        assert!(r.record(ChangeCause::Other, &Event::Resync).is_none());
    }

    fn message_of(ev: &Event) -> &Arc<Message> {
        match ev {
            Event::MessageCreated(m) | Event::MessageUpdated(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn records_only_what_some_endpoint_takes() {
        let r = EventRecorder::default();
        let ev = Event::MessageCreated(message(None));
        assert!(r.record(ChangeCause::Send, &ev).is_none(), "no endpoint, no record");
        r.set_interest([&EventFilter::parse(vec!["member.*".into()]).unwrap()]);
        assert!(r.record(ChangeCause::Send, &ev).is_none());
        r.set_interest([&EventFilter::parse(vec!["message.sent".into()]).unwrap()]);
        let rec = r.record(ChangeCause::Send, &ev).unwrap();
        assert_eq!(rec.event_type, "message.sent");
        assert_eq!(rec.channel_id.unwrap().as_str(), "c1");
        let recorded: RecordedEvent = serde_json::from_slice(&rec.payload).unwrap();
        assert_eq!(recorded.event_type, "message.sent");
        let RecordedChange::Message { message } = &recorded.change else {
            panic!("{recorded:?}")
        };
        assert_eq!(**message, **message_of(&ev), "the whole message, as committed");
    }

    #[test]
    fn records_bot_triggers_only_for_endpoints_that_ask() {
        let r = EventRecorder::default();
        let ev = Event::BotTriggered {
            bot: UserId::parse("helper").unwrap(),
            message: message(None),
        };
        r.set_interest([&EventFilter::parse(vec!["*".into()]).unwrap()]);
        assert!(
            r.record(ChangeCause::Other, &ev).is_none(),
            "every event but the opt-in ones"
        );
        r.set_interest([&EventFilter::parse(vec!["bot.triggered".into()]).unwrap()]);
        let rec = r.record(ChangeCause::Other, &ev).unwrap();
        assert_eq!(
            (rec.event_type, rec.channel_id.unwrap().as_str()),
            ("bot.triggered", "c1")
        );
        let recorded: RecordedEvent = serde_json::from_slice(&rec.payload).unwrap();
        let RecordedChange::BotTriggered { bot, message } = &recorded.change else {
            panic!("{recorded:?}")
        };
        assert_eq!((bot.as_str(), message.id), ("helper", MessageId(7)));
    }
}
