//! The accept loop and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::engine::Runtime;
use crate::http::{self, App};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::room::{Event, Settings};
use crate::tls::Tls;

/// How long shutdown waits for clients to receive their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then closes every WebSocket with 1001
/// and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = config.tls.as_ref().map(Tls::new).transpose()?;
    let map_count = crate::config::max_map_count();
    let allowed = crate::config::instances_the_map_count_allows(map_count);
    if config.max_instances > allowed {
        warn!(
            max_instances = config.max_instances,
            max_map_count = map_count,
            "--max-instances is more than vm.max_map_count leaves room for (about {allowed} \
             instances): past that, rooms fail to start and the process cannot map memory; raise \
             it with sysctl -w vm.max_map_count={}",
            crate::config::map_count_for_instances(config.max_instances)
        );
    }
    match crate::config::raise_open_files_limit() {
        Ok(Some(files)) if crate::config::files_for_connections(config.max_connections) > files => {
            warn!(
                max_connections = config.max_connections,
                open_files_limit = files,
                "--max-connections is more than the open-files limit leaves room for ({} \
                 connections, each WebSocket and each HTTP connection being served a file): past \
                 that, new connections wait unaccepted instead of being refused; raise the hard \
                 limit (ulimit -Hn, or LimitNOFILE= in a systemd unit) to {}",
                crate::config::connections_the_files_allow(Some(files)),
                crate::config::files_for_connections(config.max_connections)
            );
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise the open-files limit to its hard limit"),
    }
    let runtime = Runtime::new(&config)?;
    let metrics = Arc::new(Metrics::default());
    reload_on_sighup(runtime.clone(), tls.clone(), metrics.clone());
    let registry = Registry::new(
        runtime,
        config.room_config.clone(),
        Settings {
            inbox: config.room_inbox,
            inbox_bytes: config.room_inbox_bytes,
            hibernate_after: config.hibernate_after,
            alarm_retries: config.alarm_retries,
            alarm_retry_base: config.alarm_retry_base,
            storage_bytes: config.room_storage_bytes,
            log_lines_per_sec: config.room_log_lines_per_sec,
            max_clients: config.max_project_connections,
        },
        metrics.clone(),
        config.max_rooms,
        config.max_instances,
    );
    let limit = Arc::new(Semaphore::new(crate::config::http_connections(
        config.max_connections,
    )));
    let websockets = Arc::new(Semaphore::new(config.max_connections));
    let app = Arc::new(App {
        registry: registry.clone(),
        config: Arc::new(config),
        metrics,
        tracker: TaskTracker::new(),
        websockets,
        started: Instant::now(),
        warnings: Default::default(),
    });
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // The readiness line: tests and scripts wait for it.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("wsroom listening on {scheme}://{addr}");
    info!(%addr, "listening");
    if app.config.auth.is_none() {
        warn!(
            "no --auth-secret: anyone who can reach this server and knows a projectId may join it, \
             as admin too"
        );
    }

    tokio::pin!(shutdown);
    let accept_failures = crate::room::log_limit::Throttle::new(1);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    if let Some(skipped) = accept_failures.admit() {
                        warn!(error = %e, skipped, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.as_ref().map(Tls::acceptor);
        // A client gets this long for its TLS handshake, then for its
        // request headers.
        let handshake_timeout = app.config.handshake_timeout;
        tokio::spawn(async move {
            let service = service_fn(move |req| http::route(app.clone(), req));
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout);
            let served = match tls {
                None => {
                    http.serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await
                }
                Some(tls) => {
                    let handshake = tokio::time::timeout(handshake_timeout, tls.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            http.serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "tls handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
            drop(permit);
        });
    }

    info!("shutting down: closing every connection with 1001");
    drop(listener);
    for room in registry.all() {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, room.send(Event::Shutdown)).await;
    }
    app.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, app.tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close in time");
    }
    Ok(())
}

/// On SIGHUP, compiles the room components again from their files (rooms
/// switch to the new code at their next event, and no connection is
/// dropped) and reads the TLS certificate files again (for new
/// connections). What fails to load is logged, and the old one stays.
fn reload_on_sighup(runtime: Runtime, tls: Option<Tls>, metrics: Arc<Metrics>) {
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
                    (components, certificate.unwrap_or(true))
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
    let _ = (runtime, tls, metrics);
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
