//! Upload upkeep around the service: partial uploads of a previous run removed before serving, and the
//! background sweeper of files no message carries.

use std::sync::Arc;

use anyhow::Context;
use confab_service::Confab;
use tokio_util::sync::CancellationToken;

pub async fn start(service: &Arc<Confab>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let removed = service
        .clean_upload_tmp()
        .await
        .context("cleaning the temporary upload directory")?;
    if removed > 0 {
        tracing::info!(removed, "removed partial uploads left by the previous run");
    }
    let every = service.upload_limits().sweep_interval();
    let weak = Arc::downgrade(service);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(service) = weak.upgrade() else { break };
            match service.sweep_unattached_files().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed uploads no message carries"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep unattached uploads"),
            }
        }
    });
    Ok(())
}
