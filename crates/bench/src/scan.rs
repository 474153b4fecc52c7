//! Cheap classification of server frames.
//!
//! The hot path (a `message.new` or `ack` frame) is read by prefix scanning: the server writes the frame's
//! `type`, `channel_id` and `seq` first (`crates/gateway/src/frames.rs` tests this order), and the message text
//! is the first `"text":"` field. Anything that does not match the expected prefix falls back to a full JSON
//! parse, so a change of field order costs speed, never correctness.

use serde_json::Value;

/// Prefix of the text of every message the benchmark sends: `bm:<index>:<timestamp µs>`.
pub const TEXT_MARKER: &str = "bm:";

/// What a benchmark message carries: its index in the sender's sequence and the send timestamp
/// (microseconds since the benchmark's epoch; the scheduled time when sending at a fixed rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub idx: u64,
    pub ts_us: u64,
}

/// A classified server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `message.new` for the watched channel (`ours`) or another one.
    MessageNew { ours: bool, seq: u64, stamp: Option<Stamp> },
    /// `ack` of a `send`; `req_id` is present when it was a number.
    Ack { req_id: Option<u64>, seq: u64 },
    Error {
        req_id: Option<String>,
        code: String,
        message: String,
    },
    /// Any other frame (`presence`, `welcome`, `channel.*`, …).
    Other,
    /// Not a JSON object.
    Unparsable,
}

/// A `send` frame carrying a stamped text. Channel ids cannot contain `"` or `\`, so no escaping is needed.
pub fn send_frame(req_id: u64, channel_id: &str, idx: u64, ts_us: u64) -> String {
    format!(r#"{{"type":"send","req_id":"{req_id}","channel_id":"{channel_id}","text":"{TEXT_MARKER}{idx}:{ts_us}"}}"#)
}

/// Parses `bm:<idx>:<ts>` (the whole text, or the start of a JSON string value, which ends at `"`).
pub fn parse_stamp(text: &str) -> Option<Stamp> {
    let rest = text.strip_prefix(TEXT_MARKER)?;
    let (idx, n) = leading_u64(rest)?;
    let rest = rest[n..].strip_prefix(':')?;
    let (ts_us, m) = leading_u64(rest)?;
    match rest.as_bytes().get(m) {
        None | Some(b'"') => Some(Stamp { idx, ts_us }),
        _ => None,
    }
}

/// The decimal number at the start of `s` and how many bytes it took.
pub fn leading_u64(s: &str) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// The number right after the first occurrence of `key` (such as `"seq":`).
pub fn u64_after(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)? + key.len();
    leading_u64(&s[i..]).map(|(v, _)| v)
}

/// The frame's type from its leading `{"type":"…"`, without parsing.
pub fn frame_type(s: &str) -> Option<&str> {
    let rest = s.strip_prefix(r#"{"type":""#)?;
    rest.find('"').map(|end| &rest[..end])
}

/// Classifies frames for one watched channel.
pub struct Scanner {
    channel: String,
    /// `{"type":"message.new","channel_id":"<channel>","seq":`
    msg_prefix: String,
}

const ACK_PREFIX: &str = r#"{"type":"ack","#;
const TEXT_KEY: &str = r#""text":""#;

impl Scanner {
    pub fn new(channel: &str) -> Self {
        Scanner {
            channel: channel.to_string(),
            msg_prefix: format!(r#"{{"type":"message.new","channel_id":"{channel}","seq":"#),
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn classify(&self, frame: &str) -> Frame {
        if let Some(rest) = frame.strip_prefix(self.msg_prefix.as_str())
            && let Some((seq, n)) = leading_u64(rest)
            && rest.as_bytes().get(n) == Some(&b',')
        {
            let after = &rest[n..];
            if let Some(i) = after.find(TEXT_KEY) {
                let text = &after[i + TEXT_KEY.len()..];
                if !text.starts_with(TEXT_MARKER) {
                    return Frame::MessageNew {
                        ours: true,
                        seq,
                        stamp: None,
                    };
                }
                if let Some(stamp) = parse_stamp(text) {
                    return Frame::MessageNew {
                        ours: true,
                        seq,
                        stamp: Some(stamp),
                    };
                }
            }
            // Unusual shape: let the full parse decide.
        } else if let Some(rest) = frame.strip_prefix(ACK_PREFIX) {
            let req_id = rest
                .strip_prefix(r#""req_id":""#)
                .and_then(leading_u64)
                .filter(|(_, n)| rest.as_bytes().get(r#""req_id":""#.len() + n) == Some(&b'"'))
                .map(|(v, _)| v);
            if let Some(seq) = u64_after(rest, r#""seq":"#)
                && (req_id.is_some() || !rest.starts_with(r#""req_id""#))
            {
                return Frame::Ack { req_id, seq };
            }
        } else if let Some(t) = frame_type(frame)
            && t != "message.new"
            && t != "ack"
            && t != "error"
        {
            return Frame::Other;
        }
        self.classify_slow(frame)
    }

    /// Full JSON parse: the fallback for frames the prefix scan does not recognise.
    pub fn classify_slow(&self, frame: &str) -> Frame {
        let v: Value = match serde_json::from_str(frame) {
            Ok(v) => v,
            Err(_) => return Frame::Unparsable,
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        let seq = v.get("seq").and_then(Value::as_u64);
        match (kind, seq) {
            ("message.new", Some(seq)) => {
                let ours = v.get("channel_id").and_then(Value::as_str) == Some(self.channel.as_str());
                let stamp = v.pointer("/message/text").and_then(Value::as_str).and_then(parse_stamp);
                Frame::MessageNew { ours, seq, stamp }
            }
            ("ack", Some(seq)) => {
                let req_id = match v.get("req_id") {
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
                Frame::Ack { req_id, seq }
            }
            ("error", _) => Frame::Error {
                req_id: v.get("req_id").and_then(Value::as_str).map(str::to_string),
                code: v.get("code").and_then(Value::as_str).unwrap_or("").to_string(),
                message: v.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
            },
            _ => Frame::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_new(channel: &str, seq: u64, text: &str) -> String {
        format!(
            r#"{{"type":"message.new","channel_id":"{channel}","seq":{seq},"message":{{"id":7,"channel_id":"{channel}","seq":{seq},"sender_id":"u","type":"text","text":"{text}","custom_type":"","mentions":[],"reply_count":0,"created_at":1,"updated_at":1,"edited":false,"deleted":false}}}}"#
        )
    }

    #[test]
    fn numbers_and_types_by_prefix() {
        assert_eq!(leading_u64("123,"), Some((123, 3)));
        assert_eq!(leading_u64("x"), None);
        assert_eq!(leading_u64("99999999999999999999999"), None, "overflow");
        assert_eq!(u64_after(r#"{"a":1,"seq":42,"b":3}"#, r#""seq":"#), Some(42));
        assert_eq!(u64_after(r#"{"a":1}"#, r#""seq":"#), None);
        assert_eq!(frame_type(r#"{"type":"presence","user_id":"x"}"#), Some("presence"));
        assert_eq!(frame_type(r#"{ "type":"presence"}"#), None);
    }

    #[test]
    fn stamps_round_trip() {
        assert_eq!(
            parse_stamp("bm:5:1234567"),
            Some(Stamp {
                idx: 5,
                ts_us: 1_234_567
            })
        );
        assert_eq!(parse_stamp("bm:5:12\",\"x"), Some(Stamp { idx: 5, ts_us: 12 }));
        assert_eq!(parse_stamp("bm:5:12x"), None);
        assert_eq!(parse_stamp("bm:5"), None);
        assert_eq!(parse_stamp("hello"), None);
        let f: Value = serde_json::from_str(&send_frame(3, "b1-g", 2, 99)).unwrap();
        assert_eq!(f["type"], "send");
        assert_eq!(f["req_id"], "3");
        assert_eq!(f["channel_id"], "b1-g");
        assert_eq!(f["text"], "bm:2:99");
    }

    #[test]
    fn message_new_fast_path() {
        let s = Scanner::new("b1-g");
        let f = message_new("b1-g", 17, "bm:16:5000");
        assert_eq!(
            s.classify(&f),
            Frame::MessageNew {
                ours: true,
                seq: 17,
                stamp: Some(Stamp { idx: 16, ts_us: 5000 })
            }
        );
        // Same answer from the full parse.
        assert_eq!(s.classify(&f), s.classify_slow(&f));
        // A text that is not ours.
        assert_eq!(
            s.classify(&message_new("b1-g", 3, "hello")),
            Frame::MessageNew {
                ours: true,
                seq: 3,
                stamp: None
            }
        );
        // Another channel (also a channel whose id extends ours) goes through the full parse.
        for other in ["b1-h", "b1-g2"] {
            assert_eq!(
                s.classify(&message_new(other, 4, "bm:1:2")),
                Frame::MessageNew {
                    ours: false,
                    seq: 4,
                    stamp: Some(Stamp { idx: 1, ts_us: 2 })
                }
            );
        }
    }

    #[test]
    fn reordered_fields_fall_back_to_full_parse() {
        let s = Scanner::new("g");
        let f = r#"{"seq":9,"type":"message.new","message":{"text":"bm:8:77","seq":9},"channel_id":"g"}"#;
        assert_eq!(
            s.classify(f),
            Frame::MessageNew {
                ours: true,
                seq: 9,
                stamp: Some(Stamp { idx: 8, ts_us: 77 })
            }
        );
    }

    #[test]
    fn acks_errors_and_others() {
        let s = Scanner::new("g");
        let ack = r#"{"type":"ack","req_id":"12","channel_id":"g","seq":5,"message_id":9,"duplicate":false,"message":{"seq":5}}"#;
        assert_eq!(
            s.classify(ack),
            Frame::Ack {
                req_id: Some(12),
                seq: 5
            }
        );
        assert_eq!(s.classify(ack), s.classify_slow(ack));
        let ack_no_req = r#"{"type":"ack","channel_id":"g","seq":6,"message_id":9,"duplicate":false}"#;
        assert_eq!(s.classify(ack_no_req), Frame::Ack { req_id: None, seq: 6 });
        let err = r#"{"type":"error","req_id":"4","code":"rate_limited","message":"slow down","retry_after_ms":50}"#;
        assert_eq!(
            s.classify(err),
            Frame::Error {
                req_id: Some("4".into()),
                code: "rate_limited".into(),
                message: "slow down".into()
            }
        );
        assert_eq!(
            s.classify(r#"{"type":"presence","user_id":"u","online":true}"#),
            Frame::Other
        );
        assert_eq!(s.classify("not json"), Frame::Unparsable);
    }
}
