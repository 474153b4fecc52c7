//! Group commit of sends: a run of consecutive appends of a batch applied with a fixed number of round
//! trips, however long the run, with the answers, rows, events and outbox rows that applying them one by
//! one (`append`) gives.
//!
//! 1. **Lookup** (one round trip, see [`lookup`]): the preconditions' facts, the stored duplicates (by
//!    `(sender, client_msg_id)` and by `(bot, trigger)`), thread parents and files of the whole run.
//! 2. **Decision**, in Rust, in queue order, with `append`'s steps and order: a duplicate of a stored reply
//!    to the same trigger; `Precondition::check_all` (the first failing precondition is the answer); a
//!    duplicate by idempotency key (`Invalid` in another channel); the thread's parent; the file; the
//!    channel. A duplicate of a message appended earlier in the run is that message (nothing stored or
//!    published for it). A message the lookup did not find may be one the run appends (its id is not
//!    known to the sender before the commit, but could be guessed): the run stops before the first command
//!    that depends on one, which goes through `append`, and the rest makes a run of its own.
//! 3. **Numbers** (one round trip): each channel's `last_seq` moved on by its count of new messages, and
//!    the message ids taken from the identity's sequence; under the cluster-wide write lock nobody else
//!    takes either, so both follow the queue order as `append`'s do.
//! 4. **Writes** (one round trip, statements pipelined): the messages, their idempotency keys, the senders'
//!    read positions, the thread parents' reply counts, the flags, and the outbox rows of the run's events.
//!
//! A statement that fails (a text PostgreSQL cannot store, a bug) fails the run: the writer rolls back to
//! the savepoint taken before it and applies its commands one by one, so one bad command fails alone.

mod lookup;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use confab_domain::model::Message;

use super::*;
use crate::error::corrupt;
use crate::rows::ser;
use lookup::Undecided;
use tokio_postgres::types::ToSql;

/// An append of the run: the message and its preconditions.
pub(super) type Cmd<'a> = (&'a NewMessage, &'a [Precondition]);

/// What a run did: the answers and events of its first `handled` commands (the command after them, if any,
/// could not be decided from the lookup).
pub(super) struct RunApplied {
    pub handled: usize,
    pub results: Vec<DomainResult<Outcome>>,
    pub events: Vec<Event>,
}

/// The answer to one command of the run, decided before the numbers are taken.
enum Step {
    Failed(DomainError),
    /// A duplicate of a stored message, as it is at this point of the run.
    Stored(Box<Message>),
    /// A duplicate of the run's new message with this index.
    OfNew(usize),
    /// The run's new message with this index.
    New(usize),
}

/// A message the run stores.
struct New<'a> {
    m: &'a NewMessage,
    file: Option<confab_domain::model::FileObject>,
    /// Its thread's parent once this reply counts on it.
    parent: Option<Message>,
}

/// Decides each command of `run` in order, as `append` would against the rows, until one cannot be.
fn decide<'a>(run: &[Cmd<'a>], known: &lookup::Known<'a>) -> (Vec<Step>, Vec<New<'a>>) {
    let mut steps = Vec::with_capacity(run.len());
    let mut news: Vec<New<'a>> = Vec::with_capacity(run.len());
    let mut replies: HashMap<(&str, i64), usize> = HashMap::new();
    let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
    // Stored messages the run changed (thread parents, their reply counts), as they are now.
    let mut changed: HashMap<i64, Message> = HashMap::new();
    let now_of = |m: &Message, changed: &HashMap<i64, Message>| {
        Box::new(changed.get(&m.id.0).cloned().unwrap_or_else(|| m.clone()))
    };
    for &(m, pre) in run {
        let sender = m.sender_id.as_ref().map(UserId::as_str);
        let trigger = m.reply.as_ref().and_then(|r| r.trigger_id);
        if let (Some(s), Some(t)) = (sender, trigger) {
            if let Some(&n) = replies.get(&(s, t.0)) {
                steps.push(Step::OfNew(n));
                continue;
            }
            if let Some(original) = known.replies.get(&(s, t.0)) {
                steps.push(Step::Stored(now_of(original, &changed)));
                continue;
            }
        }
        match Precondition::check_all(pre, |f| known.holds(f)) {
            Err(Undecided) => break,
            Ok(Err(e)) => {
                steps.push(Step::Failed(e));
                continue;
            }
            Ok(Ok(())) => {}
        }
        if let (Some(s), Some(key)) = (sender, m.client_msg_id.as_deref()) {
            let original = match keys.get(&(s, key)) {
                Some(&n) => Some((&news[n].m.channel_id, Step::OfNew(n))),
                None => known
                    .keys
                    .get(&(s, key))
                    .map(|o| (&o.channel_id, Step::Stored(now_of(o, &changed)))),
            };
            if let Some((channel, step)) = original {
                steps.push(if *channel != m.channel_id {
                    Step::Failed(DomainError::invalid(
                        "client_msg_id",
                        "already used for a message of another channel",
                    ))
                } else {
                    step
                });
                continue;
            }
        }
        if let Some(parent) = m.parent_id
            && !known.messages.contains_key(&parent.0)
        {
            break;
        }
        let file = match &m.file_id {
            Some(fid) => match known.files.get(fid.as_str()) {
                Some(f) => Some(f.clone()),
                None => {
                    steps.push(Step::Failed(DomainError::not_found("file", fid)));
                    continue;
                }
            },
            None => None,
        };
        if !known.channels.contains(m.channel_id.as_str()) {
            steps.push(Step::Failed(DomainError::not_found("channel", &m.channel_id)));
            continue;
        }
        let parent = m.parent_id.map(|p| {
            let now = changed.entry(p.0).or_insert_with(|| known.messages[&p.0].clone());
            now.reply_count = now.reply_count.saturating_add(1);
            now.clone()
        });
        let n = news.len();
        if let (Some(s), Some(t)) = (sender, trigger) {
            replies.insert((s, t.0), n);
        }
        if let (Some(s), Some(key)) = (sender, m.client_msg_id.as_deref()) {
            keys.insert((s, key), n);
        }
        news.push(New { m, file, parent });
        steps.push(Step::New(n));
    }
    (steps, news)
}

/// Applies the longest prefix of `run` it can decide (at least its first command, unless that one names a
/// message the run could be appending). Any error is the run's: nothing of it may be kept.
pub(super) async fn append_run(
    tx: &Transaction<'_>,
    run: &[Cmd<'_>],
    node: &str,
    recorder: Option<&dyn ChangeRecorder>,
    now: Millis,
) -> Res<RunApplied> {
    let known = lookup::known(tx, run).await?;
    let (steps, news) = decide(run, &known);
    let messages = number(tx, &news, now).await?;
    let mut results = Vec::with_capacity(steps.len());
    let mut events = Vec::new();
    for step in &steps {
        let appended = |message: &Message, duplicate| {
            Ok(Outcome::Appended(Box::new(Appended {
                message: message.clone(),
                duplicate,
            })))
        };
        results.push(match step {
            Step::Failed(e) => Err(e.clone()),
            Step::Stored(m) => appended(m, true),
            Step::OfNew(n) => appended(&messages[*n], true),
            Step::New(n) => {
                events.push(Event::MessageCreated(Arc::new(messages[*n].clone())));
                if let Some(parent) = &news[*n].parent {
                    events.push(Event::MessageUpdated(Arc::new(parent.clone())));
                }
                appended(&messages[*n], false)
            }
        });
    }
    write(tx, &news, &messages, node, recorder, &events, now).await?;
    Ok(RunApplied {
        handled: steps.len(),
        results,
        events,
    })
}

/// Takes the new messages' sequences and ids, in one round trip, and returns the messages as stored.
async fn number(tx: &Transaction<'_>, news: &[New<'_>], now: Millis) -> Res<Vec<Message>> {
    if news.is_empty() {
        return Ok(Vec::new());
    }
    // Each channel's count of new messages, channels in first-seen order.
    let mut at: HashMap<&str, usize> = HashMap::new();
    let (mut channels, mut counts): (Vec<&str>, Vec<i64>) = (Vec::new(), Vec::new());
    for n in news {
        let c = n.m.channel_id.as_str();
        let i = *at.entry(c).or_insert_with(|| {
            channels.push(c);
            counts.push(0);
            channels.len() - 1
        });
        counts[i] += 1;
    }
    let seqs = async {
        rows(
            tx,
            "UPDATE channels c SET last_seq = c.last_seq + d.n, last_message_at = $3 \
         FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY d(id, n, i) WHERE c.id = d.id \
         RETURNING d.i, c.last_seq",
            &[&channels, &counts, &now],
        )
        .await
    };
    let count = news.len() as i64;
    let ids = async {
        rows(
            tx,
            "WITH s AS (SELECT pg_get_serial_sequence('messages', 'id')::regclass AS s) \
         SELECT nextval(s.s) FROM s, generate_series(1, $1::bigint)",
            &[&count],
        )
        .await
    };
    let (seqs, ids) = futures_util::join!(seqs, ids);
    let (seqs, ids) = (seqs?, ids?);
    // The sequence each channel's next new message takes.
    let mut next = vec![None; channels.len()];
    for r in &seqs {
        let i = get::<i64>(r, 0)?;
        let slot = usize::try_from(i - 1)
            .ok()
            .and_then(|i| next.get_mut(i).zip(counts.get(i)))
            .ok_or_else(|| corrupt("an ordinal out of range"))?;
        *slot.0 = Some(get::<i64>(r, 1)? - slot.1 + 1);
    }
    let mut ids = ids.iter().map(|r| get::<i64>(r, 0)).collect::<Res<Vec<_>>>()?;
    ids.sort_unstable();
    if ids.len() != news.len() || next.iter().any(Option::is_none) {
        // The lookup found each channel, under the write lock: it cannot be gone.
        return Err(corrupt("a channel or a message id is missing"));
    }
    let mut messages = Vec::with_capacity(news.len());
    for (n, id) in news.iter().zip(ids) {
        let slot = &mut next[at[n.m.channel_id.as_str()]];
        let seq = slot.unwrap_or_default();
        *slot = Some(seq + 1);
        messages.push(created(n.m, MessageId(id), ChannelSeq(seq as u64), n.file.clone(), now));
    }
    Ok(messages)
}

type Write<'f> = Pin<Box<dyn Future<Output = Res<()>> + Send + 'f>>;

/// Runs a write that must change `expected` rows (any number when `None`), or the run fails.
async fn write_rows(
    tx: &Transaction<'_>,
    sql: &'static str,
    params: Vec<&(dyn ToSql + Sync)>,
    expected: Option<usize>,
) -> Res<()> {
    let changed = exec(tx, sql, &params).await?;
    match expected {
        Some(n) if changed != n as u64 => Err(corrupt(format!("{changed} rows written instead of {n}: {sql}"))),
        _ => Ok(()),
    }
}

/// Every write of the run, pipelined: one round trip.
async fn write(
    tx: &Transaction<'_>,
    news: &[New<'_>],
    messages: &[Message],
    node: &str,
    recorder: Option<&dyn ChangeRecorder>,
    events: &[Event],
    now: Millis,
) -> Res<()> {
    // The messages, one array per column.
    let ids: Vec<i64> = messages.iter().map(|m| m.id.0).collect();
    let seqs: Vec<i64> = messages.iter().map(|m| m.seq.0 as i64).collect();
    let ms = || news.iter().map(|n| n.m);
    let channels: Vec<&str> = ms().map(|m| m.channel_id.as_str()).collect();
    let senders: Vec<Option<&str>> = ms().map(|m| m.sender_id.as_ref().map(UserId::as_str)).collect();
    let kinds: Vec<&str> = ms().map(|m| m.kind.as_str()).collect();
    let texts: Vec<&str> = ms().map(|m| m.text.as_str()).collect();
    let custom_types: Vec<&str> = ms().map(|m| m.custom_type.as_str()).collect();
    let data: Vec<Option<String>> = ms().map(|m| crate::rows::to_json(&m.data)).collect();
    let payloads: Vec<Option<String>> = ms().map(|m| crate::rows::to_json(&m.payload)).collect();
    // User ids have no spaces (and are never empty): each message's mentions travel as one text.
    let mentions: Vec<String> = ms()
        .map(|m| m.mentions.iter().map(UserId::as_str).collect::<Vec<_>>().join(" "))
        .collect();
    let client_ids: Vec<Option<&str>> = ms().map(|m| m.client_msg_id.as_deref()).collect();
    let parents: Vec<Option<i64>> = ms().map(|m| m.parent_id.map(|p| p.0)).collect();
    let files: Vec<Option<String>> = news
        .iter()
        .map(|n| n.file.as_ref().map(ser).transpose())
        .collect::<Res<_>>()?;
    let file_ids: Vec<Option<&str>> = ms().map(|m| m.file_id.as_ref().map(|f| f.as_str())).collect();
    let replies = || ms().map(|m| m.reply.as_ref());
    let states: Vec<Option<&str>> = replies().map(|r| r.map(|r| r.state.as_str())).collect();
    let triggers: Vec<Option<i64>> = replies().map(|r| r.and_then(|r| r.trigger_id).map(|t| t.0)).collect();
    let reasons: Vec<Option<&str>> = replies().map(|r| r.and_then(|r| r.reason.as_deref())).collect();
    let nodes: Vec<Option<&str>> = replies()
        .map(|r| r.filter(|r| r.state == ReplyState::Generating).map(|_| node))
        .collect();

    // The idempotency keys, the senders' read positions (their last new message of each channel), the
    // thread parents' counts.
    let keyed: Vec<&Message> = messages
        .iter()
        .filter(|m| m.sender_id.is_some() && m.client_msg_id.is_some())
        .collect();
    let key_senders: Vec<&str> = keyed
        .iter()
        .filter_map(|m| m.sender_id.as_ref().map(UserId::as_str))
        .collect();
    let key_ids: Vec<&str> = keyed.iter().filter_map(|m| m.client_msg_id.as_deref()).collect();
    let key_channels: Vec<&str> = keyed.iter().map(|m| m.channel_id.as_str()).collect();
    let key_messages: Vec<i64> = keyed.iter().map(|m| m.id.0).collect();
    let mut read: HashMap<(&str, &str), i64> = HashMap::new();
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for m in messages {
        if let Some(s) = &m.sender_id {
            read.insert((m.channel_id.as_str(), s.as_str()), m.seq.0 as i64);
        }
        if let Some(p) = m.parent_id {
            *counts.entry(p.0).or_default() += 1;
        }
    }
    let (read_channels, read_users, read_seqs) = read.iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut c, mut u, mut s), ((ch, user), seq)| {
            c.push(*ch);
            u.push(*user);
            s.push(*seq);
            (c, u, s)
        },
    );
    let (parent_ids, parent_counts): (Vec<i64>, Vec<i64>) = counts.into_iter().unzip();
    let flags: Vec<(i64, &str, Vec<String>)> = news
        .iter()
        .zip(messages)
        .filter(|(n, _)| !n.m.flags.is_empty())
        .map(|(n, m)| {
            let mut rules = Vec::new();
            add_rules(&mut rules, &n.m.flags);
            (m.id.0, m.channel_id.as_str(), rules)
        })
        .collect();

    // The outbox rows of the run's events, in their order, as `record_changes` records them.
    let records: Vec<_> = match recorder {
        Some(r) => events.iter().filter_map(|e| r.record(ChangeCause::Send, e)).collect(),
        None => Vec::new(),
    };
    let record_types: Vec<&str> = records.iter().map(|r| r.event_type).collect();
    let record_channels: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.channel_id.as_ref().map(|c| c.as_str()))
        .collect();
    let record_payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let record_count = records.len() as i64;

    let mut writes: Vec<Write<'_>> = Vec::new();
    if !messages.is_empty() {
        writes.push(Box::pin(write_rows(
            tx,
            "INSERT INTO messages (id, channel_id, seq, sender_id, kind, text, custom_type, data, payload, \
                 mentions, client_msg_id, parent_id, file, file_id, created_at, updated_at, reply_state, \
                 trigger_id, reply_reason, reply_node) OVERRIDING SYSTEM VALUE \
                 SELECT d.id, d.ch, d.seq, d.sender, d.kind, d.text, d.ct, d.data, d.payload, \
                 string_to_array(d.mentions, ' '), d.cmid, d.parent, d.file, d.file_id, $19, $19, d.state, \
                 d.trig, d.reason, d.node \
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::text[], \
                 $14::text[], $15::text[], $16::bigint[], $17::text[], $18::text[]) \
                 AS d(id, ch, seq, sender, kind, text, ct, data, payload, mentions, cmid, parent, file, file_id, \
                 state, trig, reason, node)",
            vec![
                &ids,
                &channels,
                &seqs,
                &senders,
                &kinds,
                &texts,
                &custom_types,
                &data,
                &payloads,
                &mentions,
                &client_ids,
                &parents,
                &files,
                &file_ids,
                &states,
                &triggers,
                &reasons,
                &nodes,
                &now,
            ],
            Some(messages.len()),
        )));
    }
    if !keyed.is_empty() {
        writes.push(Box::pin(write_rows(
            tx,
            "INSERT INTO message_keys (sender_id, client_msg_id, channel_id, message_id) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])",
            vec![&key_senders, &key_ids, &key_channels, &key_messages],
            Some(keyed.len()),
        )));
    }
    if !read_seqs.is_empty() {
        // A sender that is not a member (a bot answering where it was mentioned) has no position.
        writes.push(Box::pin(write_rows(
            tx,
            "UPDATE members m SET read_seq = d.seq FROM unnest($1::text[], $2::text[], $3::bigint[]) \
                 d(c, u, seq) WHERE m.channel_id = d.c AND m.user_id = d.u",
            vec![&read_channels, &read_users, &read_seqs],
            None,
        )));
    }
    if !parent_ids.is_empty() {
        writes.push(Box::pin(write_rows(
            tx,
            "UPDATE messages m SET reply_count = m.reply_count + d.n \
                 FROM unnest($1::bigint[], $2::bigint[]) d(id, n) WHERE m.id = d.id",
            vec![&parent_ids, &parent_counts],
            Some(parent_ids.len()),
        )));
    }
    for (id, channel, rules) in &flags {
        writes.push(Box::pin(write_rows(
            tx,
            FLAG_SQL,
            vec![id, channel, rules, &now],
            Some(1),
        )));
    }
    if !records.is_empty() {
        writes.push(Box::pin(write_rows(
            tx,
            "WITH c AS (UPDATE outbox_counter SET last_id = last_id + $1 RETURNING last_id) \
                 INSERT INTO outbox (id, event_type, channel_id, payload, created_at) \
                 SELECT c.last_id - $1 + d.i, d.t, d.ch, d.p, $5 \
                 FROM c, unnest($2::text[], $3::text[], $4::bytea[]) WITH ORDINALITY d(t, ch, p, i)",
            vec![&record_count, &record_types, &record_channels, &record_payloads, &now],
            Some(records.len()),
        )));
    }
    // Every statement answers before an error is returned (none is left running on the connection).
    futures_util::future::join_all(writes)
        .await
        .into_iter()
        .collect::<Res<Vec<()>>>()
        .map(drop)
}
