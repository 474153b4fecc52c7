//! Where and as whom a node joins NATS, what can go wrong when it does, and the subjects of a deployment.

use std::time::Duration;

use confab_domain::{ChannelId, Event};

/// Where and as whom a node joins the others.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `nats://host:port` (or `tls://`), several separated by commas; may carry `user:password@`, which is
    /// never logged nor put in an error.
    pub url: String,
    /// The first token(s) of every subject: nodes of one deployment share it, deployments sharing a NATS
    /// server do not. Default `confab`.
    pub subject_prefix: String,
    /// This node's name, unique among the nodes (a node ignores messages carrying its own id): printable
    /// ASCII without spaces or `:`, at most 64 characters. [`NatsConfig::new`] makes a random one.
    pub node_id: String,
    /// The longest wait for the first connection (and its subscription) before `connect` fails.
    pub connect_timeout: Duration,
}

impl NatsConfig {
    pub const DEFAULT_PREFIX: &'static str = "confab";

    /// A configuration for `url` with the default prefix, a random node id and a 5 s connect timeout.
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            subject_prefix: Self::DEFAULT_PREFIX.to_string(),
            node_id: format!("node-{:016x}", rand::random::<u64>()),
            connect_timeout: Duration::from_secs(5),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), NatsBusError> {
        let id = &self.node_id;
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic() && c != ':') {
            return Err(NatsBusError::Config(
                "node_id must be 1 to 64 printable ASCII characters without spaces or ':'".into(),
            ));
        }
        let prefix = &self.subject_prefix;
        let token_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '*' | '>'));
        if prefix.len() > 100 || !prefix.split('.').all(token_ok) {
            return Err(NatsBusError::Config(format!(
                "subject_prefix {prefix:?} is not a NATS subject prefix (dot-separated tokens of printable ASCII \
                 without '*' or '>')"
            )));
        }
        Ok(())
    }
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig::new("nats://127.0.0.1:4222")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsBusError {
    #[error("NATS bus configuration: {0}")]
    Config(String),
    /// The first connection failed. `addr` lists the servers as `host:port` (never credentials).
    #[error("cannot connect to NATS at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("NATS at {addr} did not confirm this node's subscription: {reason}")]
    Subscribe { addr: String, reason: String },
}

/// The subjects of a deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Subjects {
    pub(crate) prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    /// Where an event is published: its channel's subject, or [`Subjects::all`] for an event of no channel.
    pub fn of(&self, event: &Event) -> String {
        if event.is_membership() || matches!(event, Event::ReplyStopRequested { .. }) {
            return self.all();
        }
        match event.channel_id() {
            Some(c) => self.channel(c),
            None => self.all(),
        }
    }

    /// `{prefix}.ch.{token}`: the token is the channel id in lowercase hex, a single subject token whatever
    /// the id holds.
    pub fn channel(&self, channel: &ChannelId) -> String {
        format!("{}.ch.{}", self.prefix, hex::encode(channel.as_str()))
    }

    /// `{prefix}.all`: events of no channel (users, presence, bots, session revocations, resync notices).
    pub fn all(&self) -> String {
        format!("{}.all", self.prefix)
    }

    /// `{prefix}.node.{hex of the node id}`: a node's probes (see the crate documentation).
    pub fn node(&self, node_id: &str) -> String {
        format!("{}.node.{}", self.prefix, hex::encode(node_id))
    }

    /// What a node always subscribes to: [`Subjects::all`] and its own [`Subjects::node`]; the
    /// [`Subjects::channel`] of each followed channel comes and goes with the node's sessions.
    pub fn interest(&self, node_id: &str) -> Vec<String> {
        vec![self.all(), self.node(node_id)]
    }
}

/// The servers `url` names (comma-separated), and them as `host:port` for messages (never credentials).
pub(crate) fn servers(url: &str) -> Result<(Vec<async_nats::ServerAddr>, String), NatsBusError> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| NatsBusError::Config(format!("url: {e}")))?;
    if servers.is_empty() {
        return Err(NatsBusError::Config("url names no server".into()));
    }
    let addr = servers
        .iter()
        .map(|s| format!("{}:{}", s.host(), s.port()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((servers, addr))
}

/// Whether the NATS server at `url` (a comma-separated list is tried in order) accepts a connection and
/// answers a round trip, within `timeout`; `confab check-config` asks before a start would wait for it.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), NatsBusError> {
    let (servers, addr) = servers(url)?;
    let unreachable = |reason: String| NatsBusError::Unreachable {
        addr: addr.clone(),
        reason,
    };
    let attempt = async {
        let client = async_nats::ConnectOptions::new()
            .name("confab check-config")
            .connection_timeout(timeout)
            .connect(servers.clone())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        client.flush().await.map_err(|e| unreachable(e.to_string()))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("no answer within {} s", timeout.as_secs()))))
}
