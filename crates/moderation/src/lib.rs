//! Content rules: each rule is a word list and/or regular expressions with one action: `block` (the
//! message is refused with the rule's reason, which the sender sees), `mask` (the matched text is replaced
//! by asterisks, one per character) or `flag` (stored as is and listed for review). A link limit blocks
//! messages with too many links. Rules compile once into regexes; checking a text is a few linear scans.
//!
//! The same policy checks a bot's reply as it streams: `check` on the text so far finds a blocking match as
//! soon as it is complete, and says where it is (`span`), so the reply can be cut before it.

use std::borrow::Cow;
use std::ops::Range;

mod rulebook;
pub use rulebook::RuleBook;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Block,
    Mask,
    Flag,
}

/// One rule as configured (TOML or the admin API).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Whole words or phrases, matched case-insensitively on word boundaries.
    #[serde(default)]
    pub words: Vec<String>,
    /// Regular expressions (Rust `regex` syntax, no look-around), matched as written.
    #[serde(default)]
    pub patterns: Vec<String>,
    pub action: RuleAction,
    /// What a blocked sender reads; a default names the rule.
    #[serde(default)]
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub rules: Vec<RuleConfig>,
    /// More links than this blocks the message; `None`: no limit.
    pub max_links: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("rule {rule:?}: {why}")]
    Rule { rule: String, why: String },
}

struct Rule {
    name: String,
    action: RuleAction,
    reason: String,
    regex: Regex,
}

/// A compiled policy.
pub struct Policy {
    rules: Vec<Rule>,
    max_links: Option<u32>,
    links: Regex,
}

/// What the policy says of a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Refused: `rule` matched (or the link limit, rule `links`); `reason` is for the sender. `span` is the
    /// first blocking match in the text (byte offsets; for the link limit, the first link over it).
    Blocked {
        rule: String,
        reason: String,
        span: Range<usize>,
    },
    /// Allowed, with the text to store (masked where a mask rule matched) and the flag rules that matched.
    Allowed {
        text: Cow<'a, str>,
        flagged_by: Vec<String>,
    },
}

impl Verdict<'_> {
    pub fn is_blocked(&self) -> bool {
        matches!(self, Verdict::Blocked { .. })
    }
}

/// Longest pattern source accepted, and the compiled size bound: rules come from the admin API too.
const MAX_PATTERN_LEN: usize = 1000;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Policy {
    pub fn compile(cfg: &PolicyConfig) -> Result<Policy, PolicyError> {
        let rules = cfg.rules.iter().map(compile_rule).collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            rules: rules.into_iter().flatten().collect(),
            max_links: cfg.max_links,
            links: Regex::new(r"(?i)\b(?:https?://|www\.)\S+").expect("valid"),
        })
    }

    /// Whether the policy can change anything (a policy without rules is skipped by callers).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.max_links.is_none()
    }

    pub fn check<'a>(&self, text: &'a str) -> Verdict<'a> {
        // The match that starts first, so a streamed reply is cut before anything blocked; on a tie the link
        // limit, then the rules in their order.
        let links = self.max_links.and_then(|max| {
            let over = self.links.find_iter(text).nth(max as usize)?;
            Some((
                over.range(),
                "links".to_string(),
                format!("Messages may contain at most {max} links."),
            ))
        });
        let rules = self
            .rules
            .iter()
            .filter(|r| r.action == RuleAction::Block)
            .filter_map(|r| Some((r.regex.find(text)?.range(), r.name.clone(), r.reason.clone())));
        if let Some((span, rule, reason)) = links.into_iter().chain(rules).min_by_key(|(span, ..)| span.start) {
            return Verdict::Blocked { rule, reason, span };
        }
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        let mut flagged_by = Vec::new();
        for r in &self.rules {
            match r.action {
                RuleAction::Block => {}
                RuleAction::Flag => {
                    if r.regex.is_match(&out) {
                        flagged_by.push(r.name.clone());
                    }
                }
                RuleAction::Mask => {
                    if r.regex.is_match(&out) {
                        let masked = r
                            .regex
                            .replace_all(&out, |c: &regex::Captures<'_>| "*".repeat(c[0].chars().count()))
                            .into_owned();
                        out = Cow::Owned(masked);
                    }
                }
            }
        }
        Verdict::Allowed { text: out, flagged_by }
    }
}

fn compile_rule(cfg: &RuleConfig) -> Result<Option<Rule>, PolicyError> {
    let err = |why: String| PolicyError::Rule {
        rule: cfg.name.clone(),
        why,
    };
    if cfg.name.trim().is_empty() {
        return Err(err("a rule needs a name".into()));
    }
    let mut alternatives: Vec<String> = Vec::new();
    let words: Vec<String> = cfg
        .words
        .iter()
        .map(|w| w.trim())
        .filter(|w| !w.is_empty())
        .map(|w| regex::escape(w).replace(' ', r"\s+"))
        .collect();
    if !words.is_empty() {
        // Word boundaries only where the word itself starts or ends with a word character (`c++` has none
        // after it).
        let bounded: Vec<String> = words
            .iter()
            .map(|w| {
                let starts = w.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_');
                let ends = w.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_');
                format!(
                    "{}{w}{}",
                    if starts { r"\b" } else { "" },
                    if ends { r"\b" } else { "" }
                )
            })
            .collect();
        alternatives.push(format!("(?i:{})", bounded.join("|")));
    }
    for p in &cfg.patterns {
        if p.len() > MAX_PATTERN_LEN {
            return Err(err(format!("a pattern is longer than {MAX_PATTERN_LEN} characters")));
        }
        // Each pattern alone first, so an error names it.
        Regex::new(p).map_err(|e| err(format!("pattern {p:?}: {e}")))?;
        alternatives.push(format!("(?:{p})"));
    }
    if alternatives.is_empty() {
        return Ok(None); // nothing to match
    }
    let regex = RegexBuilder::new(&alternatives.join("|"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| err(e.to_string()))?;
    let reason = if cfg.reason.trim().is_empty() {
        format!("The message was blocked by the rule {:?}.", cfg.name)
    } else {
        cfg.reason.clone()
    };
    Ok(Some(Rule {
        name: cfg.name.clone(),
        action: cfg.action,
        reason,
        regex,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, words: &[&str], patterns: &[&str], action: RuleAction) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            words: words.iter().map(|s| s.to_string()).collect(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            action,
            reason: String::new(),
        }
    }

    fn policy(rules: Vec<RuleConfig>, max_links: Option<u32>) -> Policy {
        Policy::compile(&PolicyConfig { rules, max_links }).unwrap()
    }

    #[test]
    fn words_match_whole_words_in_any_case() {
        let p = policy(
            vec![rule("rude", &["darn", "good grief"], &[], RuleAction::Block)],
            None,
        );
        assert!(p.check("Well, DARN it").is_blocked());
        assert!(p.check("good   grief!").is_blocked());
        assert!(!p.check("darnation is a word").is_blocked(), "whole words only");
        assert!(!p.check("all good").is_blocked());
        match p.check("oh darn") {
            Verdict::Blocked { rule, reason, span } => {
                assert_eq!(rule, "rude");
                assert!(reason.contains("rude"), "{reason}");
                assert_eq!(span, 3..7);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn masks_keep_the_length_and_flags_are_listed() {
        let p = policy(
            vec![
                rule("cards", &[], &[r"\b\d{4}(?:[ -]?\d{4}){3}\b"], RuleAction::Mask),
                rule("swear", &["heck", "ça"], &[], RuleAction::Mask),
                rule("refund", &["refund"], &[], RuleAction::Flag),
            ],
            None,
        );
        match p.check("Heck, refund 4111 1111 1111 1111 ça") {
            Verdict::Allowed { text, flagged_by } => {
                assert_eq!(text, "****, refund ******************* **");
                assert_eq!(flagged_by, ["refund"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.check("nothing here"),
            Verdict::Allowed {
                text: Cow::Borrowed(_),
                ..
            }
        ));
    }

    #[test]
    fn block_wins_over_mask_and_flag_and_links_are_limited() {
        let mut block = rule("spam", &["buy now"], &[], RuleAction::Block);
        block.reason = "No advertising.".into();
        let p = policy(vec![rule("m", &["buy"], &[], RuleAction::Mask), block], Some(1));
        assert_eq!(
            p.check("buy now!"),
            Verdict::Blocked {
                rule: "spam".into(),
                reason: "No advertising.".into(),
                span: 0..7,
            }
        );
        assert!(!p.check("see https://example.com").is_blocked());
        assert!(
            matches!(p.check("see https://a.example and www.b.example"), Verdict::Blocked { rule, span, .. } if rule == "links" && span == (26..39))
        );
    }

    #[test]
    fn the_first_blocking_match_is_reported_whichever_rule_it_is() {
        let p = policy(
            vec![
                rule("late", &["zebra"], &[], RuleAction::Block),
                rule("early", &["apple"], &[], RuleAction::Block),
            ],
            None,
        );
        match p.check("an apple and a zebra") {
            Verdict::Blocked { rule, span, .. } => assert_eq!((rule.as_str(), span), ("early", 3..8)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        let e = Policy::compile(&PolicyConfig {
            rules: vec![rule("broken", &[], &["(unclosed"], RuleAction::Flag)],
            max_links: None,
        })
        .err()
        .unwrap();
        assert!(matches!(&e, PolicyError::Rule { rule, .. } if rule == "broken"), "{e}");
        assert!(
            Policy::compile(&PolicyConfig {
                rules: vec![rule(" ", &["x"], &[], RuleAction::Flag)],
                max_links: None
            })
            .is_err()
        );
        let empty = policy(vec![rule("nothing", &[" "], &[], RuleAction::Block)], None);
        assert!(empty.is_empty());
    }

    #[test]
    fn policies_read_from_toml_like_json() {
        let cfg: PolicyConfig = serde_json::from_value(serde_json::json!({
            "max_links": 2,
            "rules": [{"name": "pii", "patterns": ["\\d{3}-\\d{2}-\\d{4}"], "action": "mask"}]
        }))
        .unwrap();
        let p = Policy::compile(&cfg).unwrap();
        assert_eq!(
            p.check("ssn 123-45-6789"),
            Verdict::Allowed {
                text: Cow::Owned("ssn ***********".into()),
                flagged_by: vec![]
            }
        );
    }
}
