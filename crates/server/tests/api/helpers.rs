//! Test harness: a real server on a random loopback port, an HTTP client and a WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use confab::{App, Config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod skip;
pub use skip::skip_unless_required;

pub const MASTER: &str = "test-master-token-0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server in-process on port 0 with a fresh data dir; `tweak` adjusts the configuration.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    // Tests opt in to the built-in model (tests/api/builtin.rs): loading it takes a while.
    config.builtin.enabled = false;
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App::build(config, MASTER).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        app.run(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        addr,
        http: reqwest::Client::new(),
        _dir: dir,
        stop: Some(stop),
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, MASTER, body).await
    }

    /// Creates a user and returns a session token for it.
    pub async fn user(&self, id: &str) -> String {
        let (s, v) = self.admin("POST", "/api/v1/users", Some(json!({"id": id}))).await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = self.admin("POST", &format!("/api/v1/users/{id}/sessions"), None).await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    pub async fn group(&self, id: &str, members: &[&str]) {
        let (s, v) = self
            .admin(
                "POST",
                "/api/v1/channels",
                Some(json!({"kind": "group", "id": id, "user_ids": members})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }

    pub async fn send_as(&self, token: &str, channel: &str, text: &str) -> Value {
        let (s, v) = self
            .call(
                "POST",
                &format!("/api/v1/channels/{channel}/messages"),
                token,
                Some(json!({"text": text})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Opens (or finds) the direct channel of the token's user with `other`; returns its id.
    pub async fn direct_with(&self, token: &str, other: &str) -> String {
        let (s, ch) = self
            .call(
                "POST",
                "/api/v1/channels",
                token,
                Some(json!({"kind": "direct", "user_ids": [other]})),
            )
            .await;
        assert!(s == 201 || s == 200, "{s} {ch}");
        ch["id"].as_str().unwrap().to_string()
    }

    /// Connects a WebSocket and completes the hello/welcome exchange.
    pub async fn ws(&self, token: &str, resume: Value) -> Ws {
        let url = format!("ws://{}/api/v1/ws?token={}", self.addr, token);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        send_json(&mut ws, json!({"type": "hello", "resume": resume})).await;
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next text frame as JSON (pings and pongs skipped); panics after 10 s.
pub async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, Duration::from_secs(10)).await
}

/// [`next_json`] with the given wait (a real model can take a while between frames).
pub async fn next_json_within(ws: &mut Ws, wait: Duration) -> Value {
    loop {
        let msg = tokio::time::timeout(wait, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket closed")
            .expect("socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Skips frames until one of the given type arrives.
pub async fn next_of_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
}

/// Reads frames until `bot`'s reply to `trigger` is final; fails on any message of a bot in `silent` and
/// on any reply to a message in `unanswered`.
pub async fn reply_to(ws: &mut Ws, bot: &str, trigger: i64, silent: &[&str], unanswered: &[i64]) -> Value {
    loop {
        let f = next_json(ws).await;
        let m = &f["message"];
        if let Some(sender) = m["sender_id"].as_str() {
            assert!(!silent.contains(&sender), "{sender} spoke: {f}");
        }
        if let Some(t) = m["reply"]["trigger_id"].as_i64() {
            assert!(!unanswered.contains(&t), "message {t} was answered: {f}");
        }
        if f["type"] == "message.updated"
            && m["sender_id"] == bot
            && m["reply"]["trigger_id"] == trigger
            && m["reply"]["state"] != "generating"
        {
            return m.clone();
        }
    }
}

/// Waits for the close frame and returns its code.
pub async fn close_code(ws: &mut Ws, wait: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code.into()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
            Err(_) => panic!("no close frame within {wait:?}"),
        }
    }
}

/// A bot reply as a client saw it after its `message.new` (`generating`): the deltas joined (checked to
/// arrive in order), and its final `message.updated`.
pub struct StreamedReply {
    pub streamed: String,
    pub deltas: usize,
    /// When the first delta arrived.
    pub first_delta: Option<std::time::Instant>,
    pub fin: Value,
}

/// Follows the next reply of `bot` on `ws` to its final state, waiting up to `wait` for each frame.
pub async fn follow_streamed_reply(ws: &mut Ws, bot: &str, wait: Duration) -> StreamedReply {
    let created = loop {
        let f = next_json_within(ws, wait).await;
        if f["type"] == "message.new" && f["message"]["sender_id"] == bot {
            break f;
        }
    };
    assert_eq!(created["message"]["reply"]["state"], "generating", "{created}");
    let id = created["message"]["id"].as_i64().unwrap();
    let (mut streamed, mut deltas, mut first_delta) = (String::new(), 0, None);
    let fin = loop {
        let f = next_json_within(ws, wait).await;
        match f["type"].as_str().unwrap() {
            "message.delta" if f["message_id"] == id => {
                assert_eq!(
                    f["offset"].as_u64().unwrap() as usize,
                    streamed.len(),
                    "deltas arrive in order"
                );
                streamed.push_str(f["delta"].as_str().unwrap());
                deltas += 1;
                first_delta.get_or_insert_with(std::time::Instant::now);
            }
            "message.updated" if f["message"]["id"] == id && f["message"]["reply"]["state"] != "generating" => {
                break f["message"].clone();
            }
            _ => {}
        }
    };
    StreamedReply {
        streamed,
        deltas,
        first_delta,
        fin,
    }
}

/// The newest delivery attempt of webhook endpoint `id`, once there is one (bounded wait). The relay records
/// an attempt only after its request ended.
pub async fn newest_attempt(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = app
            .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}/attempts"), None)
            .await;
        if let Some(a) = v["attempts"].as_array().and_then(|a| a.first()) {
            return a.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt to {id}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `path` answers `status`.
pub async fn wait_status(app: &TestApp, path: &str, status: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        if r.status() == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
