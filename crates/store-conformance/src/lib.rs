//! The conformance suite of the [`Store`](confab_domain::ports::Store) port: what every storage backend must
//! do, checked through the port alone, so SQLite today and PostgreSQL later pass the same checks unchanged.
//!
//! A backend implements [`Backend`] (how to open a fresh store, and the same data again) and runs the suite
//! in a test module of its own crate:
//!
//! ```ignore
//! #[cfg(test)]
//! mod conformance {
//!     struct MyBackend;
//!     #[async_trait::async_trait]
//!     impl confab_store_conformance::Backend for MyBackend { /* ... */ }
//!     confab_store_conformance::suite!(MyBackend);
//! }
//! ```
//!
//! [`suite!`] expands to one `#[tokio::test]` per check (so the crate needs `tokio` with the `macros` and
//! `rt-multi-thread` features among its dev-dependencies); each check is a function of [`checks`].
//!
//! # What a backend must keep
//!
//! Each invariant, with the checks that test it:
//!
//! - **Gap-free sequences.** A channel's messages are numbered 1, 2, 3… in commit order, each number once,
//!   under concurrent writers too; a refused send takes no number; a deleted message keeps its number; the
//!   numbering goes on after a restart. Message ids increase in commit order.
//!   `concurrent_sends_get_gap_free_sequences`, `a_failed_send_leaves_no_gap`, `blocked_accounts_cannot_send`,
//!   `deletes_are_soft_and_keep_the_sequence`, `edits_change_content_and_keep_the_sequence`,
//!   `messages_survive_reopen_with_their_seq`, `replies_to_replies_are_rejected`, `file_messages_carry_their_file`,
//!   `messages_read_back_as_sent`.
//! - **Idempotent sends.** A retried send (same sender and `client_msg_id`) returns the original with
//!   `duplicate: true` and stores and publishes nothing, under concurrent retries too; the key is the
//!   sender's, and reusing it in another channel is `Invalid`; a removed member cannot retry.
//!   `retried_send_returns_the_original`, `concurrent_retries_store_one_message`,
//!   `a_client_msg_id_is_scoped_to_its_sender_and_channel`, `a_removed_member_cannot_retry_a_send`.
//! - **Preconditions in the write's transaction.** A store decides no rule: it tests each `Fact` of a write's
//!   preconditions against its rows, in order, inside the write's transaction; the first that does not hold
//!   is the error and nothing is written. `every_fact_is_tested_against_the_rows`,
//!   `preconditions_apply_in_order_and_combine`, `sends_racing_a_removal_are_stored_exactly_when_acknowledged`.
//! - **The service's rules, through the store.** With `confab_domain::rules`' preconditions: only members
//!   send (`NotMember`), blocked accounts not at all (`Forbidden`); a bot that is not a member may answer a
//!   message of the channel that mentions it; a reply answers a message of its own channel; an edit by a user
//!   meets the rules of a send. `a_failed_send_leaves_no_gap`, `blocked_accounts_cannot_send`,
//!   `a_bot_may_answer_where_a_member_mentioned_it`, `a_reply_answers_a_trigger_of_its_own_channel`,
//!   `edits_meet_the_rules_of_their_author`.
//! - **One reply per (bot, trigger), finished once.** Appending a bot's reply to a trigger again returns the
//!   first, also concurrently; `finish_reply` moves `generating` to one final state once (again, or
//!   concurrently, it returns the final reply unchanged and publishes nothing more); text is saved only
//!   while generating; a restart's sweep turns what was left generating into `interrupted`, keeping its text.
//!   `one_reply_per_bot_and_trigger`, `concurrent_replies_to_one_trigger_store_one`, `replies_finish_once`,
//!   `concurrent_finishes_apply_once`, `generating_replies_are_swept_to_interrupted`,
//!   `generating_replies_are_swept_after_reopen`; a reply deleted while it generates keeps no content,
//!   `a_deleted_reply_stays_empty`.
//! - **Outbox atomicity.** With a recorder installed, a committed change's recorded events are in the outbox,
//!   a refused or retried one records nothing, ids grow in commit order and are never reused (after pruning,
//!   after a restart), and the recorder is told the cause of each change; dead letters are kept per
//!   (endpoint, event). An announcement without a data change (`Store::announce`) is recorded and published
//!   like a write's events. `nothing_is_recorded_without_a_recorder`,
//!   `the_outbox_commits_and_rolls_back_with_the_change`, `recorded_changes_name_their_cause`,
//!   `announcements_are_recorded_and_published`,
//!   `outbox_ids_increase_in_commit_order`, `pruned_outbox_ids_are_never_reused`, `outbox_survives_reopen`,
//!   `dead_letters_are_kept_per_endpoint_and_event`.
//! - **Leases and presence.** A lease has one holder until it expires or is released; its holder renews it.
//!   A node's presence records say when a user came online or went offline.
//!   `leases_have_one_holder_until_they_expire`, `presence_follows_the_nodes_sessions`.
//! - **Durable before acknowledged.** What a write acknowledged is there after the store is opened again.
//!   `a_fresh_store_is_ready_and_empty`, `users_and_sessions_survive_reopen`,
//!   `channels_and_members_survive_reopen`, `messages_survive_reopen_with_their_seq`,
//!   `settings_and_providers_survive_reopen`, `generating_replies_are_swept_after_reopen`,
//!   `outbox_survives_reopen`.
//! - **Events in commit order, before the answer.** Every committed change's events reach the bus in commit
//!   order (each channel's in sequence order under concurrent writers), before the write returns; a refused
//!   write, or one that changes nothing, publishes nothing. `events_follow_commit_order`,
//!   `concurrent_writes_publish_in_commit_order`, `events_are_published_before_the_write_returns`,
//!   `account_and_channel_writes_publish_their_events`, `message_writes_publish_their_events`,
//!   `a_failed_write_publishes_nothing`, `writes_without_events_publish_nothing`,
//!   `removing_a_flagged_message_deletes_it`.
//! - **Accounts and sessions.** A user id is taken once (`AlreadyExists`); patches change what they name;
//!   deleting an account removes its sessions and memberships and keeps its messages; a token hash signs in
//!   one account. `users_are_created_once`, `users_list_in_id_order_by_page`,
//!   `user_patches_change_only_what_they_name`, `deleting_a_user_keeps_its_messages`, `last_seen_is_kept`,
//!   `sessions_are_found_and_revoked_per_user`, `a_session_token_belongs_to_one_account`.
//! - **Channels and members.** A channel id is taken once; a direct channel, or a channel with a taken
//!   distinct key, is returned with `false` instead of created; members are added once (all or none exist)
//!   and start with nothing unread; lists page in id order; contacts share a channel of at most
//!   `max_members`. `channels_are_created_with_their_members`, `direct_channels_are_distinct`,
//!   `a_distinct_key_names_one_channel`, `channel_patches_change_only_what_they_name`,
//!   `deleting_a_channel_removes_it_and_its_messages`, `channels_list_in_id_order_by_page`,
//!   `member_channels_list_a_users_channels_with_read_positions`, `members_are_added_once_and_removed`,
//!   `members_list_in_id_order_by_page`, `contacts_share_a_small_enough_channel`.
//! - **Read positions** only move forward, never past the last message, and a sender has read its own
//!   message. `read_positions_only_move_forward`, `senders_have_read_their_own_messages`.
//! - **History and threads.** Ranges read oldest first; a filter's limit counts matches only; a time maps to
//!   the sequence before it; threads are one level deep and count their replies.
//!   `history_reads_ranges_oldest_first`, `filtered_history_counts_matches_only`,
//!   `timestamps_map_to_sequences`, `threads_count_their_replies`, `replies_to_replies_are_rejected`.
//! - **Files.** Quotas per uploader and in all are checked with the insert (`LimitExceeded`), so concurrent
//!   uploads cannot pass them together; a message carries a file of its own channel; the sweep forgets the
//!   oldest files no message carries. `files_read_back_as_recorded`, `file_quotas_count_per_uploader_and_in_all`,
//!   `concurrent_uploads_cannot_pass_a_quota_together`, `file_messages_carry_their_file`,
//!   `unattached_files_are_swept_oldest_first`.
//! - **Bots and usage.** A bot is an `is_bot` account with settings; usage adds up per (day, bot, user,
//!   channel). `bots_are_accounts_with_settings`, `usage_adds_up_per_day_bot_user_and_channel`.
//! - **Settings and providers** are JSON kept per (namespace, key) and per name, replaced by a put.
//!   `settings_are_kept_per_namespace`, `providers_are_replaced_by_name`.
//! - **Flags.** Flag rules add to a message's flag; a review decides once (the same decision again changes
//!   nothing, another is `AlreadyExists`); removing deletes the message; flagging again reopens the review.
//!   `flagged_messages_are_listed_for_review`, `reviews_decide_once`, `removing_a_flagged_message_deletes_it`,
//!   `flagging_again_reopens_the_review`.

use async_trait::async_trait;
use confab_domain::ports::{DynBus, DynStore};

pub mod checks;
mod fixture;

/// What a backend gives the suite.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Keeps a store's data alive (a temporary directory, a database/schema name) until dropped.
    type Data: Send + Sync;
    /// A fresh, empty store that hands its committed events to `bus`.
    async fn open(&self, bus: DynBus) -> (Self::Data, DynStore);
    /// The same data opened again, after every earlier handle to it was dropped (durability checks).
    async fn reopen(&self, data: &Self::Data, bus: DynBus) -> DynStore;
    /// Why the backend cannot be tested here (a database server that is not reachable), or `None`. Each test
    /// of [`suite!`] asks first and, given a reason, skips visibly (see [`skipped`]). A backend that must not
    /// be skipped (its CI requires it) panics here instead.
    async fn unavailable(&self) -> Option<String> {
        None
    }
}

/// Reports a test skipped because its backend is unavailable: one line `SKIPPED <test>: <why>` on stderr,
/// written to the handle itself (the harness captures `eprintln!`, and hides it for a passing test).
#[doc(hidden)]
pub fn skipped(check: &str, why: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or(check);
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Expands, in the caller's test module, to one `#[tokio::test]` per check, named as the check, that runs it
/// against the given backend (an expression evaluated once per test).
#[macro_export]
macro_rules! suite {
    ($backend:expr $(,)?) => {
        $crate::suite!(@tests $backend;
            // users_sessions
            a_fresh_store_is_ready_and_empty,
            users_are_created_once,
            users_list_in_id_order_by_page,
            user_patches_change_only_what_they_name,
            deleting_a_user_keeps_its_messages,
            last_seen_is_kept,
            sessions_are_found_and_revoked_per_user,
            a_session_token_belongs_to_one_account,
            users_and_sessions_survive_reopen,
            // channels_members
            channels_are_created_with_their_members,
            direct_channels_are_distinct,
            a_distinct_key_names_one_channel,
            channel_patches_change_only_what_they_name,
            deleting_a_channel_removes_it_and_its_messages,
            channels_list_in_id_order_by_page,
            member_channels_list_a_users_channels_with_read_positions,
            members_are_added_once_and_removed,
            members_list_in_id_order_by_page,
            contacts_share_a_small_enough_channel,
            channels_and_members_survive_reopen,
            // messages
            messages_read_back_as_sent,
            concurrent_sends_get_gap_free_sequences,
            a_failed_send_leaves_no_gap,
            blocked_accounts_cannot_send,
            retried_send_returns_the_original,
            concurrent_retries_store_one_message,
            a_client_msg_id_is_scoped_to_its_sender_and_channel,
            a_removed_member_cannot_retry_a_send,
            history_reads_ranges_oldest_first,
            filtered_history_counts_matches_only,
            timestamps_map_to_sequences,
            edits_change_content_and_keep_the_sequence,
            deletes_are_soft_and_keep_the_sequence,
            messages_survive_reopen_with_their_seq,
            // threads_reads
            threads_count_their_replies,
            replies_to_replies_are_rejected,
            read_positions_only_move_forward,
            senders_have_read_their_own_messages,
            // files
            files_read_back_as_recorded,
            file_quotas_count_per_uploader_and_in_all,
            concurrent_uploads_cannot_pass_a_quota_together,
            file_messages_carry_their_file,
            unattached_files_are_swept_oldest_first,
            // bots_replies
            bots_are_accounts_with_settings,
            one_reply_per_bot_and_trigger,
            concurrent_replies_to_one_trigger_store_one,
            replies_finish_once,
            concurrent_finishes_apply_once,
            generating_replies_are_swept_to_interrupted,
            generating_replies_are_swept_after_reopen,
            a_deleted_reply_stays_empty,
            a_bot_may_answer_where_a_member_mentioned_it,
            usage_adds_up_per_day_bot_user_and_channel,
            // settings_providers
            settings_are_kept_per_namespace,
            providers_are_replaced_by_name,
            settings_and_providers_survive_reopen,
            // outbox_deadletters
            nothing_is_recorded_without_a_recorder,
            the_outbox_commits_and_rolls_back_with_the_change,
            recorded_changes_name_their_cause,
            outbox_ids_increase_in_commit_order,
            pruned_outbox_ids_are_never_reused,
            outbox_survives_reopen,
            announcements_are_recorded_and_published,
            dead_letters_are_kept_per_endpoint_and_event,
            leases_have_one_holder_until_they_expire,
            presence_follows_the_nodes_sessions,
            // flags
            flagged_messages_are_listed_for_review,
            reviews_decide_once,
            removing_a_flagged_message_deletes_it,
            flagging_again_reopens_the_review,
            // events
            events_follow_commit_order,
            concurrent_writes_publish_in_commit_order,
            events_are_published_before_the_write_returns,
            account_and_channel_writes_publish_their_events,
            message_writes_publish_their_events,
            a_failed_write_publishes_nothing,
            writes_without_events_publish_nothing,
            // preconditions
            every_fact_is_tested_against_the_rows,
            preconditions_apply_in_order_and_combine,
            sends_racing_a_removal_are_stored_exactly_when_acknowledged,
            edits_meet_the_rules_of_their_author,
            a_reply_answers_a_trigger_of_its_own_channel,
        );
    };
    (@tests $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $backend;
                if let Some(why) = $crate::Backend::unavailable(&backend).await {
                    return $crate::skipped(stringify!($check), &why);
                }
                $crate::checks::$check(backend).await;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Names of `pub async fn name<B: Backend>` in a source file.
    fn checks_in(source: &str) -> impl Iterator<Item = String> + '_ {
        source.lines().filter_map(|l| {
            let rest = l.strip_prefix("pub async fn ")?;
            rest.contains("<B: Backend>")
                .then(|| rest.split('<').next().unwrap().to_string())
        })
    }

    /// Every check function is run by `suite!`, and `suite!` names no other.
    #[test]
    fn the_suite_runs_every_check() {
        let sources = [
            include_str!("checks/bots_replies.rs"),
            include_str!("checks/channels_members.rs"),
            include_str!("checks/events.rs"),
            include_str!("checks/files.rs"),
            include_str!("checks/flags.rs"),
            include_str!("checks/messages.rs"),
            include_str!("checks/outbox_deadletters.rs"),
            include_str!("checks/preconditions.rs"),
            include_str!("checks/settings_providers.rs"),
            include_str!("checks/threads_reads.rs"),
            include_str!("checks/users_sessions.rs"),
        ];
        let defined: BTreeSet<String> = sources.into_iter().flat_map(checks_in).collect();
        let lib = include_str!("lib.rs");
        let list = lib
            .split("$crate::suite!(@tests $backend;")
            .nth(1)
            .and_then(|rest| rest.split(");").next())
            .expect("the list of suite!");
        let listed: Vec<String> = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .map(|l| l.trim_end_matches(',').to_string())
            .collect();
        let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(listed.len(), listed_set.len(), "a check is listed twice");
        assert_eq!(
            defined.difference(&listed_set).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "checks not run by suite!"
        );
        assert_eq!(
            listed_set.difference(&defined).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "suite! names no such check"
        );
        // The crate documentation names every check.
        for name in &defined {
            assert!(
                lib.contains(&format!("`{name}`")),
                "{name} is not named in the crate documentation"
            );
        }
    }
}
