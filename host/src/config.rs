//! Command-line flags (each with an environment variable) and the typed
//! configuration the rest of the host reads. Over 450 lines because each of
//! the ~30 flags carries its help text as its doc comment (clap prints it);
//! the validation itself is ~100.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::{self, Auth};

/// The most `--max-message-bytes` may be.
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Self-hosted Durable-Object-style WebSocket rooms: one WebAssembly
/// component instance per project.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "WSROOM_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// Connections the kernel may hold waiting to be accepted (the listen
    /// backlog), capped by `net.core.somaxconn`. A reconnect storm past it
    /// costs the clients left out a second each (their SYN is sent again).
    #[arg(long, env = "WSROOM_LISTEN_BACKLOG", default_value_t = crate::listen::DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub listen_backlog: u32,

    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object a line, with its fields) for a log pipeline.
    #[arg(long, env = "WSROOM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// PEM certificate chain for TLS: with --tls-key, the server speaks
    /// https and wss only.
    #[arg(long, env = "WSROOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WSROOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// For development: serve https and wss with a certificate for
    /// localhost, 127.0.0.1 and ::1 generated at start. Its PEM is written
    /// to --tls-self-signed-out for clients to trust.
    #[arg(long, env = "WSROOM_TLS_SELF_SIGNED", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_self_signed: bool,

    /// Where --tls-self-signed writes the generated certificate (PEM).
    #[arg(long, env = "WSROOM_TLS_SELF_SIGNED_OUT", requires = "tls_self_signed")]
    pub tls_self_signed_out: Option<PathBuf>,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub data: DataArgs,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Public keys that verify RS256 and ES256 tokens (RS384, RS512, ES384
    /// too): a PEM file with one RSA or EC public key, or a JWKS file (JSON
    /// with "keys") whose keys are chosen by the token's "kid". With or
    /// without --auth-secret (which verifies HS256 tokens); either one turns
    /// access control on. Read again on SIGHUP.
    #[arg(long, env = "WSROOM_AUTH_PUBLIC_KEYS")]
    pub auth_public_keys: Option<PathBuf>,

    /// Browser origin allowed to open WebSockets (scheme://host, with an optional :port);
    /// repeatable. When set, an upgrade whose Origin header is not listed is
    /// refused with 403; clients that send no Origin (non-browsers) are
    /// not affected.
    #[arg(
        long = "allowed-origin",
        env = "WSROOM_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Room component to run instead of the embedded default room. It must
    /// implement the `wsroom:room/room` world of wit/room.wit.
    #[arg(long, env = "WSROOM_COMPONENT")]
    pub component: Option<PathBuf>,

    /// Delay before an empty room is removed, in milliseconds (passed to the
    /// room as config `cleanup-delay-ms`).
    #[arg(long, env = "WSROOM_CLEANUP_DELAY_MS", default_value_t = 300_000)]
    pub cleanup_delay_ms: u64,

    /// Do not keep compiled components on disk. By default wasmtime's cache
    /// (its config in ~/.config/wasmtime/config.toml, its files under
    /// ~/.cache/wasmtime) makes restarts and reloads of unchanged
    /// components skip compilation.
    #[arg(long, env = "WSROOM_NO_COMPILE_CACHE")]
    pub no_compile_cache: bool,

    /// Run another component for the projects whose projectId matches
    /// PATTERN (exact, or a prefix ending in `*`), as PATTERN=PATH;
    /// repeatable, first match wins. Other projects run --component.
    #[arg(long = "project-component", env = "WSROOM_PROJECT_COMPONENTS", value_delimiter = ',', value_parser = parse_key_value)]
    pub project_components: Vec<(String, String)>,

    /// Extra configuration for the room, as key=value; repeatable. The room
    /// reads it with the `config` import.
    #[arg(long = "room-config", env = "WSROOM_ROOM_CONFIG", value_delimiter = ',', value_parser = parse_key_value)]
    pub room_config: Vec<(String, String)>,

    /// CPU time one call into a room may use before it is stopped and the
    /// room is reset, in milliseconds (a call that hands the room several
    /// of a client's messages at once, `on-texts`, as many times this).
    #[arg(long, env = "WSROOM_CPU_BUDGET_MS", default_value_t = 30_000)]
    pub cpu_budget_ms: u64,

    /// Linear-memory cap of one room instance, in MiB.
    #[arg(long, env = "WSROOM_ROOM_MEMORY_MIB", default_value_t = 128)]
    pub room_memory_mib: u64,

    /// Bytes one room's store (the `storage-*` imports) may hold, keys and
    /// values counted.
    #[arg(long, env = "WSROOM_ROOM_STORAGE_BYTES", default_value_t = 1 << 20)]
    pub room_storage_bytes: usize,

    /// Largest body of an HTTP request into a room (`/rooms/{projectId}/...`),
    /// of a room's answer to one, and of a response a room's outgoing HTTP
    /// request may read, in bytes.
    #[arg(long, env = "WSROOM_ROOM_HTTP_BODY_BYTES", default_value_t = 256 * 1024)]
    pub room_http_body_bytes: usize,

    /// A host rooms may send HTTP(S) requests to (through
    /// `wasi:http/outgoing-handler`): `api.example.com`, `*.example.com`
    /// (its subdomains), with `:PORT` to allow that port only (else any).
    /// A name is allowed whatever it resolves to: list addresses to pin
    /// them. Repeat for more, or separate with commas. None by default:
    /// rooms cannot call out.
    #[arg(
        long = "room-http-allow",
        env = "WSROOM_ROOM_HTTP_ALLOW",
        value_delimiter = ','
    )]
    pub room_http_allow: Vec<String>,

    /// How long a room's outgoing HTTP request may take to get its
    /// response's head (connection and TLS included), and again to read its
    /// body, in milliseconds.
    #[arg(long, env = "WSROOM_ROOM_HTTP_TIMEOUT_MS", default_value_t = 10_000)]
    pub room_http_timeout_ms: u64,

    /// Lines one room may write to the log per second, through `log` and its
    /// stdout/stderr together (bursts of twice that); more are dropped,
    /// counted, and reported with the next line let through. Lines are cut
    /// at 4 KiB. 0 turns rooms' logging off.
    #[arg(long, env = "WSROOM_ROOM_LOG_LINES_PER_SEC", default_value_t = 50)]
    pub room_log_lines_per_sec: u32,

    /// Largest message a client may send, in bytes (at most 1 GiB). A
    /// larger message is discarded and answered with a `message_too_large`
    /// error; a single frame over four times this closes the connection
    /// with 1009.
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

    /// Bytes of messages that may wait in one room's inbox (a message over
    /// it waits alone); past it, as past --room-inbox, the connections of
    /// that room stop reading until it has room again.
    #[arg(long, env = "WSROOM_ROOM_INBOX_BYTES", default_value_t = 16 << 20)]
    pub room_inbox_bytes: u32,

    /// Most open WebSockets (more are refused with 503); a seventh as many
    /// HTTP connections (at least 64) are served at once beside them (more
    /// wait to be accepted). By default
    /// 50000, or fewer if the process's limit on open files (its hard
    /// limit: the server raises its soft limit to it) leaves room for fewer:
    /// each of both kinds takes a file (HTTP connections being served: a
    /// seventh as many as --max-connections, at least 64).
    #[arg(long, env = "WSROOM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most live rooms (projects with clients or a pending alarm, with or
    /// without an instance); a connection to another project is refused
    /// with 503. By default as many as --max-connections: a room without
    /// clients lives on only until its alarm.
    #[arg(long, env = "WSROOM_MAX_ROOMS")]
    pub max_rooms: Option<usize>,

    /// Most open WebSockets of one project; a connection past it is refused
    /// with 503, so one project cannot take every connection the server
    /// has. The default is a Durable Object's limit of WebSockets.
    #[arg(long, env = "WSROOM_MAX_PROJECT_CONNECTIONS", default_value_t = 32_768)]
    pub max_project_connections: usize,

    /// Most messages one connection may send a second (bursts of twice
    /// that); a message past it is not routed, and its sender gets an
    /// `error` with code `rate_limited`. 0: no limit.
    #[arg(long, env = "WSROOM_MAX_MESSAGES_PER_SEC", default_value_t = 0)]
    pub max_messages_per_sec: u32,

    /// Most room instances (wasm stores) live at once. A room that needs an
    /// instance past it makes the least recently used idle one hibernate
    /// early. By default as many as the kernel's `vm.max_map_count` leaves
    /// room for: each instance takes about eight memory mappings, and a
    /// process past that limit cannot map memory at all.
    #[arg(long, env = "WSROOM_MAX_INSTANCES")]
    pub max_instances: Option<usize>,

    /// A room with no events for this long drops its wasm instance but keeps
    /// its clients (hibernation); the next event creates a fresh instance.
    /// In milliseconds; 0 never for idleness alone (--max-instances can
    /// still make an idle room hibernate).
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

    /// Milliseconds a new connection has to finish its TLS handshake (on a
    /// TLS port) and then to send its request headers, each; a connection
    /// that takes longer is closed.
    #[arg(long, env = "WSROOM_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Most connections from one source address (an IPv4 address, an IPv6
    /// /64) in the HTTP phase at once: accepted and not yet a WebSocket
    /// (TLS handshake, request headers, /health polls). One more is answered
    /// 503 and closed, so that clients slow on purpose cannot take every
    /// HTTP slot from everyone else (as nginx's limit_conn). Default: a
    /// quarter of the HTTP connections served at once. Behind a proxy every
    /// client has the proxy's address: raise it there.
    #[arg(long, env = "WSROOM_MAX_HANDSHAKES_PER_ADDRESS")]
    pub max_handshakes_per_address: Option<usize>,
}

/// Commands other than serving.
/// See [`Cli::log_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a signed access token for a project and client types.
    Token(TokenArgs),
    /// Compile and link room components as the server would, and say
    /// whether each fits the wsroom:room/room world (before a SIGHUP, say).
    Check {
        /// Component files to check.
        #[arg(required = true)]
        components: Vec<PathBuf>,
    },
    /// Read the durable store of --data-dir (with the server stopped: one
    /// process holds a store at a time).
    Data {
        #[command(subcommand)]
        action: DataCommand,
    },
    /// Ask a running server whether it is healthy (`GET /health`), for a
    /// container's health check: exit status 0 when it answers 200 within
    /// the timeout, 1 otherwise. Plain HTTP only (a TLS listener: point it
    /// at a plain one, or check through your proxy).
    Health {
        /// The URL to ask (`http://HOST:PORT/PATH`; by default `/health` at
        /// --listen, on loopback when that is a wildcard address);
        /// `/health?ready` fails while the server is at a limit.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum DataCommand {
    /// List the projects with stored data or an alarm: projectId, keys,
    /// bytes (keys and values), one project a line, tab-separated.
    List,
    /// Print one project's keys and values and its alarm as JSON (values as
    /// `text` when they are UTF-8, else `base64`).
    Dump {
        /// The projectId.
        project: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The projectId the token admits: exact, or a prefix ending in `*`
    /// (`acme-*`); `*` admits every project.
    #[arg(long)]
    pub project: String,

    /// Client types it admits, comma-separated (`runtime,data-agent`);
    /// `admin` also grants /status.
    #[arg(long, value_delimiter = ',', required = true)]
    pub types: Vec<String>,

    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,

    /// Who the token is for (the `sub` claim; for your records).
    #[arg(long)]
    pub subject: Option<String>,

    #[command(flatten)]
    pub secret: SecretArgs,
}

impl TokenArgs {
    pub fn mint(&self) -> anyhow::Result<String> {
        let secret = self.secret.load()?.ok_or_else(|| {
            anyhow::anyhow!(
                "give the server's secret: --auth-secret-file, --auth-secret or WSROOM_AUTH_SECRET"
            )
        })?;
        auth::mint(
            &secret,
            &self.project,
            &self.types,
            Duration::from_secs(self.ttl_secs),
            self.subject.clone(),
        )
    }
}

/// A secret from the command line or environment; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The token secret, from the command line, the environment or a file; the
/// server and `wsroom token` take it the same way.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// Secret that signs access tokens (HS256, at least 32 bytes). With it,
    /// /websocket, /status and /health?projectId= need a token; without it
    /// anyone who knows a projectId may join it, as admin too. Prefer
    /// --auth-secret-file or the environment: arguments are visible in `ps`.
    #[arg(
        long,
        env = "WSROOM_AUTH_SECRET",
        hide_env_values = true,
        conflicts_with = "auth_secret_file"
    )]
    pub auth_secret: Option<Secret>,

    /// File holding the token secret (a trailing newline is ignored).
    #[arg(long, env = "WSROOM_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,
}

impl SecretArgs {
    /// The secret's bytes, if one was given.
    pub fn load(&self) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(path) = &self.auth_secret_file {
            return auth::keys::read_secret_file(path).map(Some);
        }
        Ok(self.auth_secret.as_ref().map(|s| s.0.clone().into_bytes()))
    }

    /// Where the server reads its secret (again on SIGHUP, from a file).
    fn source(&self) -> Option<auth::keys::SecretSource> {
        use auth::keys::SecretSource;
        match (&self.auth_secret_file, &self.auth_secret) {
            (Some(path), _) => Some(SecretSource::File(path.clone())),
            (None, Some(secret)) => Some(SecretSource::Fixed(secret.0.clone().into_bytes())),
            (None, None) => None,
        }
    }
}

/// Where rooms' stores and alarms last; the server and `wsroom data` take
/// it the same way.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Directory of the durable store (every room's `storage-*` data and
    /// alarm, in one file), created at start. One server per directory.
    #[arg(
        long,
        env = "WSROOM_DATA_DIR",
        default_value = "wsroom-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Keep rooms' stores and alarms in memory only, as if no disk existed:
    /// they are lost when the server stops (for tests and benchmarks).
    #[arg(long, env = "WSROOM_IN_MEMORY", global = true)]
    pub in_memory: bool,
}

/// Cluster membership: with `--nats`, the node joins the cluster of every
/// node on the same NATS JetStream; without it, it runs alone.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// NATS server(s) to join a cluster through (`nats://host:4222`, or
    /// `tls://`; comma-separated for several). JetStream must be enabled.
    /// Without it the server runs alone and needs nothing else.
    #[arg(long, env = "WSROOM_NATS", value_delimiter = ',')]
    pub nats: Vec<String>,

    /// NATS credentials file (JWT and NKey seed, as `nsc` writes it).
    #[arg(long, env = "WSROOM_NATS_CREDS", requires = "nats")]
    pub nats_creds: Option<PathBuf>,

    /// PEM file of the certificate authorities to trust for NATS over TLS
    /// (implies TLS).
    #[arg(long, env = "WSROOM_NATS_TLS_CA", requires = "nats")]
    pub nats_tls_ca: Option<PathBuf>,

    /// PEM client certificate for NATS over mutual TLS (with --nats-tls-key).
    #[arg(long, env = "WSROOM_NATS_TLS_CERT", requires_all = ["nats", "nats_tls_key"])]
    pub nats_tls_cert: Option<PathBuf>,

    /// PEM private key of --nats-tls-cert.
    #[arg(long, env = "WSROOM_NATS_TLS_KEY", requires_all = ["nats", "nats_tls_cert"])]
    pub nats_tls_key: Option<PathBuf>,

    /// Require TLS to NATS even when the URL does not say `tls://`.
    #[arg(long, env = "WSROOM_NATS_TLS", requires = "nats")]
    pub nats_tls: bool,

    /// This node's name in the cluster: unique, letters, digits, `-` and
    /// `_` (default: the host name, other characters made `-`).
    #[arg(long, env = "WSROOM_NODE_NAME", requires = "nats")]
    pub node_name: Option<String>,

    /// How long a node's ownership of its projects outlives its last
    /// renewal, in milliseconds: a node that dies loses its projects to the
    /// live nodes within this time. Every node of a cluster must use the
    /// same value (the first node's is kept in the bucket; see README).
    #[arg(long, env = "WSROOM_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,
}

/// The cluster settings, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub urls: Vec<String>,
    pub creds: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
    pub tls_required: bool,
    pub node_name: String,
    pub lease: Duration,
}

impl ClusterArgs {
    fn config(&self) -> anyhow::Result<Option<ClusterConfig>> {
        if self.nats.is_empty() {
            return Ok(None);
        }
        anyhow::ensure!(
            self.lease_ms >= 1000,
            "--lease-ms must be at least 1000 (a node renews its lease several times a lease)"
        );
        let node_name = match &self.node_name {
            Some(name) => {
                anyhow::ensure!(
                    is_node_name(name),
                    "--node-name {name:?}: use 1 to 64 letters, digits, `-` and `_`"
                );
                name.clone()
            }
            None => default_node_name(),
        };
        Ok(Some(ClusterConfig {
            urls: self.nats.clone(),
            creds: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_client: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()),
            tls_required: self.nats_tls,
            node_name,
            lease: Duration::from_millis(self.lease_ms),
        }))
    }
}

/// Whether `name` can name a node: it is a token of NATS subjects.
pub fn is_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host name, made a valid node name.
fn default_node_name() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let name: String = host
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "wsroom".into()
    } else {
        name
    }
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated at start; its certificate is written to `out`.
    SelfSigned { out: PathBuf },
}

/// Whether a projectId pattern (exact, or a prefix ending in `*`; `*` alone
/// matches everything) matches `project`.
pub fn project_matches(pattern: &str, project: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => project.starts_with(prefix),
        None => pattern == project,
    }
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
    /// `(projectId pattern, component)`, first match wins.
    pub project_components: Vec<(String, PathBuf)>,
    /// Keep compiled components in wasmtime's on-disk cache.
    pub compile_cache: bool,
    /// Where the certificate comes from, when serving TLS.
    pub tls: Option<TlsSource>,
    /// Token verifier, when a secret is configured.
    pub auth: Option<Arc<Auth>>,
    /// Normalized browser origins allowed to open WebSockets; empty: any.
    pub allowed_origins: Vec<String>,
    pub room_config: BTreeMap<String, String>,
    pub cpu_budget: Duration,
    pub room_memory_bytes: usize,
    pub room_storage_bytes: usize,
    /// HTTP into and out of rooms.
    pub room_http: crate::outbound::RoomHttp,
    pub room_log_lines_per_sec: u32,
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    pub outbox_limit_bytes: usize,
    pub room_inbox: usize,
    pub room_inbox_bytes: u32,
    pub max_connections: usize,
    pub max_rooms: usize,
    pub max_instances: usize,
    pub max_project_connections: usize,
    /// 0: no limit.
    pub max_messages_per_sec: u32,
    pub ping_interval: Duration,
    pub handshake_timeout: Duration,
    pub max_handshakes_per_address: usize,
    pub hibernate_after: Option<Duration>,
    pub alarm_retries: u32,
    pub alarm_retry_base: Duration,
    /// The durable store's directory; `None`: in memory (`--in-memory`).
    pub data_dir: Option<PathBuf>,
    /// Cluster membership; `None`: a node alone.
    pub cluster: Option<ClusterConfig>,
}

impl Cli {
    pub fn config(&self) -> anyhow::Result<Config> {
        let max_connections = match self.max_connections {
            Some(0) => anyhow::bail!("--max-connections must be positive"),
            Some(n) => n,
            None => crate::limits::connections_the_files_allow(crate::limits::open_files_limit().1),
        };
        anyhow::ensure!(self.cpu_budget_ms > 0, "--cpu-budget-ms must be positive");
        anyhow::ensure!(
            self.room_memory_mib > 0,
            "--room-memory-mib must be positive"
        );
        anyhow::ensure!(
            self.max_message_bytes > 0,
            "--max-message-bytes must be positive"
        );
        // A client's frames are buffered whole up to four times this; the
        // contract's lists are at most 4 GiB.
        anyhow::ensure!(
            self.max_message_bytes <= MAX_MESSAGE_BYTES,
            "--max-message-bytes must be at most {MAX_MESSAGE_BYTES} (1 GiB)"
        );
        anyhow::ensure!(
            self.outbox_limit_bytes > 0,
            "--outbox-limit-bytes must be positive"
        );
        anyhow::ensure!(self.room_inbox > 0, "--room-inbox must be positive");
        anyhow::ensure!(
            self.room_inbox_bytes > 0,
            "--room-inbox-bytes must be positive"
        );
        anyhow::ensure!(
            self.ping_interval_ms > 0,
            "--ping-interval-ms must be positive"
        );
        anyhow::ensure!(
            self.handshake_timeout_ms > 0,
            "--handshake-timeout-ms must be positive"
        );
        let tls = if self.tls_self_signed {
            Some(TlsSource::SelfSigned {
                out: self
                    .tls_self_signed_out
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("wsroom-self-signed.crt")),
            })
        } else {
            self.tls_cert
                .clone()
                .zip(self.tls_key.clone())
                .map(|(cert, key)| TlsSource::Files { cert, key })
        };
        let key_sources = auth::keys::KeySources {
            secret: self.secret.source(),
            public_keys: self.auth_public_keys.clone(),
        };
        let auth = if key_sources.secret.is_some() || key_sources.public_keys.is_some() {
            Some(Arc::new(Auth::load(key_sources)?))
        } else {
            None
        };
        let allowed_origins = self
            .allowed_origins
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| auth::check_origin(o))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut room_config: BTreeMap<String, String> = self.room_config.iter().cloned().collect();
        room_config.insert("cleanup-delay-ms".into(), self.cleanup_delay_ms.to_string());
        Ok(Config {
            component: self.component.clone(),
            compile_cache: !self.no_compile_cache,
            project_components: self
                .project_components
                .iter()
                .map(|(pattern, path)| (pattern.clone(), PathBuf::from(path)))
                .collect(),
            tls,
            auth,
            allowed_origins,
            room_config,
            cpu_budget: Duration::from_millis(self.cpu_budget_ms),
            room_memory_bytes: usize::try_from(self.room_memory_mib << 20)
                .map_err(|_| anyhow::anyhow!("--room-memory-mib is too large"))?,
            room_storage_bytes: self.room_storage_bytes,
            room_http: crate::outbound::RoomHttp::new(
                &self.room_http_allow,
                self.room_http_body_bytes,
                Duration::from_millis(self.room_http_timeout_ms),
            )?,
            room_log_lines_per_sec: self.room_log_lines_per_sec,
            max_message_bytes: self.max_message_bytes,
            max_frame_bytes: self.max_message_bytes.saturating_mul(4),
            outbox_limit_bytes: self.outbox_limit_bytes,
            room_inbox: self.room_inbox,
            room_inbox_bytes: self.room_inbox_bytes,
            max_connections,
            max_rooms: match self.max_rooms {
                Some(0) => anyhow::bail!("--max-rooms must be positive"),
                Some(n) => n,
                None => max_connections,
            },
            max_instances: match self.max_instances {
                Some(0) => anyhow::bail!("--max-instances must be positive"),
                Some(n) => n,
                None => {
                    crate::limits::instances_the_map_count_allows(crate::limits::max_map_count())
                }
            },
            max_project_connections: match self.max_project_connections {
                0 => anyhow::bail!("--max-project-connections must be positive"),
                n => n,
            },
            max_messages_per_sec: self.max_messages_per_sec,
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_handshakes_per_address: match self.max_handshakes_per_address {
                Some(0) => anyhow::bail!("--max-handshakes-per-address must be positive"),
                Some(n) => n,
                None => crate::limits::handshakes_per_address(max_connections),
            },
            hibernate_after: (self.hibernate_after_ms > 0)
                .then(|| Duration::from_millis(self.hibernate_after_ms)),
            alarm_retries: self.alarm_retries,
            alarm_retry_base: Duration::from_millis(self.alarm_retry_base_ms),
            data_dir: (!self.data.in_memory).then(|| self.data.data_dir.clone()),
            cluster: self.cluster.config()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_of_zero_is_refused_with_its_flag_named() {
        let flags = [
            "--max-connections",
            "--max-rooms",
            "--max-instances",
            "--max-project-connections",
            "--room-inbox",
            "--room-inbox-bytes",
            "--cpu-budget-ms",
            "--room-memory-mib",
            "--max-message-bytes",
            "--outbox-limit-bytes",
            "--ping-interval-ms",
            "--handshake-timeout-ms",
            "--max-handshakes-per-address",
        ];
        for flag in flags {
            let cli = Cli::try_parse_from(["wsroom", flag, "0"]).unwrap();
            let error = cli.config().expect_err(flag).to_string();
            assert_eq!(error, format!("{flag} must be positive"));
        }
        // Zero where it means "none".
        for flag in ["--max-messages-per-sec", "--hibernate-after-ms"] {
            let cli = Cli::try_parse_from(["wsroom", flag, "0"]).unwrap();
            assert!(cli.config().is_ok(), "{flag}");
        }
        let cli = Cli::try_parse_from(["wsroom", "--max-message-bytes", "1073741825"]).unwrap();
        let error = cli.config().expect_err("over 1 GiB").to_string();
        assert!(error.contains("at most 1073741824"), "{error}");
        // Past what the type holds: clap names the flag.
        let error = Cli::try_parse_from(["wsroom", "--room-inbox-bytes", "4294967296"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--room-inbox-bytes"), "{error}");
    }
}
