//! Command-line flags (each with an environment variable) and the typed
//! configuration the rest of the host reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Self-hosted Durable-Object-style WebSocket rooms: one WebAssembly
/// component instance per project.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "WSROOM_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// PEM certificate chain for TLS: with --tls-key, the server speaks
    /// https and wss only.
    #[arg(long, env = "WSROOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WSROOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Room component to run instead of the embedded default room. It must
    /// implement the `wsroom:room/room` world of wit/room.wit.
    #[arg(long, env = "WSROOM_COMPONENT")]
    pub component: Option<PathBuf>,

    /// Delay before an empty room is removed, in milliseconds (passed to the
    /// room as config `cleanup-delay-ms`).
    #[arg(long, env = "WSROOM_CLEANUP_DELAY_MS", default_value_t = 300_000)]
    pub cleanup_delay_ms: u64,

    /// Extra configuration for the room, as key=value; repeatable. The room
    /// reads it with the `config` import.
    #[arg(long = "room-config", env = "WSROOM_ROOM_CONFIG", value_delimiter = ',', value_parser = parse_key_value)]
    pub room_config: Vec<(String, String)>,

    /// CPU time one call into a room may use before it is stopped and the
    /// room is reset, in milliseconds.
    #[arg(long, env = "WSROOM_CPU_BUDGET_MS", default_value_t = 30_000)]
    pub cpu_budget_ms: u64,

    /// Linear-memory cap of one room instance, in MiB.
    #[arg(long, env = "WSROOM_ROOM_MEMORY_MIB", default_value_t = 128)]
    pub room_memory_mib: u64,

    /// Largest message a client may send, in bytes. A larger message is
    /// discarded and answered with a `message_too_large` error; a single
    /// frame over four times this closes the connection with 1009.
    #[arg(long, env = "WSROOM_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub max_message_bytes: usize,

    /// Bytes that may wait in one client's outgoing queue. A client that
    /// falls further behind is closed with 1013.
    #[arg(long, env = "WSROOM_OUTBOX_LIMIT_BYTES", default_value_t = 4 << 20)]
    pub outbox_limit_bytes: usize,

    /// Events that may wait in one room's inbox. When it is full, the
    /// connections of that room stop reading until it has room again.
    #[arg(long, env = "WSROOM_ROOM_INBOX", default_value_t = 1024)]
    pub room_inbox: usize,

    /// Most open WebSockets (more are refused with 503) and most HTTP
    /// connections being served (more wait to be accepted).
    #[arg(long, env = "WSROOM_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// A room with no events for this long drops its wasm instance but keeps
    /// its clients (hibernation); the next event creates a fresh instance.
    /// In milliseconds; 0 never hibernates.
    #[arg(long, env = "WSROOM_HIBERNATE_AFTER_MS", default_value_t = 10_000)]
    pub hibernate_after_ms: u64,

    /// How many times an alarm whose handler trapped is retried.
    #[arg(long, env = "WSROOM_ALARM_RETRIES", default_value_t = 3)]
    pub alarm_retries: u32,

    /// Delay before the first alarm retry, in milliseconds; it doubles with
    /// each further retry.
    #[arg(long, env = "WSROOM_ALARM_RETRY_BASE_MS", default_value_t = 1_000)]
    pub alarm_retry_base_ms: u64,

    /// Interval of keep-alive pings, in milliseconds. A client that sends
    /// nothing (not even a pong) for two intervals is treated as gone.
    #[arg(long, env = "WSROOM_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ping_interval_ms: u64,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

/// The host's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub component: Option<PathBuf>,
    /// Certificate chain and key files, when serving TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub room_config: BTreeMap<String, String>,
    pub cpu_budget: Duration,
    pub room_memory_bytes: usize,
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub outbox_limit_bytes: usize,
    pub room_inbox: usize,
    pub max_connections: usize,
    pub ping_interval: Duration,
    pub hibernate_after: Option<Duration>,
    pub alarm_retries: u32,
    pub alarm_retry_base: Duration,
}

impl Cli {
    pub fn config(&self) -> anyhow::Result<Config> {
        anyhow::ensure!(self.cpu_budget_ms > 0, "--cpu-budget-ms must be positive");
        anyhow::ensure!(
            self.room_memory_mib > 0,
            "--room-memory-mib must be positive"
        );
        anyhow::ensure!(
            self.max_message_bytes > 0,
            "--max-message-bytes must be positive"
        );
        anyhow::ensure!(
            self.outbox_limit_bytes > 0,
            "--outbox-limit-bytes must be positive"
        );
        anyhow::ensure!(self.room_inbox > 0, "--room-inbox must be positive");
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be positive"
        );
        anyhow::ensure!(
            self.ping_interval_ms > 0,
            "--ping-interval-ms must be positive"
        );
        let mut room_config: BTreeMap<String, String> = self.room_config.iter().cloned().collect();
        room_config.insert("cleanup-delay-ms".into(), self.cleanup_delay_ms.to_string());
        Ok(Config {
            component: self.component.clone(),
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            room_config,
            cpu_budget: Duration::from_millis(self.cpu_budget_ms),
            room_memory_bytes: usize::try_from(self.room_memory_mib << 20)
                .map_err(|_| anyhow::anyhow!("--room-memory-mib is too large"))?,
            max_message_bytes: self.max_message_bytes,
            max_frame_bytes: self.max_message_bytes.saturating_mul(4),
            outbox_limit_bytes: self.outbox_limit_bytes,
            room_inbox: self.room_inbox,
            max_connections: self.max_connections,
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            hibernate_after: (self.hibernate_after_ms > 0)
                .then(|| Duration::from_millis(self.hibernate_after_ms)),
            alarm_retries: self.alarm_retries,
            alarm_retry_base: Duration::from_millis(self.alarm_retry_base_ms),
        })
    }
}
