//! The process's signals: SIGINT and SIGTERM shut the server down
//! gracefully; SIGHUP reloads the room components, the TLS certificate and
//! the keys that verify tokens.

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::auth::Auth;
use crate::engine::Runtime;
use crate::metrics::Metrics;
use crate::tls::Tls;

/// On SIGHUP, compiles the room components again from their files (rooms
/// switch to the new code at their next event, and no connection is
/// dropped) and reads the TLS certificate files again (for new
/// connections), and the token secret file and public keys (for new
/// connections and requests; open WebSockets stay). What fails to load is
/// logged, and the old one stays.
pub(crate) fn reload_on_sighup(
    runtime: Runtime,
    tls: Option<Tls>,
    auth: Option<Arc<Auth>>,
    metrics: Arc<Metrics>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP: reloading is off");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                info!("SIGHUP: reloading the room components");
                let runtime = runtime.clone();
                let tls = tls.clone();
                let auth = auth.clone();
                // Compiling takes a while: keep it off the async workers.
                let result = tokio::task::spawn_blocking(move || {
                    let components = runtime.reload();
                    let certificate = tls.map(|tls| match tls.reload() {
                        Ok(Some(path)) => {
                            info!(certificate = %path.display(), "TLS certificate reloaded for new connections");
                            true
                        }
                        Ok(None) => true,
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "cannot reload the TLS certificate; the current one stays");
                            false
                        }
                    });
                    let keys = auth.map(|auth| match auth.reload() {
                        Ok(true) => {
                            info!("token keys reloaded for new connections and requests");
                            true
                        }
                        Ok(false) => true,
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "cannot reload the token keys; the current ones stay");
                            false
                        }
                    });
                    (components, certificate.unwrap_or(true) && keys.unwrap_or(true))
                })
                .await;
                match result {
                    Ok((Ok(version), certificate)) => {
                        metrics.reloaded(certificate);
                        info!(
                            version,
                            "room components reloaded; rooms switch at their next event"
                        );
                    }
                    Ok((Err(e), _)) => {
                        error!(error = %format!("{e:#}"), "reload failed; the running components stay");
                        metrics.reloaded(false);
                    }
                    Err(e) => {
                        error!(error = %e, "reload failed; the running components stay");
                        metrics.reloaded(false);
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (runtime, tls, auth, metrics);
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A file over the process's size limit (`ulimit -f`) makes the write fail
/// with an error the store handles, like a full disk, instead of killing
/// the process (SIGXFSZ's default): a tokio handler replaces that default.
pub(crate) fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw())) {
            Ok(mut xfsz) => {
                tokio::spawn(async move { while xfsz.recv().await.is_some() {} });
            }
            Err(e) => {
                warn!(error = %e, "cannot catch SIGXFSZ: a file size limit would stop the server")
            }
        }
    }
}
