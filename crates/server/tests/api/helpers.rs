//! Test harness: a real server on a random loopback port, an HTTP client and a WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use confab::{App, Config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
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

/// Asserts that no text frame arrives within `wait`.
pub async fn assert_silent(ws: &mut Ws, wait: Duration) {
    if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(wait, ws.next()).await {
        panic!("unexpected frame {t}");
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
