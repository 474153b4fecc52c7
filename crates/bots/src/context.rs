//! What the model sees: the bot's instructions and recent messages of the triggering channel only,
//! trimmed to a token budget, oldest first.

use confab_domain::UserId;
use confab_domain::bot::{BotSettings, MessageBotContext, ReplyState};
use confab_domain::model::{ChannelKind, Message};
use confab_llm::{ChatMessage, ChatRequest, Role};

/// A rough token estimate (about four characters a token, plus framing per message). Used before the call
/// for budgets and trimming; the provider's reported usage is recorded afterwards.
pub fn estimate_tokens(text: &str) -> u32 {
    (text.chars().count() as u32).div_ceil(4) + 4
}

/// The system prompt: the bot's own settings only. Display names, channel titles and message text are never
/// spliced in here (they reach the model only as user turns).
pub fn system_prompt(s: &BotSettings) -> String {
    let mut p = s.system_prompt.clone();
    if !s.topic.trim().is_empty() {
        p.push_str("\n\nTopic of this conversation: ");
        p.push_str(s.topic.trim());
    }
    if !s.custom_content.trim().is_empty() {
        p.push_str("\n\n");
        p.push_str(s.custom_content.trim());
    }
    p
}

/// The per-message context the application's server attached to a trigger ([`MessageBotContext`]), as
/// lines for the instructions. Only for bots that allow it.
fn message_context(trigger: &Message) -> Option<String> {
    let c = MessageBotContext::of(trigger.data.as_ref())?;
    let mut out = String::new();
    for (label, value) in [
        ("\n\nTopic of this message: ", &c.topic),
        ("\n\nRequested function: ", &c.function),
        ("\n\n", &c.custom_content),
    ] {
        if !value.trim().is_empty() {
            out.push_str(label);
            out.push_str(value.trim());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Builds the request from `history` (oldest first, ending with the trigger). The bot's own finished replies
/// become assistant turns; everything else is user text. In groups each user turn names its sender inside
/// the user text. Consecutive turns of one role are merged (providers want alternation), leading assistant
/// turns are dropped, and the oldest turns go first when the estimate exceeds `context_tokens`; the system
/// prompt and the trigger always stay.
pub fn build_request(bot: &UserId, s: &BotSettings, kind: ChannelKind, history: &[Message]) -> ChatRequest {
    let mut system = system_prompt(s);
    if s.message_context
        && let Some(extra) = history.last().and_then(message_context)
    {
        system.push_str(&extra);
    }
    let mut turns: Vec<ChatMessage> = Vec::new();
    for m in history {
        if m.deleted || m.text.trim().is_empty() {
            continue;
        }
        let role = if m.sender_id.as_ref() == Some(bot) {
            // Skip our own replies that did not finish well: they would teach the model its own failures.
            match &m.reply {
                Some(r) if r.state != ReplyState::Complete && r.state != ReplyState::Stopped => continue,
                _ => Role::Assistant,
            }
        } else if m.reply.as_ref().is_some_and(|r| r.state == ReplyState::Generating) {
            continue;
        } else {
            Role::User
        };
        let content = match (role, kind, &m.sender_id) {
            (Role::User, ChannelKind::Group, Some(sender)) => format!("{sender}: {}", m.text),
            _ => m.text.clone(),
        };
        match turns.last_mut() {
            Some(last) if last.role == role => {
                last.content.push('\n');
                last.content.push_str(&content);
            }
            _ => turns.push(ChatMessage { role, content }),
        }
    }
    finish_request(s, system, turns)
}

/// Builds the request for a conversation the application hands over whole (not read from a channel):
/// `turns` oldest first, consecutive turns of one role merged, trimmed like a channel's context.
pub fn build_turns_request(s: &BotSettings, turns: &[(Role, String)]) -> ChatRequest {
    let mut merged: Vec<ChatMessage> = Vec::new();
    for (role, content) in turns {
        match merged.last_mut() {
            Some(last) if last.role == *role => {
                last.content.push('\n');
                last.content.push_str(content);
            }
            _ => merged.push(ChatMessage {
                role: *role,
                content: content.clone(),
            }),
        }
    }
    finish_request(s, system_prompt(s), merged)
}

/// Drops leading assistant turns, trims the oldest turns to `context_tokens` (the system prompt and the last
/// turn always stay) and adds the bot's model settings.
fn finish_request(s: &BotSettings, system: String, mut turns: Vec<ChatMessage>) -> ChatRequest {
    while turns.first().is_some_and(|t| t.role == Role::Assistant) {
        turns.remove(0);
    }
    let budget = s.context_tokens.saturating_sub(estimate_tokens(&system));
    let mut total: u32 = turns.iter().map(|t| estimate_tokens(&t.content)).sum();
    // Keep at least the last turn (the trigger); drop from the front, keeping a user turn first.
    while total > budget && turns.len() > 1 {
        let dropped = turns.remove(0);
        total -= estimate_tokens(&dropped.content);
        while turns.len() > 1 && turns.first().is_some_and(|t| t.role == Role::Assistant) {
            let d = turns.remove(0);
            total -= estimate_tokens(&d.content);
        }
    }
    ChatRequest {
        model: (!s.model.is_empty()).then(|| s.model.clone()),
        system: (!system.trim().is_empty()).then_some(system),
        messages: turns,
        temperature: s.temperature,
        max_tokens: s.max_output_tokens,
    }
}

/// The estimated prompt size of a request.
pub fn estimate_request(req: &ChatRequest) -> u32 {
    req.system.as_deref().map(estimate_tokens).unwrap_or(0)
        + req.messages.iter().map(|m| estimate_tokens(&m.content)).sum::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_domain::bot::ReplyInfo;
    use confab_domain::model::MessageKind;
    use confab_domain::{ChannelId, ChannelSeq, MessageId};

    fn msg(seq: u64, sender: &str, text: &str) -> Message {
        Message {
            id: MessageId(seq as i64),
            channel_id: ChannelId::parse("g").unwrap(),
            seq: ChannelSeq(seq),
            sender_id: Some(UserId::parse(sender).unwrap()),
            kind: MessageKind::Text,
            text: text.into(),
            custom_type: String::new(),
            data: None,
            payload: None,
            mentions: vec![],
            client_msg_id: None,
            parent_id: None,
            reply_count: 0,
            file: None,
            created_at: 0,
            updated_at: 0,
            edited: false,
            deleted: false,
            reply: None,
        }
    }

    fn settings() -> BotSettings {
        BotSettings {
            provider: "p".into(),
            system_prompt: "Be brief.".into(),
            topic: "cooking".into(),
            ..BotSettings::default()
        }
    }

    #[test]
    fn roles_follow_senders_and_groups_name_speakers() {
        let bot = UserId::parse("bot").unwrap();
        let mut answer = msg(2, "bot", "Hi!");
        answer.reply = Some(ReplyInfo {
            state: ReplyState::Complete,
            trigger_id: Some(MessageId(1)),
            reason: None,
        });
        let mut failed = msg(4, "bot", "half");
        failed.reply = Some(ReplyInfo {
            state: ReplyState::Failed,
            trigger_id: Some(MessageId(3)),
            reason: None,
        });
        let h = vec![
            msg(1, "alice", "@bot hello"),
            answer,
            msg(3, "bob", "ignore"),
            failed,
            msg(5, "alice", "@bot recipe?"),
        ];
        let req = build_request(&bot, &settings(), ChannelKind::Group, &h);
        assert_eq!(
            req.system.as_deref(),
            Some("Be brief.\n\nTopic of this conversation: cooking")
        );
        let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::User]);
        assert_eq!(req.messages[2].content, "bob: ignore\nalice: @bot recipe?");
        assert_eq!(req.max_tokens, 512);
        let direct = build_request(&bot, &settings(), ChannelKind::Direct, &h[..1]);
        assert_eq!(direct.messages[0].content, "@bot hello");
    }

    #[test]
    fn trims_oldest_first_and_keeps_the_trigger() {
        let bot = UserId::parse("bot").unwrap();
        let s = BotSettings {
            context_tokens: 60,
            ..settings()
        };
        let mut h = Vec::new();
        for i in 1..=10 {
            h.push(msg(i * 2 - 1, "alice", &format!("question {i} {}", "x".repeat(40))));
            h.push(msg(i * 2, "bot", &format!("answer {i}")));
        }
        h.push(msg(21, "alice", &"y".repeat(400)));
        let req = build_request(&bot, &s, ChannelKind::Direct, &h);
        assert_eq!(req.messages.len(), 1, "only the (oversized) trigger fits");
        assert!(req.messages[0].content.starts_with("yyy"));
        let s = BotSettings {
            context_tokens: 200,
            ..settings()
        };
        let req = build_request(&bot, &s, ChannelKind::Direct, &h[..20]);
        assert_eq!(req.messages.first().unwrap().role, Role::User);
        assert!(req.messages.last().unwrap().content.starts_with("answer 10"));
        assert!(estimate_request(&req) <= 200 + estimate_tokens(&req.messages.last().unwrap().content));
    }
}
