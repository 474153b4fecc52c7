//! Bot replies reviewed as they stream: the text released so far never contains blocked words, masked words
//! go out masked, and review costs time linear in the reply's length.

use confab_domain::{ChannelId, DomainError};

use super::{ContentGuard, Review};

/// What the policy says of a bot reply's text: as [`Review`], and where a rejection starts, so the reply can
/// be cut before the blocked text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyReview {
    Allow {
        rewritten: Option<String>,
        flagged_by: Vec<String>,
    },
    Reject {
        rule: String,
        reason: String,
        /// The first blocking match (byte offsets into the text).
        span: std::ops::Range<usize>,
    },
}

impl From<Review> for ReplyReview {
    /// A review that cannot say where the blocked text is: a rejection covers the whole text.
    fn from(r: Review) -> Self {
        match r {
            Review::Allow { rewritten, flagged_by } => ReplyReview::Allow { rewritten, flagged_by },
            Review::Reject { rule, reason } => ReplyReview::Reject {
                rule,
                reason,
                span: 0..0,
            },
        }
    }
}

/// A bot reply refused by a block rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyBlocked {
    pub rule: String,
    pub reason: String,
}

impl ReplyBlocked {
    /// The reason a reply cut by moderation is finished `failed` with.
    pub fn failure_reason(&self) -> String {
        format!("moderation: {}", self.reason)
    }
}

impl From<ReplyBlocked> for confab_domain::DomainError {
    fn from(b: ReplyBlocked) -> Self {
        DomainError::Rejected {
            rule: b.rule,
            reason: b.reason,
        }
    }
}

/// The end of a reviewed reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedReply {
    /// The text to store: masked, and cut before the first blocking match.
    pub text: String,
    /// What is left to relay after the last piece `push` released (empty when blocked).
    pub rest: String,
    pub blocked: Option<ReplyBlocked>,
    /// Flag rules the final text matched.
    pub flagged_by: Vec<String>,
}

/// Longest unfinished word held back from relaying: a word in progress is neither relayed before it is
/// complete (so a blocked or masked word never streams out) nor held forever (scripts without spaces).
const MAX_HELD_CHARS: usize = 32;

/// How much released text stays under review behind the end of a streaming reply. Text further back, up to
/// a word boundary, is settled: pieces are reviewed with the unsettled tail only, so a long reply costs a
/// linear amount of review, not a quadratic one. A match longer than this (a phrase with hundreds of spaces
/// in it, a pattern spanning several hundred bytes) or a limit over the whole text (links) is applied to
/// the final text, which is always reviewed whole.
const SETTLE_TAIL: usize = 256;

/// Applies the content policy to a bot reply while it streams in. Each piece is added to the text received so
/// far, whose unsettled tail is reviewed (the policy is compiled regexes: a few linear scans). What may be
/// relayed is the masked text up to the last unfinished word and up to any match that touches the end of the
/// text (it may still grow or stop matching); a blocking match that ends before the end of the text will
/// block the final text too, so the reply is refused at once. A match spanning several words can start in
/// text already relayed (the first words of a blocked phrase, or of a masked number); the final text, which
/// replaces the streamed one on clients, is reviewed whole and cut or masked in full.
pub struct ReplyGuard {
    guard: std::sync::Arc<dyn ContentGuard>,
    channel: ChannelId,
    received: String,
    /// Bytes of `received` released so far (relayed, masked).
    released: usize,
    /// Bytes of `received` no longer reviewed as pieces arrive: released, at least [`SETTLE_TAIL`] behind
    /// the end, and just after a whitespace character (no word or link spans it).
    settled: usize,
    blocked: Option<ReplyBlocked>,
}

impl ReplyGuard {
    pub fn new(guard: std::sync::Arc<dyn ContentGuard>, channel: ChannelId) -> Self {
        ReplyGuard {
            guard,
            channel,
            received: String::new(),
            released: 0,
            settled: 0,
            blocked: None,
        }
    }

    /// Bytes received so far, blocked text excluded.
    pub fn received_len(&self) -> usize {
        self.received.len()
    }

    /// Adds a piece; returns the text that may be relayed now (possibly empty), or the rejection (then
    /// nothing more is accepted).
    pub fn push(&mut self, delta: &str) -> Result<String, ReplyBlocked> {
        if let Some(b) = &self.blocked {
            return Err(b.clone());
        }
        self.received.push_str(delta);
        let base = self.settled;
        let held_from = held_word_start(&self.received);
        let mut end = self.received.len();
        let masked = loop {
            if end <= base {
                break None;
            }
            // Spans are relative to the reviewed tail.
            match self.guard.review_reply(&self.channel, &self.received[base..end]) {
                // A guard that cannot say where the rejection is cuts the whole reply.
                ReplyReview::Reject { rule, reason, span } if span.is_empty() => {
                    self.received.clear();
                    return Err(self.block(rule, reason));
                }
                // Ends before the end of what is reviewed: it stays a match whatever follows.
                ReplyReview::Reject { rule, reason, span } if base + span.end < end => {
                    let cut = floor_char_boundary(&self.received, (base + span.start).min(end));
                    self.received.truncate(cut);
                    return Err(self.block(rule, reason));
                }
                // Touches the end: wait for more text; meanwhile only what comes before it may go out.
                ReplyReview::Reject { span, .. } => {
                    end = floor_char_boundary(&self.received, (base + span.start).min(end - 1));
                }
                ReplyReview::Allow { rewritten, .. } => break rewritten,
            }
        };
        let upto = end.min(held_from);
        if upto <= self.released {
            return Ok(String::new());
        }
        let out: String = match masked {
            None => self.received[self.released..upto].to_string(),
            // Masking keeps one character per character, so positions carry over; a rewrite that does not
            // is held back whole (the final text has it).
            Some(m) if m.chars().count() == self.received[base..end].chars().count() => {
                let skip = self.received[base..self.released].chars().count();
                let take = self.received[self.released..upto].chars().count();
                m.chars().skip(skip).take(take).collect()
            }
            Some(_) => return Ok(String::new()),
        };
        self.released = upto;
        self.settle();
        Ok(out)
    }

    fn block(&mut self, rule: String, reason: String) -> ReplyBlocked {
        let b = ReplyBlocked { rule, reason };
        self.blocked = Some(b.clone());
        b
    }

    /// Moves the settled point up to the last whitespace that is released and [`SETTLE_TAIL`] behind the end.
    fn settle(&mut self) {
        let limit = floor_char_boundary(
            &self.received,
            self.released.min(self.received.len().saturating_sub(SETTLE_TAIL)),
        );
        if limit <= self.settled {
            return;
        }
        if let Some((i, c)) = self.received[self.settled..limit]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
        {
            self.settled += i + c.len_utf8();
        }
    }

    /// Reviews the complete text (its end is now known), whole: the text to store and what is left to relay.
    pub fn finish(mut self) -> ReviewedReply {
        let mut end = self.received.len();
        let (text, flagged_by) = loop {
            if end == 0 {
                break (String::new(), Vec::new());
            }
            match self.guard.review_reply(&self.channel, &self.received[..end]) {
                ReplyReview::Reject { rule, reason, span } => {
                    self.blocked.get_or_insert(ReplyBlocked { rule, reason });
                    end = if span.start < end {
                        floor_char_boundary(&self.received, span.start)
                    } else {
                        0
                    };
                }
                ReplyReview::Allow { rewritten, flagged_by } => {
                    break (
                        rewritten.unwrap_or_else(|| self.received[..end].to_string()),
                        flagged_by,
                    );
                }
            }
        };
        let rest = match &self.blocked {
            Some(_) => String::new(),
            None if text.chars().count() == self.received.chars().count() => {
                let released_chars = self.received[..self.released].chars().count();
                text.chars().skip(released_chars).collect()
            }
            None => String::new(),
        };
        let text = match &self.blocked {
            // What stays of a cut reply ends where the blocked text began.
            Some(_) => text.trim_end().to_string(),
            None => text,
        };
        ReviewedReply {
            text,
            rest,
            blocked: self.blocked,
            flagged_by,
        }
    }
}

/// Where the unfinished word at the end of `text` starts (at most [`MAX_HELD_CHARS`] back).
fn held_word_start(text: &str) -> usize {
    let mut start = text.len();
    for (n, (i, c)) in text.char_indices().rev().enumerate() {
        if n == MAX_HELD_CHARS || !(c.is_alphanumeric() || c == '_') {
            break;
        }
        start = i;
    }
    start
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use confab_moderation::{PolicyConfig, RuleAction, RuleConfig};

    use super::*;
    use crate::moderation::RuleBook;

    /// The configured policy as the service holds it.
    type PolicyGuard = RuleBook;

    fn guard() -> ReplyGuard {
        ReplyGuard::new(Arc::new(policy()), ChannelId::parse("c").unwrap())
    }

    /// Pushes every piece; returns what was released and the first rejection.
    fn stream(g: &mut ReplyGuard, pieces: &[&str]) -> (Vec<String>, Option<ReplyBlocked>) {
        let mut out = Vec::new();
        for p in pieces {
            match g.push(p) {
                Ok(r) => out.push(r),
                Err(b) => return (out, Some(b)),
            }
        }
        (out, None)
    }

    #[test]
    fn a_blocked_word_split_across_pieces_is_never_released() {
        let mut g = guard();
        let (released, blocked) = stream(&mut g, &["Sure, the da", "rn", " answer is 4."]);
        assert_eq!(
            released,
            ["Sure, the ", ""],
            "the unfinished word and the pending match are held"
        );
        assert_eq!(blocked.unwrap().reason, "no darn");
        assert!(g.push("more").is_err(), "nothing is accepted after a block");
        let end = g.finish();
        assert_eq!(end.text, "Sure, the");
        assert_eq!(end.rest, "");
        assert_eq!(end.blocked.unwrap().failure_reason(), "moderation: no darn");
    }

    #[test]
    fn a_word_that_only_starts_like_a_blocked_one_goes_through() {
        let mut g = guard();
        let (released, blocked) = stream(&mut g, &["the darn", "ation of it"]);
        assert_eq!(blocked, None);
        let end = g.finish();
        assert_eq!(released.concat() + &end.rest, "the darnation of it");
        assert_eq!((end.text.as_str(), end.blocked), ("the darnation of it", None));
    }

    #[test]
    fn a_blocked_word_at_the_very_end_is_found_when_the_text_is_complete() {
        let mut g = guard();
        let (released, blocked) = stream(&mut g, &["well ", "darn"]);
        assert_eq!((released.concat().as_str(), blocked), ("well ", None));
        let end = g.finish();
        assert_eq!((end.text.as_str(), end.rest.as_str()), ("well", ""));
        assert_eq!(end.blocked.unwrap().rule, "darn");
    }

    #[test]
    fn masked_words_are_masked_before_they_are_released() {
        let mut g = guard();
        let (released, blocked) = stream(&mut g, &["oh he", "ck, ç", "a refund"]);
        assert_eq!(blocked, None);
        assert_eq!(released, ["oh ", "****, ", "** "]);
        let end = g.finish();
        assert_eq!(end.rest, "refund");
        assert_eq!(end.text, "oh ****, ** refund");
        assert_eq!(end.flagged_by, ["refund"]);
    }

    #[test]
    fn a_blocked_phrase_is_cut_where_it_starts_even_if_its_first_word_went_out() {
        let mut g = guard();
        let (released, blocked) = stream(&mut g, &["oh good ", "grief", "!"]);
        assert_eq!(released, ["oh good ", ""]);
        assert!(blocked.is_some());
        assert_eq!(g.finish().text, "oh");
    }

    #[test]
    fn long_words_are_not_held_forever() {
        let mut g = guard();
        let long = "x".repeat(100);
        let released = g.push(&long).unwrap();
        assert_eq!(released.len(), 100 - MAX_HELD_CHARS);
        assert_eq!(g.finish().rest.len(), MAX_HELD_CHARS);
    }

    /// Counts the bytes handed to the policy.
    struct Counting(PolicyGuard, std::sync::atomic::AtomicUsize);

    impl ContentGuard for Counting {
        fn review(&self, channel: &ChannelId, text: &str) -> Review {
            self.0.review(channel, text)
        }

        fn review_reply(&self, channel: &ChannelId, text: &str) -> ReplyReview {
            self.1.fetch_add(text.len(), std::sync::atomic::Ordering::Relaxed);
            self.0.review_reply(channel, text)
        }
    }

    fn policy() -> PolicyGuard {
        let rule = |name: &str, words: &[&str], action| RuleConfig {
            name: name.into(),
            words: words.iter().map(|w| w.to_string()).collect(),
            patterns: vec![],
            action,
            reason: format!("no {name}"),
        };
        RuleBook::new(PolicyConfig {
            rules: vec![
                rule("darn", &["darn", "good grief"], RuleAction::Block),
                rule("heck", &["heck", "ça"], RuleAction::Mask),
                rule("refund", &["refund"], RuleAction::Flag),
            ],
            max_links: None,
        })
        .unwrap()
    }

    /// Streams `words` words in pieces of 7 bytes; returns (released + rest, final text, flags, bytes the
    /// policy reviewed while streaming, pieces).
    fn stream_long(words: usize) -> (String, String, Vec<String>, usize, usize) {
        let vocabulary = [
            "the",
            "heck",
            "answer",
            "ça",
            "is",
            "refund",
            "forty-two,",
            "good",
            "grief?",
            "ok\n",
        ];
        let text: String = (0..words)
            .map(|i| vocabulary[(i * 7 + i / 3) % vocabulary.len()].to_string() + " ")
            .collect::<String>()
            .replace("good grief", "good griefs");
        let counting = Arc::new(Counting(policy(), Default::default()));
        let mut g = ReplyGuard::new(counting.clone(), ChannelId::parse("c").unwrap());
        let mut released = String::new();
        let mut pieces = 0;
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(7);
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            released.push_str(&g.push(&rest[..cut]).expect("nothing blocked"));
            rest = &rest[cut..];
            pieces += 1;
        }
        let reviewed = counting.1.load(std::sync::atomic::Ordering::Relaxed);
        let end = g.finish();
        assert_eq!(end.blocked, None);
        released.push_str(&end.rest);
        let whole = match policy().review(&ChannelId::parse("c").unwrap(), &text) {
            Review::Allow { rewritten, .. } => rewritten.unwrap_or(text),
            other => panic!("{other:?}"),
        };
        assert_eq!(end.text, whole, "the final text is the whole text reviewed at once");
        (released, end.text, end.flagged_by, reviewed, pieces)
    }

    #[test]
    fn long_replies_cost_a_linear_amount_of_review_with_the_same_results() {
        let (released, text, flags, reviewed, pieces) = stream_long(4000);
        assert_eq!(released, text, "what streamed is what is stored, masked alike");
        assert!(text.contains("****") && !text.contains("heck") && !text.contains("ça"));
        assert_eq!(flags, ["refund"]);
        // Each piece reviews at most the unsettled tail: a bounded amount, not the text so far.
        assert!(
            reviewed <= pieces * (SETTLE_TAIL + 64),
            "{reviewed} bytes reviewed for {pieces} pieces"
        );
        let (_, _, _, reviewed_twice, _) = stream_long(8000);
        assert!(
            reviewed_twice < reviewed * 5 / 2,
            "twice the text, about twice the review: {reviewed} then {reviewed_twice}"
        );
    }

    #[test]
    fn a_guard_that_cannot_locate_a_rejection_cuts_the_whole_reply() {
        struct Everything;
        impl ContentGuard for Everything {
            fn review(&self, _: &ChannelId, text: &str) -> Review {
                if text.contains("bad") {
                    Review::Reject {
                        rule: "r".into(),
                        reason: "no".into(),
                    }
                } else {
                    Review::Allow {
                        rewritten: None,
                        flagged_by: vec![],
                    }
                }
            }
        }
        let mut g = ReplyGuard::new(Arc::new(Everything), ChannelId::parse("c").unwrap());
        assert_eq!(g.push("fine ").unwrap(), "fine ");
        assert!(g.push("bad ").is_err());
        assert_eq!(g.finish().text, "");
    }
}
