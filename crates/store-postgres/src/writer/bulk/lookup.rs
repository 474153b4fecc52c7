//! The first round trip of a run of appends: everything the run's appends may ask of the rows, read with a
//! few bulk statements issued together (tokio-postgres pipelines them on the connection), before any of
//! them writes.
//!
//! What a run's own appends change cannot be seen here, and need not be: an append creates a message with a
//! new id and changes nothing a fact or a lookup reads of the rows that exist (channels, members, accounts,
//! files; a message's channel, mentions and parent). Only a message that does not exist yet may come to
//! exist during the run, so a fact about a message this lookup did not find is left undecided (the
//! command goes through the per-command path), and a duplicate (by idempotency key or by (bot, trigger)) of
//! a message appended earlier in the run is found by the run itself.

use std::collections::{HashMap, HashSet};

use confab_domain::model::{FileObject, Message, NewMessage};
use confab_domain::{Condition, Fact, Precondition};
use deadpool_postgres::Transaction;

use crate::db::rows;
use crate::error::{Res, corrupt};
use crate::rows::{self as map, FILE_COLS, M_MESSAGE_COLS, MESSAGE_COLS, get};

/// What the rows hold, before the run, about what the run's appends name. Keys borrow the run's commands.
#[derive(Default)]
pub(super) struct Known<'a> {
    pub channels: HashSet<&'a str>,
    pub members: HashSet<(&'a str, &'a str)>,
    pub active: HashSet<&'a str>,
    pub messages: HashMap<i64, Message>,
    pub files: HashMap<String, FileObject>,
    /// The reply of each (bot, trigger) already stored.
    pub replies: HashMap<(&'a str, i64), Message>,
    /// The message of each (sender, client_msg_id) already stored.
    pub keys: HashMap<(&'a str, &'a str), Message>,
}

/// A fact that the rows read before the run cannot decide: it names a message that does not exist yet.
pub(super) struct Undecided;

impl Known<'_> {
    /// Whether `fact` holds, as `facts::check` tests it in SQL.
    pub fn holds(&self, fact: &Fact) -> Result<bool, Undecided> {
        let message = |id: &confab_domain::MessageId| self.messages.get(&id.0).ok_or(Undecided);
        Ok(match fact {
            Fact::ChannelExists(c) => self.channels.contains(c.as_str()),
            Fact::Member { channel, user } => self.members.contains(&(channel.as_str(), user.as_str())),
            Fact::ActiveAccount(u) => self.active.contains(u.as_str()),
            Fact::MessageIn { message: id, channel } => message(id)?.channel_id == *channel,
            Fact::Mentions { message: id, user } => message(id)?.mentions.contains(user),
            Fact::ThreadRoot(id) => message(id)?.parent_id.is_none(),
            Fact::FileExists(f) => self.files.contains_key(f.as_str()),
            Fact::FileIn { file, channel } => self.files.get(file.as_str()).is_some_and(|f| f.channel_id == *channel),
        })
    }
}

/// The distinct names to look up, in first-seen order (each list is one array parameter).
#[derive(Default)]
struct Wanted<'a> {
    channels: Vec<&'a str>,
    members: Vec<(&'a str, &'a str)>,
    active: Vec<&'a str>,
    messages: Vec<i64>,
    files: Vec<&'a str>,
    replies: Vec<(&'a str, i64)>,
    keys: Vec<(&'a str, &'a str)>,
    seen: Seen<'a>,
}

#[derive(Default)]
struct Seen<'a> {
    channels: HashSet<&'a str>,
    members: HashSet<(&'a str, &'a str)>,
    active: HashSet<&'a str>,
    messages: HashSet<i64>,
    files: HashSet<&'a str>,
    replies: HashSet<(&'a str, i64)>,
    keys: HashSet<(&'a str, &'a str)>,
}

fn add<T: Copy + Eq + std::hash::Hash>(list: &mut Vec<T>, seen: &mut HashSet<T>, v: T) {
    if seen.insert(v) {
        list.push(v);
    }
}

impl<'a> Wanted<'a> {
    fn of(run: &[(&'a NewMessage, &'a [Precondition])]) -> Self {
        let mut w = Wanted::default();
        for (m, pre) in run {
            add(&mut w.channels, &mut w.seen.channels, m.channel_id.as_str());
            if let Some(parent) = m.parent_id {
                add(&mut w.messages, &mut w.seen.messages, parent.0);
            }
            if let Some(f) = &m.file_id {
                add(&mut w.files, &mut w.seen.files, f.as_str());
            }
            if let Some(sender) = &m.sender_id {
                if let Some(trigger) = m.reply.as_ref().and_then(|r| r.trigger_id) {
                    add(&mut w.replies, &mut w.seen.replies, (sender.as_str(), trigger.0));
                }
                if let Some(key) = &m.client_msg_id {
                    add(&mut w.keys, &mut w.seen.keys, (sender.as_str(), key.as_str()));
                }
            }
            for p in pre.iter() {
                w.condition(&p.condition);
            }
        }
        w
    }

    fn condition(&mut self, c: &'a Condition) {
        match c {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| self.condition(c)),
            Condition::Fact(f) => self.fact(f),
        }
    }

    fn fact(&mut self, f: &'a Fact) {
        let s = &mut self.seen;
        match f {
            Fact::ChannelExists(c) => add(&mut self.channels, &mut s.channels, c.as_str()),
            Fact::Member { channel, user } => add(&mut self.members, &mut s.members, (channel.as_str(), user.as_str())),
            Fact::ActiveAccount(u) => add(&mut self.active, &mut s.active, u.as_str()),
            Fact::MessageIn { message, .. } | Fact::Mentions { message, .. } | Fact::ThreadRoot(message) => {
                add(&mut self.messages, &mut s.messages, message.0)
            }
            Fact::FileExists(f) | Fact::FileIn { file: f, .. } => add(&mut self.files, &mut s.files, f.as_str()),
        }
    }
}

/// The 1-based ordinal a statement over `unnest(...) WITH ORDINALITY` returns, as an index of its input.
fn ordinal(r: &tokio_postgres::Row, col: usize, len: usize) -> Res<usize> {
    let i = get::<i64>(r, col)?;
    if i < 1 || i as usize > len {
        return Err(corrupt("an ordinal out of range"));
    }
    Ok(i as usize - 1)
}

/// Reads everything the run names, one statement per kind, all at once.
pub(super) async fn known<'a>(tx: &Transaction<'_>, run: &[(&'a NewMessage, &'a [Precondition])]) -> Res<Known<'a>> {
    let w = Wanted::of(run);
    let (member_channels, member_users): (Vec<&str>, Vec<&str>) = w.members.iter().copied().unzip();
    let (reply_bots, reply_triggers): (Vec<&str>, Vec<i64>) = w.replies.iter().copied().unzip();
    let (key_senders, key_ids): (Vec<&str>, Vec<&str>) = w.keys.iter().copied().unzip();
    let channels = async {
        rows(
            tx,
            "SELECT d.i FROM unnest($1::text[]) WITH ORDINALITY d(id, i) JOIN channels c ON c.id = d.id",
            &[&w.channels],
        )
        .await
    };
    let members = async {
        if w.members.is_empty() {
            return Ok(Vec::new());
        }
        rows(
            tx,
            "SELECT d.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY d(c, u, i) \
             JOIN members m ON m.channel_id = d.c AND m.user_id = d.u",
            &[&member_channels, &member_users],
        )
        .await
    };
    let active = async {
        if w.active.is_empty() {
            return Ok(Vec::new());
        }
        rows(
            tx,
            "SELECT d.i FROM unnest($1::text[]) WITH ORDINALITY d(id, i) JOIN users u ON u.id = d.id \
             WHERE NOT u.disabled",
            &[&w.active],
        )
        .await
    };
    let messages = async {
        if w.messages.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ANY($1::bigint[])");
        rows(tx, &sql, &[&w.messages]).await
    };
    let files = async {
        if w.files.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {FILE_COLS} FROM files WHERE id = ANY($1::text[])");
        rows(tx, &sql, &[&w.files]).await
    };
    let replies = async {
        if w.replies.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {M_MESSAGE_COLS}, d.i FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY d(s, t, i) \
             JOIN messages m ON m.sender_id = d.s AND m.trigger_id = d.t"
        );
        rows(tx, &sql, &[&reply_bots, &reply_triggers]).await
    };
    let keys = async {
        if w.keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {M_MESSAGE_COLS}, d.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY d(s, k, i) \
             JOIN message_keys k ON k.sender_id = d.s AND k.client_msg_id = d.k \
             JOIN messages m ON m.id = k.message_id"
        );
        rows(tx, &sql, &[&key_senders, &key_ids]).await
    };
    let (channels, members, active, messages, files, replies, keys) =
        futures_util::join!(channels, members, active, messages, files, replies, keys);
    // Every statement has answered (none is left running on the connection) before any error is returned.
    let (channels, members, active) = (channels?, members?, active?);
    let (messages, files, replies, keys) = (messages?, files?, replies?, keys?);

    let mut k = Known::default();
    for r in &channels {
        k.channels.insert(w.channels[ordinal(r, 0, w.channels.len())?]);
    }
    for r in &members {
        k.members.insert(w.members[ordinal(r, 0, w.members.len())?]);
    }
    for r in &active {
        k.active.insert(w.active[ordinal(r, 0, w.active.len())?]);
    }
    for r in &messages {
        let m = map::message(r)?;
        k.messages.insert(m.id.0, m);
    }
    for r in &files {
        let f = map::file(r)?;
        k.files.insert(f.id.as_str().to_string(), f);
    }
    const AFTER_MESSAGE: usize = 21;
    for r in &replies {
        let at = ordinal(r, AFTER_MESSAGE, w.replies.len())?;
        k.replies.insert(w.replies[at], map::message(r)?);
    }
    for r in &keys {
        let at = ordinal(r, AFTER_MESSAGE, w.keys.len())?;
        k.keys.insert(w.keys[at], map::message(r)?);
    }
    Ok(k)
}
