//! Bots: accounts whose replies come from an LLM provider, and the state of a streamed reply.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::{MessageId, Millis, UserId};

/// How a bot is configured. The bot's account (nickname, avatar) is its `User` row; this is the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotSettings {
    /// Provider name (from the configuration or the admin API), tried first.
    pub provider: String,
    /// Providers tried in order when the ones before failed before streaming anything.
    pub fallbacks: Vec<String>,
    /// Model override; empty uses the provider's model.
    pub model: String,
    pub system_prompt: String,
    pub temperature: Option<f32>,
    /// Always sent upstream as the output cap.
    pub max_output_tokens: u32,
    /// The conversation topic (NIM `robotTopic`), appended to the instructions.
    pub topic: String,
    /// Custom content (NIM `robotCustomContent`), appended to the instructions.
    pub custom_content: String,
    /// Context: at most this many recent messages of the triggering channel…
    pub context_messages: u32,
    /// …and at most this many (estimated) input tokens, oldest dropped first.
    pub context_tokens: u32,
    /// Reply to follow-ups in a thread the bot takes part in, without a new mention.
    pub reply_in_threads: bool,
    /// Tokens (prompt + completion) a user may spend with this bot per UTC day; 0 = unlimited.
    pub user_daily_tokens: u64,
    /// Tokens this bot may spend per UTC day over all users; 0 = unlimited.
    pub bot_daily_tokens: u64,
    /// Concurrent replies this bot generates; more wait in a queue with a deadline.
    pub max_concurrent: u32,
    /// Which group messages address the bot (1:1 messages always do).
    pub trigger: BotTrigger,
    /// Whether a user may summon the bot into a channel it is not a member of by mentioning it (in the
    /// message's mention list). Off (default): the bot answers users only where it is a member; the
    /// application may still invoke it anywhere (a mention in a message it sends).
    pub summonable: bool,
    /// Let the application's server add a topic, a function and custom content to a message for the bot
    /// ([`MessageBotContext`], e.g. NIM's `robotTopic`, `robotFunction`, `robotCustomContent`); they are
    /// appended to the instructions of the reply to that message. Off: such values are ignored.
    pub message_context: bool,
    /// Where the application is told about each message that addresses the bot (a bot whose answers come
    /// from the application, or an LLM bot the application also follows). Empty: nobody is told.
    pub callback_url: String,
}

/// Which messages of a group address a bot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotTrigger {
    /// Messages that mention it (mention list or `@id`), commands naming it (`/id ...`), and follow-ups in
    /// its threads.
    #[default]
    Mentions,
    /// As `Mentions`, and every command (a message starting with `/`), whichever bot it names: Sendbird's
    /// privacy mode.
    MentionsAndCommands,
    /// Every member's message.
    AllMessages,
}

impl Default for BotSettings {
    fn default() -> Self {
        BotSettings {
            provider: String::new(),
            fallbacks: Vec::new(),
            model: String::new(),
            system_prompt: "You are a helpful assistant in a chat. Answer briefly.".into(),
            temperature: None,
            max_output_tokens: 512,
            topic: String::new(),
            custom_content: String::new(),
            context_messages: 20,
            context_tokens: 3000,
            reply_in_threads: true,
            user_daily_tokens: 0,
            bot_daily_tokens: 0,
            max_concurrent: 8,
            trigger: BotTrigger::Mentions,
            summonable: false,
            message_context: false,
            callback_url: String::new(),
        }
    }
}

impl BotSettings {
    /// Whether an LLM answers for this bot (otherwise only its callback is told).
    pub fn answers_with_llm(&self) -> bool {
        !self.provider.trim().is_empty()
    }

    pub fn validate(&self) -> Result<(), DomainError> {
        if self.provider.trim().is_empty() && self.callback_url.trim().is_empty() {
            return Err(DomainError::invalid(
                "provider",
                "a bot needs a provider (or a callback URL, when the application answers)",
            ));
        }
        let web = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if !self.callback_url.is_empty() && !web(&self.callback_url) {
            return Err(DomainError::invalid("callback_url", "must be an http(s) URL"));
        }
        if self.system_prompt.chars().count() > 20_000 {
            return Err(DomainError::invalid(
                "system_prompt",
                "must be at most 20000 characters",
            ));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(DomainError::invalid("temperature", "must be between 0 and 2"));
        }
        if self.max_output_tokens == 0 || self.max_output_tokens > 32_768 {
            return Err(DomainError::invalid("max_output_tokens", "must be 1 to 32768"));
        }
        if self.context_messages > 500 {
            return Err(DomainError::invalid("context_messages", "must be at most 500"));
        }
        if self.max_concurrent == 0 {
            return Err(DomainError::invalid("max_concurrent", "must be at least 1"));
        }
        if self.topic.chars().count() > 2000 || self.custom_content.chars().count() > 5000 {
            return Err(DomainError::invalid("topic", "topic or custom content too long"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bot {
    pub id: UserId,
    pub settings: BotSettings,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The life of a bot reply: created `generating` at once, finished in exactly one final state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyState {
    Generating,
    Complete,
    /// A member pressed stop; the partial text is kept.
    Stopped,
    /// Nothing usable came back (error, timeout, budget, moderation); `reason` says why.
    Failed,
    /// The stream broke after some text, or the server restarted while generating.
    Interrupted,
}

impl ReplyState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyState::Generating => "generating",
            ReplyState::Complete => "complete",
            ReplyState::Stopped => "stopped",
            ReplyState::Failed => "failed",
            ReplyState::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "generating" => ReplyState::Generating,
            "complete" => ReplyState::Complete,
            "stopped" => ReplyState::Stopped,
            "failed" => ReplyState::Failed,
            "interrupted" => ReplyState::Interrupted,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        self != ReplyState::Generating
    }
}

/// Set on a message that is a bot's reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyInfo {
    pub state: ReplyState,
    /// The message that triggered the reply (one reply per bot and trigger); `None` for a message an
    /// application streams without naming the message it answers.
    pub trigger_id: Option<MessageId>,
    /// For `failed` (and sometimes `interrupted`): why, in words a user can read.
    pub reason: Option<String>,
}

/// Token usage recorded for one reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub bot_id: UserId,
    pub user_id: UserId,
    pub channel_id: crate::ids::ChannelId,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub replies: u64,
}

/// The UTC day of a timestamp, `YYYY-MM-DD` (civil-from-days, no time zone data needed).
pub fn utc_day(ms: Millis) -> String {
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_795_324_010_221), "2026-11-22");
        assert_eq!(utc_day(-1), "1969-12-31");
    }

    #[test]
    fn settings_need_a_provider_and_sane_numbers() {
        let mut s = BotSettings::default();
        assert!(s.validate().is_err());
        s.provider = "local".into();
        assert!(s.validate().is_ok());
        s.temperature = Some(3.0);
        assert!(s.validate().is_err());
        s.temperature = None;
        s.max_output_tokens = 0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn final_states() {
        assert!(!ReplyState::Generating.is_final());
        for s in ["complete", "stopped", "failed", "interrupted"] {
            assert!(ReplyState::parse(s).unwrap().is_final());
        }
    }
}

/// Instructions the application's server attaches to one message for the bot it addresses, kept in the
/// message's `data` under [`MessageBotContext::DATA_KEY`]. Only bots with `message_context` use them: the
/// server that sent the message vouches for them, so they may go into the instructions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageBotContext {
    pub topic: String,
    pub function: String,
    pub custom_content: String,
}

impl MessageBotContext {
    pub const DATA_KEY: &'static str = "bot_context";

    /// The context a message's `data` carries, if any.
    pub fn of(data: Option<&serde_json::Value>) -> Option<MessageBotContext> {
        let v = data?.get(Self::DATA_KEY)?;
        serde_json::from_value(v.clone()).ok()
    }

    /// `data` carrying this context.
    pub fn to_data(&self) -> serde_json::Value {
        serde_json::json!({ Self::DATA_KEY: self })
    }

    pub fn is_empty(&self) -> bool {
        self.topic.trim().is_empty() && self.function.trim().is_empty() && self.custom_content.trim().is_empty()
    }
}
