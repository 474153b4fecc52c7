//! This node among several sharing one database: its id (configured, or generated once and kept in the data
//! dir), and the upkeep that tells the others it is alive and ends the replies of nodes that died.

use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use confab_domain::now_millis;
use confab_domain::ports::DynStore;
use confab_service::Confab;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;

/// Where a generated node id is kept, in the data dir.
pub const FILE_NAME: &str = "node_id";

/// The configured id, else the one kept in the data dir, else a new one (kept there for the next start).
pub fn resolve(config: &ClusterConfig, data_dir: &Path) -> anyhow::Result<String> {
    if !config.node_id.is_empty() {
        return check(&config.node_id).map(|()| config.node_id.clone());
    }
    let path = data_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(kept) => {
            let kept = kept.trim().to_string();
            check(&kept).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(kept);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    let id = format!("node-{:016x}", rand::random::<u64>());
    std::fs::write(&path, format!("{id}\n")).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

fn check(id: &str) -> anyhow::Result<()> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    anyhow::ensure!(ok, "cluster.node_id {id:?}: use 1 to 64 letters, digits, '-' or '_'");
    Ok(())
}

/// Says this node is alive once now (before it serves), then every `heartbeat_secs`, each time also ending
/// the generating replies of nodes silent for `node_silent_after_secs`, announcing offline the users whose
/// sessions were all on those nodes, telling the store what it missed of this node's sessions, and
/// forgetting expired leases (and claims). Until `shutdown`.
pub async fn start_upkeep(
    store: DynStore,
    service: Weak<Confab>,
    config: &ClusterConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    store
        .heartbeat(now_millis())
        .await
        .map_err(|e| anyhow::anyhow!("recording this node's heartbeat: {e}"))?;
    let every = Duration::from_secs(config.heartbeat_secs.max(1));
    let silent_after = i64::try_from(config.node_silent_after_secs.max(1) * 1000).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_millis();
            if let Err(e) = store.heartbeat(now).await {
                tracing::warn!(error = %e, "cannot record this node's heartbeat");
            }
            if let Some(service) = service.upgrade() {
                service.reconcile_presence().await;
            }
            if let Err(e) = store.prune_leases(now).await {
                tracing::warn!(error = %e, "cannot forget expired leases");
            }
            match store.sweep_silent_nodes(now.saturating_sub(silent_after)).await {
                Ok(swept) => {
                    if swept.replies > 0 {
                        tracing::warn!(
                            replies = swept.replies,
                            "ended the replies of a node that stopped as interrupted"
                        );
                    }
                    if !swept.offline.is_empty()
                        && let Some(service) = service.upgrade()
                    {
                        tracing::info!(users = swept.offline.len(), "users of a node that stopped are offline");
                        service.announce_offline(&swept.offline).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot sweep silent nodes"),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_id_is_kept_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = ClusterConfig::default();
        let first = resolve(&config, dir.path()).unwrap();
        assert!(first.starts_with("node-"), "{first}");
        assert_eq!(resolve(&config, dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(resolve(&config, other.path()).unwrap(), first);
    }

    #[test]
    fn a_configured_id_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ClusterConfig {
            node_id: "eu-1".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(resolve(&config, dir.path()).unwrap(), "eu-1");
        config.node_id = "no spaces".into();
        let err = resolve(&config, dir.path()).unwrap_err().to_string();
        assert!(err.contains("cluster.node_id"), "{err}");
    }
}
