//! `reply_guard`: a bot reply reviewed as it streams (`ReplyGuard`, the content policy applied piece by piece,
//! then to the complete text), as the bot runner drives it with a provider's deltas. The input is rules in
//! the `moderation_rules` format (one layer, words only: see below), a line `---`, then the reply, cut into
//! the provider's pieces at each `\u{1}`.
//!
//! Checked: no panic or hang; once a piece is refused every later one is; a refused reply ends blocked with
//! nothing left to relay; a reply not refused relays, piece by piece and then its rest, exactly as many
//! characters as the final text has (and, when no rule rewrote anything, exactly the final text); and no
//! complete block-rule match is ever relayed.
//!
//! Words only, each at most [`MAX_WORD`] bytes and no link limit: the guard documents that a match longer
//! than its review window, a regex anchored to the start of the text, or a limit over the whole text is
//! applied to the final text only (which replaces the streamed one), so those would be reported here as
//! leaks by design.

use std::sync::Arc;

use confab_domain::ChannelId;
use confab_moderation::{Policy, Verdict};
use confab_service::moderation::{ReplyGuard, RuleBook};

use crate::moderation_rules::layer;

/// Longest rule word kept (bytes), well inside the guard's review window of 256 bytes.
const MAX_WORD: usize = 64;

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Some((rules, reply)) = input.split_once("\n---\n") else {
        return;
    };
    let lines: Vec<&str> = rules.lines().collect();
    let mut config = layer(&lines);
    config.max_links = None;
    for rule in &mut config.rules {
        rule.patterns.clear();
        rule.words.retain(|w| w.len() <= MAX_WORD);
    }
    let (Ok(policy), Ok(guard)) = (Policy::compile(&config), RuleBook::new(config.clone())) else {
        return;
    };
    let mut g = ReplyGuard::new(Arc::new(guard), ChannelId::parse("c").unwrap());

    let mut received = String::new();
    let mut relayed = String::new();
    let mut refused = false;
    for piece in reply.split('\u{1}') {
        match g.push(piece) {
            Ok(out) => {
                assert!(!refused, "a piece was accepted after a refusal");
                received.push_str(piece);
                relayed.push_str(&out);
            }
            Err(_) => {
                if !refused {
                    received.push_str(piece);
                }
                refused = true;
            }
        }
    }
    let relayed_chars = relayed.chars().count();
    // Relayed text corresponds, character for character, to the start of what was received (masks keep the
    // number of characters), so this is the raw text that went out.
    let raw_relayed: String = received.chars().take(relayed_chars).collect();
    assert!(relayed_chars <= received.chars().count(), "more relayed than received");
    if let Verdict::Blocked { span, rule, .. } = policy.check(&received) {
        assert!(
            span.end > raw_relayed.len(),
            "rule {rule} matched {:?}, which was relayed in full: {relayed:?}",
            &received[span.clone()]
        );
    }

    let end = g.finish();
    if refused {
        assert!(end.blocked.is_some(), "a refused reply must end blocked");
    }
    if end.blocked.is_some() {
        assert!(end.rest.is_empty(), "nothing is relayed after a block: {:?}", end.rest);
        return;
    }
    let final_chars = end.text.chars().count();
    if final_chars == received.chars().count() {
        assert_eq!(
            relayed_chars + end.rest.chars().count(),
            final_chars,
            "relayed {relayed:?} + rest {:?} against {:?}",
            end.rest,
            end.text
        );
    }
    if end.text == received {
        assert_eq!(
            relayed + &end.rest,
            end.text,
            "without rewrites the relayed text is the reply"
        );
    }
}
