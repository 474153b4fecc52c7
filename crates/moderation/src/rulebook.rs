//! The rules in force: the configuration file's, the application's added through the admin API, and each
//! channel's own. Compiled once when set; a check runs the layers that apply to the channel.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::{Policy, PolicyConfig, PolicyError, Verdict};

struct Layer {
    config: PolicyConfig,
    policy: Arc<Policy>,
}

impl Layer {
    fn compile(config: PolicyConfig) -> Result<Layer, PolicyError> {
        let policy = Arc::new(Policy::compile(&config)?);
        Ok(Layer { config, policy })
    }
}

/// Held in memory and changed in place: one node's view. With several nodes, each reloads what another
/// changed from the store when the change is announced (the service does that).
pub struct RuleBook {
    file: Layer,
    app: RwLock<Layer>,
    channels: RwLock<HashMap<String, Layer>>,
}

impl RuleBook {
    pub fn new(file: PolicyConfig) -> Result<RuleBook, PolicyError> {
        Ok(RuleBook {
            file: Layer::compile(file)?,
            app: RwLock::new(Layer::compile(PolicyConfig::default())?),
            channels: Default::default(),
        })
    }

    /// The configuration file's rules (read-only at run time).
    pub fn file_rules(&self) -> &PolicyConfig {
        &self.file.config
    }

    pub fn app_rules(&self) -> PolicyConfig {
        self.app.read().unwrap_or_else(|e| e.into_inner()).config.clone()
    }

    pub fn channel_rules(&self, channel: &str) -> Option<PolicyConfig> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        channels.get(channel).map(|l| l.config.clone())
    }

    /// The channels that have rules of their own.
    pub fn channels(&self) -> Vec<String> {
        let channels = self.channels.read().unwrap_or_else(|e| e.into_inner());
        channels.keys().cloned().collect()
    }

    /// Replaces the application's own rules (compiled first: a bad rule changes nothing).
    pub fn set_app_rules(&self, rules: PolicyConfig) -> Result<(), PolicyError> {
        let layer = Layer::compile(rules)?;
        *self.app.write().unwrap_or_else(|e| e.into_inner()) = layer;
        Ok(())
    }

    /// Replaces (or, with `None`, removes) a channel's own rules.
    pub fn set_channel_rules(&self, channel: &str, rules: Option<PolicyConfig>) -> Result<(), PolicyError> {
        let layer = rules.map(Layer::compile).transpose()?;
        let mut channels = self.channels.write().unwrap_or_else(|e| e.into_inner());
        match layer {
            Some(l) if !l.policy.is_empty() => {
                channels.insert(channel.to_string(), l);
            }
            _ => {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    /// The compiled layers that apply in a channel, non-empty ones only.
    fn layers(&self, channel: &str) -> Vec<Arc<Policy>> {
        let mut out = Vec::with_capacity(3);
        if !self.file.policy.is_empty() {
            out.push(self.file.policy.clone());
        }
        let app = self.app.read().unwrap_or_else(|e| e.into_inner()).policy.clone();
        if !app.is_empty() {
            out.push(app);
        }
        if let Some(l) = self.channels.read().unwrap_or_else(|e| e.into_inner()).get(channel) {
            out.push(l.policy.clone());
        }
        out
    }

    /// Whether any rule applies in the channel (callers skip the work otherwise).
    pub fn is_active(&self, channel: &str) -> bool {
        !self.layers(channel).is_empty()
    }

    /// Every layer that applies: the first block (by position in the text) wins; masks of every layer apply;
    /// flags add up.
    pub fn check<'a>(&self, channel: &str, text: &'a str) -> Verdict<'a> {
        let layers = self.layers(channel);
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        let mut flagged_by = Vec::new();
        let mut blocked: Option<Verdict<'a>> = None;
        for p in &layers {
            // Blocks are looked for in the original text, so a match's span is an offset into it.
            if let v @ Verdict::Blocked { .. } = p.check(text) {
                let earlier = match (&blocked, &v) {
                    (Some(Verdict::Blocked { span: a, .. }), Verdict::Blocked { span: b, .. }) => b.start < a.start,
                    _ => true,
                };
                if earlier {
                    blocked = Some(v);
                }
            }
        }
        if let Some(b) = blocked {
            return b;
        }
        for p in &layers {
            if let Verdict::Allowed { text: t, flagged_by: f } = p.check(&out) {
                if let Cow::Owned(t) = t {
                    out = Cow::Owned(t);
                }
                for rule in f {
                    if !flagged_by.contains(&rule) {
                        flagged_by.push(rule);
                    }
                }
            }
        }
        Verdict::Allowed { text: out, flagged_by }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RuleAction, RuleConfig};

    fn rule(name: &str, word: &str, action: RuleAction) -> PolicyConfig {
        PolicyConfig {
            rules: vec![RuleConfig {
                name: name.into(),
                words: vec![word.into()],
                patterns: vec![],
                action,
                reason: format!("no {word}"),
            }],
            max_links: None,
        }
    }

    #[test]
    fn layers_add_up_per_channel() {
        let book = RuleBook::new(rule("file", "alpha", RuleAction::Mask)).unwrap();
        assert!(book.is_active("c1"));
        book.set_app_rules(rule("app", "beta", RuleAction::Flag)).unwrap();
        book.set_channel_rules("c1", Some(rule("c1", "gamma", RuleAction::Block)))
            .unwrap();
        match book.check("c1", "alpha beta") {
            Verdict::Allowed { text, flagged_by } => {
                assert_eq!(text, "***** beta");
                assert_eq!(flagged_by, ["app"]);
            }
            v => panic!("{v:?}"),
        }
        assert!(book.check("c1", "so gamma").is_blocked());
        assert!(
            !book.check("c2", "so gamma").is_blocked(),
            "channel rules stay in their channel"
        );
        book.set_channel_rules("c1", None).unwrap();
        assert!(!book.check("c1", "so gamma").is_blocked());
        assert_eq!(book.channel_rules("c1"), None);
    }

    #[test]
    fn the_earliest_block_of_any_layer_wins_and_bad_rules_change_nothing() {
        let book = RuleBook::new(rule("late", "zulu", RuleAction::Block)).unwrap();
        book.set_app_rules(rule("early", "alpha", RuleAction::Block)).unwrap();
        match book.check("c", "alpha then zulu") {
            Verdict::Blocked { rule, span, .. } => assert_eq!((rule.as_str(), span), ("early", 0..5)),
            v => panic!("{v:?}"),
        }
        let bad = PolicyConfig {
            rules: vec![RuleConfig {
                name: "bad".into(),
                words: vec![],
                patterns: vec!["(".into()],
                action: RuleAction::Block,
                reason: String::new(),
            }],
            max_links: None,
        };
        assert!(book.set_app_rules(bad.clone()).is_err());
        assert_eq!(book.app_rules().rules[0].name, "early");
        assert!(book.set_channel_rules("c", Some(bad)).is_err());
        let empty = RuleBook::new(PolicyConfig::default()).unwrap();
        assert!(!empty.is_active("c"));
    }
}
