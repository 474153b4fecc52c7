//! Opening authenticated WebSocket sessions: TCP connect (optionally from a chosen loopback source address),
//! upgrade, `hello`, and wait for `welcome`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::scan::frame_type;
use crate::util::{Target, percent_encode};

pub type Ws = WebSocketStream<TcpStream>;

/// How long the upgrade plus hello/welcome exchange may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// At most this many handshakes at a time.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 100;

/// Buffers for a connection that mostly reads small frames: a small eagerly allocated read buffer.
pub fn receiver_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// For idle connections: as little memory as possible.
pub fn idle_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// For a sender: writes are buffered until a flush, so fed frames go out together.
pub fn sender_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(256 * 1024)
}

/// Opens a session and completes the hello/welcome exchange.
pub async fn open(target: &Target, token: &str, source: Option<IpAddr>, config: WebSocketConfig) -> Result<Ws> {
    open_with_hello(target, token, source, config, r#"{"type":"hello"}"#).await
}

/// [`open`] with the given `hello` frame (e.g. one with `resume`); returns once the `welcome` is read.
pub async fn open_with_hello(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    config: WebSocketConfig,
    hello: &str,
) -> Result<Ws> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, open_inner(target, token, source, config, hello))
        .await
        .map_err(|_| anyhow!("WebSocket handshake and hello/welcome took longer than {HANDSHAKE_TIMEOUT:?}"))?
}

/// Like [`open`], but waits for one of `permits` first, so only so many handshakes run at once.
pub async fn open_limited(
    permits: &Arc<Semaphore>,
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    config: WebSocketConfig,
) -> Result<Ws> {
    let _permit = permits.acquire().await.context("handshake limiter closed")?;
    open(target, token, source, config).await
}

async fn open_inner(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    config: WebSocketConfig,
    hello: &str,
) -> Result<Ws> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating a socket (out of file descriptors?)")?;
    if let Some(ip) = source {
        bind_address_no_port(&socket);
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to source address {ip}"))?;
    }
    let tcp = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    tcp.set_nodelay(true)?;
    let url = format!("{}/api/v1/ws?token={}", target.ws_base, percent_encode(token));
    let (mut ws, _) = client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                anyhow!("WebSocket upgrade refused: HTTP {} {body}", resp.status())
            }
            other => anyhow!("WebSocket upgrade failed: {other}"),
        })?;
    ws.send(Message::text(hello)).await.context("sending hello")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return match frame_type(&t) {
                    Some("welcome") => Ok(ws),
                    _ => Err(anyhow!("expected a welcome frame after hello, got {}", t.as_str())),
                };
            }
            Some(Ok(Message::Close(f))) => {
                bail!("server closed the session during hello: {}", describe_close(f.as_ref()))
            }
            Some(Ok(_)) => continue, // ping/pong
            Some(Err(e)) => bail!("reading welcome: {e}"),
            None => bail!("connection ended before welcome"),
        }
    }
}

/// Lets `connect` pick the source port (by the full 4-tuple, skipping ports in TIME_WAIT) instead of `bind`
/// searching for a port free on every destination, which is slow once many ports are in use. Best effort.
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `code 4008 "outbound queue overflow; resume"`
pub fn describe_close(f: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match f {
        Some(f) => format!("close code {} {:?}", u16::from(f.code), f.reason.as_str()),
        None => "close without code".to_string(),
    }
}
