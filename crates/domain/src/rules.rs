//! The rules a write must meet as of its own transaction, written as preconditions the store checks (see
//! [`crate::precondition`]). One function per kind of write; the service calls them on every path that makes
//! one, so a member's send, the application's, a bot's reply and an edit all meet the same rules.

use crate::error::DomainError;
use crate::ids::{ChannelId, MessageId, UserId};
use crate::model::NewMessage;
use crate::precondition::{Condition, Fact, Precondition};

/// A new message: its channel exists; a sender has an active account and is a member, or is a bot answering a
/// message of this channel that names it (NIM's `robotAccount` on a private message, an `@bot` in a group);
/// a bot's reply answers a message of this channel;
/// a thread reply's parent is a message of this channel that is not itself a reply; a file was uploaded for
/// this channel.
pub fn new_message(m: &NewMessage) -> Vec<Precondition> {
    let channel = &m.channel_id;
    let mut rules = vec![Precondition::new(
        Fact::ChannelExists(channel.clone()),
        DomainError::not_found("channel", channel),
    )];
    if let Some(sender) = &m.sender_id {
        let member: Condition = Fact::Member {
            channel: channel.clone(),
            user: sender.clone(),
        }
        .into();
        let allowed = match m.reply.as_ref().and_then(|r| r.trigger_id) {
            Some(trigger) => Condition::Any(vec![member, invoked_by(trigger, channel, sender)]),
            None => member,
        };
        rules.push(Precondition::new(allowed, DomainError::not_member(sender, channel)));
        if let Some(trigger) = m.reply.as_ref().and_then(|r| r.trigger_id) {
            // A reply answers a message of its own channel (its one reply per trigger is keyed without it).
            rules.push(Precondition::new(
                Fact::MessageIn {
                    message: trigger,
                    channel: channel.clone(),
                },
                DomainError::not_found("message", trigger),
            ));
        }
        rules.push(Precondition::new(
            Fact::ActiveAccount(sender.clone()),
            DomainError::forbidden("the sender's account is blocked"),
        ));
    }
    if let Some(parent) = m.parent_id {
        rules.push(Precondition::new(
            Fact::MessageIn {
                message: parent,
                channel: channel.clone(),
            },
            DomainError::not_found("message", parent),
        ));
        rules.push(Precondition::new(
            Fact::ThreadRoot(parent),
            DomainError::invalid("parent_id", "replies cannot have replies; reply to the thread's parent"),
        ));
    }
    if let Some(file) = &m.file_id {
        rules.push(Precondition::new(
            Fact::FileExists(file.clone()),
            DomainError::not_found("file", file),
        ));
        rules.push(Precondition::new(
            Fact::FileIn {
                file: file.clone(),
                channel: channel.clone(),
            },
            DomainError::invalid("file_id", "the file was uploaded for another channel"),
        ));
    }
    rules
}

/// A message of `channel` that names `bot`: the member who wrote it invoked the bot there, so the bot may
/// answer it without being a member.
fn invoked_by(trigger: MessageId, channel: &ChannelId, bot: &UserId) -> Condition {
    Condition::All(vec![
        Fact::MessageIn {
            message: trigger,
            channel: channel.clone(),
        }
        .into(),
        Fact::Mentions {
            message: trigger,
            user: bot.clone(),
        }
        .into(),
    ])
}

/// An edit by a user (the application's edits have no author rules): the editor is still a member of the
/// message's channel, with an active account, as for a send.
pub fn edit_by(channel: &ChannelId, message: MessageId, editor: Option<&UserId>) -> Vec<Precondition> {
    let Some(editor) = editor else {
        return Vec::new();
    };
    vec![
        Precondition::new(
            Fact::Member {
                channel: channel.clone(),
                user: editor.clone(),
            },
            // Outsiders cannot probe message ids (as for reads).
            DomainError::not_found("message", message),
        ),
        Precondition::new(
            Fact::ActiveAccount(editor.clone()),
            DomainError::forbidden("the sender's account is blocked"),
        ),
    ]
}
