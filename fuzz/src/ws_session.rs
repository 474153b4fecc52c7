//! `ws_session`: one WebSocket session of alice, run by the gateway's real session code over an in-memory
//! socket, fed a sequence of client frames (one per input line; a first byte 0x01..0x05 makes the line a
//! binary frame, a close, a ping, a pong or a transport error; otherwise it is a text frame). After the
//! input the client sends a last `ping` and closes once its `pong` arrives, so every earlier reply is in.
//!
//! Checked beyond "no panic": the session ends; a first frame that is not a text `hello` gets one error and
//! close 1002; otherwise a `welcome` comes first, every request gets the replies the protocol gives it (one
//! `ack` or `error` per send, one `pong` per ping, one error per malformed frame, at most one error for
//! typing, read and stop), in request order, matched by `req_id`; a binary frame closes with 1002 and an
//! oversized one with 1009.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use confab_gateway::frames::ClientFrame;
use confab_gateway::session;
use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::fixture::fixture;

const END: &str = "fuzz-end-of-input";

/// A client frame of the input.
enum Input {
    Msg(Message),
    /// A frame over the size limit: the library refuses it with a capacity error, as in production.
    TooBig,
    /// A read error of the connection (the peer vanished).
    Broken,
}

fn parse(data: &[u8], max_bytes: usize) -> Vec<Input> {
    data.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (kind, rest) = (line[0], &line[1..]);
            match kind {
                1 => Input::Msg(Message::Binary(rest.to_vec().into())),
                2 => Input::Msg(Message::Close(None)),
                3 => Input::Msg(Message::Ping(rest.to_vec().into())),
                4 => Input::Msg(Message::Pong(rest.to_vec().into())),
                5 => Input::Broken,
                _ if line.len() > max_bytes => Input::TooBig,
                // The library refuses invalid UTF-8 in text frames before the session sees them.
                _ => Input::Msg(Message::Text(String::from_utf8_lossy(line).replace(END, "").into())),
            }
        })
        .collect()
}

/// The client's end of the connection: yields the input, then the final ping, then waits for its pong.
struct MemSocket {
    incoming: VecDeque<Result<Message, axum::Error>>,
    end_sent: bool,
    end_seen: bool,
    closed: bool,
    out: Vec<Message>,
    waker: Option<Waker>,
}

impl Stream for MemSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(m) = self.incoming.pop_front() {
            return Poll::Ready(Some(m));
        }
        if !self.end_sent {
            self.end_sent = true;
            let ping = format!(r#"{{"type":"ping","req_id":"{END}"}}"#);
            return Poll::Ready(Some(Ok(Message::Text(ping.into()))));
        }
        if self.end_seen || self.closed {
            return Poll::Ready(None);
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Sink<Message> for MemSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, m: Message) -> Result<(), axum::Error> {
        assert!(!self.closed, "a frame after the close: {m:?}");
        match &m {
            Message::Close(_) => self.closed = true,
            Message::Text(t) if t.contains(END) => {
                let v: Value = serde_json::from_str(t).expect("server frames are JSON");
                if v["type"] == "pong" && v["req_id"] == END {
                    self.end_seen = true;
                }
            }
            _ => {}
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        self.out.push(m);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// What a request may get back: its reply kinds and `req_id`, and whether one reply is owed.
struct Expect {
    kinds: &'static [&'static str],
    req_id: Option<String>,
    required: bool,
}

fn expect(frame: &Result<ClientFrame, serde_json::Error>) -> Expect {
    let e = |kinds, req_id: &Option<String>, required| Expect {
        kinds,
        req_id: req_id.clone(),
        required,
    };
    match frame {
        Err(_) => e(&["error"], &None, true),
        Ok(ClientFrame::Hello { .. }) => e(&["error"], &None, true),
        Ok(ClientFrame::Send { req_id, .. }) => e(&["ack", "error"], req_id, true),
        Ok(ClientFrame::Ping { req_id }) => e(&["pong"], req_id, true),
        Ok(ClientFrame::Stop { req_id, .. }) => e(&["error"], req_id, false),
        Ok(ClientFrame::Typing { .. } | ClientFrame::Read { .. }) => e(&["error"], &None, false),
    }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(CloseFrame { code, .. })) => Some(*code),
        Message::Close(None) => Some(0),
        _ => None,
    }
}

pub fn run(data: &[u8]) {
    let fx = fixture();
    let inputs = parse(data, fx.gateway.max_message_bytes);
    // What the client sent, up to the frame that ends the session (if any), and how it should end.
    let mut requests: Vec<Expect> = Vec::new();
    let mut ending: Option<Option<u16>> = None;
    let mut first = First::Other; // with no input, the final ping comes first
    let mut incoming = VecDeque::new();
    for (i, input) in inputs.into_iter().enumerate() {
        if i == 0 {
            first = match &input {
                Input::Msg(Message::Text(t)) if matches!(serde_json::from_str(t), Ok(ClientFrame::Hello { .. })) => {
                    First::Hello
                }
                Input::Msg(_) => First::Other,
                Input::TooBig | Input::Broken => First::Gone,
            };
        } else if ending.is_none() {
            match &input {
                Input::Msg(Message::Text(t)) => requests.push(expect(&serde_json::from_str(t))),
                Input::Msg(Message::Binary(_)) => ending = Some(Some(session::close::PROTOCOL)),
                Input::Msg(Message::Close(_)) | Input::Broken => ending = Some(None),
                Input::Msg(_) => {}
                Input::TooBig => ending = Some(Some(session::close::TOO_BIG)),
            }
        }
        incoming.push_back(match input {
            Input::Msg(m) => Ok(m),
            Input::TooBig => Err(axum::Error::new(tungstenite::Error::Capacity(
                tungstenite::error::CapacityError::MessageTooLong {
                    size: fx.gateway.max_message_bytes + 1,
                    max_size: fx.gateway.max_message_bytes,
                },
            ))),
            Input::Broken => Err(axum::Error::new(std::io::Error::other("connection reset"))),
        });
    }
    let socket = MemSocket {
        incoming,
        end_sent: false,
        end_seen: false,
        closed: false,
        out: Vec::new(),
        waker: None,
    };
    let out = fx.rt.block_on(async {
        let mut socket = socket;
        let run = session::run(fx.hub.clone(), fx.alice.clone(), &mut socket, CancellationToken::new());
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the session ends once its client has closed");
        socket.out
    });
    check(first, &requests, ending, &out);
}

/// What the first frame was.
enum First {
    Hello,
    Other,
    Gone,
}

fn check(first: First, requests: &[Expect], ending: Option<Option<u16>>, out: &[Message]) {
    let frames: Vec<Value> = out
        .iter()
        .filter_map(|m| match m {
            Message::Text(t) => Some(serde_json::from_str(t).expect("server frames are JSON")),
            _ => None,
        })
        .collect();
    let close = out.iter().find_map(close_code);
    match first {
        First::Hello => {}
        First::Other => {
            assert_eq!(frames.len(), 1, "{out:?}");
            assert_eq!(frames[0]["type"], "error", "{out:?}");
            assert_eq!(close, Some(session::close::PROTOCOL), "{out:?}");
            return;
        }
        First::Gone => {
            assert!(out.is_empty(), "{out:?}");
            return;
        }
    }
    assert_eq!(
        frames.first().map(|f| &f["type"]),
        Some(&Value::from("welcome")),
        "{out:?}"
    );
    // Replies, in order, without the final pong; errors of a resume come before `resumed`.
    let start = frames.iter().position(|f| f["type"] == "resumed").map_or(1, |i| i + 1);
    let replies: Vec<&Value> = frames[start..]
        .iter()
        .filter(|f| matches!(f["type"].as_str(), Some("ack" | "error" | "pong")))
        .filter(|f| f["req_id"] != END)
        .collect();
    // Each request gives at most one reply, in request order, and every one that owes a reply got it, unless
    // the session ended early (then pending requests go with the connection).
    let complete = ending.is_none();
    let replies: Vec<(&str, Option<&str>)> = replies
        .iter()
        .map(|r| (r["type"].as_str().unwrap(), r["req_id"].as_str()))
        .collect();
    assert!(
        in_order(&replies, requests, complete),
        "replies {replies:?} do not answer the requests in order"
    );
    if complete {
        assert_eq!(close, None, "the client closed first: {out:?}");
        assert!(frames.iter().any(|f| f["req_id"] == END), "no final pong: {out:?}");
    } else {
        assert_eq!(close, ending.flatten(), "{out:?}");
    }
}

/// Whether `replies` can be assigned to `requests` in order, one at most per request, each to a request that
/// may give it, leaving out only requests that owe none (or any, when `complete` is false).
fn in_order(replies: &[(&str, Option<&str>)], requests: &[Expect], complete: bool) -> bool {
    let skippable = |e: &Expect| !e.required || !complete;
    // can[j]: the replies so far can be assigned within the first j requests.
    let mut can = vec![false; requests.len() + 1];
    can[0] = true;
    for j in 1..=requests.len() {
        can[j] = can[j - 1] && skippable(&requests[j - 1]);
    }
    for (kind, req_id) in replies {
        let mut next = vec![false; requests.len() + 1];
        for j in 1..=requests.len() {
            let e = &requests[j - 1];
            let gives = e.kinds.contains(kind) && e.req_id.as_deref() == *req_id;
            next[j] = (next[j - 1] && skippable(e)) || (can[j - 1] && gives);
        }
        can = next;
    }
    can[requests.len()]
}
