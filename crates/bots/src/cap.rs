//! The end a reply reaches whatever the provider does. `max_output_tokens` is sent upstream, but a provider
//! may ignore it (or stream without end), so it is enforced here too, with a byte cap over it: a reply that
//! reaches either ends `complete` with the reason [`LENGTH`], as one the provider itself cut at its token
//! limit does (what chat users know from assistants that stop mid-sentence at their length limit).

/// The reason of a reply cut at its length limit (OpenAI's `finish_reason`).
pub const LENGTH: &str = confab_service::replies::LENGTH_REASON;

/// Characters per token of the local count (the estimate of [`crate::context::estimate_tokens`]) with a
/// quarter more as margin: a provider that keeps to the limit ends first, by its own count.
const CHARS_PER_TOKEN_WITH_MARGIN: usize = 5;

/// Counts a reply's text against its caps.
pub struct ReplyCap {
    max_tokens: u32,
    max_chars: usize,
    max_bytes: usize,
    chars: usize,
    bytes: usize,
}

impl ReplyCap {
    pub fn new(max_output_tokens: u32, max_bytes: usize) -> ReplyCap {
        ReplyCap {
            max_tokens: max_output_tokens,
            max_chars: (max_output_tokens as usize).saturating_mul(CHARS_PER_TOKEN_WITH_MARGIN),
            max_bytes: max_bytes.max(1),
            chars: 0,
            bytes: 0,
        }
    }

    /// Takes a piece: cuts it to what the caps leave (on a character boundary) and says whether the reply
    /// has reached its end.
    pub fn take(&mut self, piece: &mut String) -> bool {
        let mut cut = None;
        let (mut chars, mut bytes) = (self.chars, self.bytes);
        for (i, c) in piece.char_indices() {
            if chars + 1 > self.max_chars || bytes + c.len_utf8() > self.max_bytes {
                cut = Some(i);
                break;
            }
            chars += 1;
            bytes += c.len_utf8();
        }
        self.chars = chars;
        self.bytes = bytes;
        match cut {
            Some(i) => {
                piece.truncate(i);
                true
            }
            None => self.chars >= self.max_chars || self.bytes >= self.max_bytes,
        }
    }

    /// A usage report during the stream: true when the provider says it produced more than it was allowed.
    pub fn over_reported(&self, completion_tokens: u32) -> bool {
        completion_tokens > self.max_tokens
    }
}

/// Whether a provider's finish reason says it stopped at its token limit (OpenAI `length`, Anthropic
/// `max_tokens`).
pub fn is_length(finish_reason: Option<&str>) -> bool {
    matches!(finish_reason, Some("length" | "max_tokens"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_cut_at_the_first_cap_reached() {
        let mut cap = ReplyCap::new(2, 1000); // 10 characters
        let mut p = "hello".to_string();
        assert!(!cap.take(&mut p));
        assert_eq!(p, "hello");
        let mut p = "ça va bien".to_string();
        assert!(cap.take(&mut p));
        assert_eq!(p, "ça va");
        let mut bytes = ReplyCap::new(100, 4);
        let mut p = "aéé".to_string(); // 5 bytes: the second é does not fit whole
        assert!(bytes.take(&mut p));
        assert_eq!(p, "aé");
        let mut exact = ReplyCap::new(100, 3);
        let mut p = "abc".to_string();
        assert!(exact.take(&mut p), "a reply at its cap ends there");
        assert_eq!(p, "abc");
        assert!(cap.over_reported(3) && !cap.over_reported(2));
        assert!(is_length(Some("length")) && is_length(Some("max_tokens")) && !is_length(Some("stop")));
    }
}
