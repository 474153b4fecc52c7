//! `moderation_rules`: rule configurations (admin input) compiled by `Policy::compile` and layered in a
//! `RuleBook`, then texts checked against them. The input is lines: up to a line `---`, rules, in layers
//! separated by `==` (the file's, the application's, channel `c`'s); after it, the texts. A rule line is an
//! action letter (`b`lock, `m`ask, anything else flag), the name, then tab-separated items: `~pattern` or a
//! word; a line `#N` sets the layer's link limit.
//!
//! Checked: no panic and no hang (run with `-timeout`); a block's span lies inside the text on character
//! boundaries; masking keeps the number of characters; flags name rules of the layers.

use confab_moderation::{Policy, PolicyConfig, RuleAction, RuleBook, RuleConfig, Verdict};

pub(crate) fn layer(lines: &[&str]) -> PolicyConfig {
    let mut cfg = PolicyConfig::default();
    for line in lines {
        if let Some(n) = line.strip_prefix('#') {
            cfg.max_links = n.trim().parse().ok();
            continue;
        }
        let mut items = line.split('\t');
        let head = items.next().unwrap_or_default();
        let mut chars = head.chars();
        let action = match chars.next() {
            Some('b') => RuleAction::Block,
            Some('m') => RuleAction::Mask,
            _ => RuleAction::Flag,
        };
        let mut rule = RuleConfig {
            name: chars.as_str().to_string(),
            words: Vec::new(),
            patterns: Vec::new(),
            action,
            reason: String::new(),
        };
        for item in items {
            match item.strip_prefix('~') {
                Some(p) => rule.patterns.push(p.to_string()),
                None => rule.words.push(item.to_string()),
            }
        }
        cfg.rules.push(rule);
    }
    cfg
}

fn check_verdict(v: &Verdict<'_>, text: &str, names: &[&str]) {
    match v {
        Verdict::Blocked { span, rule, .. } => {
            assert!(
                span.start <= span.end && span.end <= text.len(),
                "{span:?} in {}",
                text.len()
            );
            assert!(
                text.is_char_boundary(span.start) && text.is_char_boundary(span.end),
                "{span:?}"
            );
            assert!(rule == "links" || names.contains(&rule.as_str()), "{rule}");
        }
        Verdict::Allowed { text: out, flagged_by } => {
            assert_eq!(out.chars().count(), text.chars().count(), "masks keep the length");
            for f in flagged_by {
                assert!(names.contains(&f.as_str()), "{f}");
            }
        }
    }
}

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (rules, texts) = input.split_once("\n---\n").unwrap_or((input, ""));
    let lines: Vec<&str> = rules.lines().collect();
    let layers: Vec<PolicyConfig> = lines.split(|l| *l == "==").take(3).map(layer).collect();
    let names: Vec<&str> = layers.iter().flat_map(|l| &l.rules).map(|r| r.name.as_str()).collect();
    let policies: Vec<Option<Policy>> = layers.iter().map(|l| Policy::compile(l).ok()).collect();
    let book = RuleBook::new(layers.first().cloned().unwrap_or_default()).ok();
    if let Some(book) = &book {
        if let Some(app) = layers.get(1) {
            let _ = book.set_app_rules(app.clone());
        }
        if let Some(channel) = layers.get(2) {
            let _ = book.set_channel_rules("c", Some(channel.clone()));
        }
    }
    for text in texts.split('\n') {
        for p in policies.iter().flatten() {
            check_verdict(&p.check(text), text, &names);
        }
        if let Some(book) = &book {
            check_verdict(&book.check("c", text), text, &names);
            check_verdict(&book.check("other", text), text, &names);
        }
    }
}
