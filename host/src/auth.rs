//! Access control: signed tokens (JWT: HS256 with the server's secret, or
//! RS256/ES256 with public keys, in [`keys`]) that say which projects and
//! which client types a bearer may use, and an optional allow-list of
//! browser origins.
//!
//! With no secret or keys configured every request is admitted, as in the
//! original. With them, `/websocket`, `/status` and `/health?projectId=`
//! need a token, from `Authorization: Bearer …`, a WebSocket subprotocol or
//! the `token` query parameter. Tokens are never logged.

pub(crate) mod keys;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};

use keys::{KeySources, Keys, SecretSource};
use serde::{Deserialize, Serialize};

/// Shortest secret accepted: HS256 wants at least as many bytes as the hash.
pub(crate) const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated on `exp`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 30;
/// The client type that may also read `/status`.
pub(crate) const ADMIN: &str = "admin";
/// The type a token must grant for HTTP into rooms (`/rooms/...`).
pub(crate) const SERVER: &str = "server";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The projectId it admits: exact, or a prefix ending in `*` (`acme-*`);
    /// `*` alone admits every project.
    pub project: String,
    /// The client types it admits; `admin` also grants `/status`.
    pub types: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Who the token is for (free text, for the operator's records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

impl Claims {
    /// Whether the token's project pattern covers `project`.
    pub fn allows_project(&self, project: &str) -> bool {
        crate::config::project_matches(&self.project, project)
    }

    pub fn allows_type(&self, kind: &str) -> bool {
        self.types.iter().any(|t| t == kind)
    }
}

/// Why a request was refused: the HTTP status, error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Denied {
    fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Denied {
            status: 401,
            code,
            message: message.into(),
        }
    }

    fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Denied {
            status: 403,
            code,
            message: message.into(),
        }
    }
}

/// What a request asks for, to be checked against a token.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Join `project` as a client of type `kind`.
    Join { project: &'a str, kind: &'a str },
    /// Read `/status` of `project`: needs `admin`.
    Status { project: &'a str },
    /// Read `/health` of `project`: any type.
    Health { project: &'a str },
    /// List projects in the console: needs `admin`; the list shows only
    /// the projects the token grants.
    Console,
    /// An HTTP request into `project`'s room: needs [`SERVER`].
    RoomHttp { project: &'a str },
}

/// The verifier: the keys, swapped whole when they are read again.
pub struct Auth {
    keys: std::sync::RwLock<std::sync::Arc<Keys>>,
    /// Where they were read from; `None` for keys given in memory.
    sources: Option<KeySources>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { keys: <redacted> }")
    }
}

/// Checks a secret's length; the message names the flag.
pub(crate) fn check_secret(secret: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "the auth secret is {} bytes; use at least {MIN_SECRET_BYTES} random bytes \
         (for example: openssl rand -hex 32)",
        secret.len()
    );
    Ok(())
}

impl Auth {
    /// A verifier of HS256 tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> anyhow::Result<Auth> {
        Ok(Auth {
            keys: std::sync::RwLock::new(std::sync::Arc::new(Keys::from_secret(secret)?)),
            sources: None,
        })
    }

    /// A verifier with the keys `sources` name, read now and again by
    /// [`Auth::reload`].
    pub(crate) fn load(sources: KeySources) -> anyhow::Result<Auth> {
        let keys = Keys::load(&sources)?;
        Ok(Auth {
            keys: std::sync::RwLock::new(std::sync::Arc::new(keys)),
            sources: Some(sources),
        })
    }

    /// Reads the secret file and the public keys again; new tokens are
    /// checked with them, open connections stay. On failure the keys in use
    /// stay. Returns whether there was anything to read.
    pub(crate) fn reload(&self) -> anyhow::Result<bool> {
        let Some(sources) = &self.sources else {
            return Ok(false);
        };
        let fixed_only =
            sources.public_keys.is_none() && !matches!(sources.secret, Some(SecretSource::File(_)));
        if fixed_only {
            return Ok(false);
        }
        let keys = Keys::load(sources)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(keys);
        Ok(true)
    }

    fn keys(&self) -> std::sync::Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Verifies `token` and checks that it grants `access`.
    pub fn check(&self, token: Option<&str>, access: Access<'_>) -> Result<Claims, Denied> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Denied::unauthorized(
                "missing_token",
                match access {
                    Access::RoomHttp { .. } => {
                        "this server requires a token: an Authorization: Bearer header"
                    }
                    _ => {
                        "this server requires a token: an Authorization: Bearer header or a token query parameter"
                    }
                },
            ));
        };
        let claims = self.verify(token)?;
        let project = match access {
            Access::Join { project, .. }
            | Access::Status { project }
            | Access::Health { project }
            | Access::RoomHttp { project } => Some(project),
            Access::Console => None,
        };
        if project.is_some_and(|project| !claims.allows_project(project)) {
            return Err(Denied::forbidden(
                "project_not_allowed",
                "the token does not grant this projectId",
            ));
        }
        match access {
            Access::Join { kind, .. } if !claims.allows_type(kind) => Err(Denied::forbidden(
                "type_not_allowed",
                format!("the token does not grant the client type {kind:?}"),
            )),
            Access::Status { .. } if !claims.allows_type(ADMIN) => Err(Denied::forbidden(
                "admin_required",
                "/status needs a token that grants the admin type",
            )),
            Access::Console if !claims.allows_type(ADMIN) => Err(Denied::forbidden(
                "admin_required",
                "the console needs a token that grants the admin type",
            )),
            Access::RoomHttp { .. } if !claims.allows_type(SERVER) => Err(Denied::forbidden(
                "server_required",
                "HTTP into rooms needs a token that grants the server type",
            )),
            _ => Ok(claims),
        }
    }
}

impl Auth {
    /// The claims of `token`, once its signature and expiry are checked
    /// with the key its header's `alg` (and `kid`) names.
    fn verify(&self, token: &str) -> Result<Claims, Denied> {
        let invalid = |message: String| Denied::unauthorized("invalid_token", message);
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            invalid("the token is not a valid JWT with project, types and exp claims".into())
        })?;
        let keys = self.keys();
        let key = match header.alg {
            Algorithm::HS256 => keys.secret.as_ref().ok_or_else(|| {
                invalid("this server takes tokens signed with its public keys, not HS256".into())
            })?,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384 => {
                if keys.public.is_empty() {
                    return Err(invalid("the token must be signed with HS256".into()));
                }
                &keys
                    .public_key(header.alg, header.kid.as_deref())
                    .map_err(invalid)?
                    .key
            }
            other => {
                return Err(invalid(format!(
                    "tokens signed with {other:?} are not taken (HS256, RS256, ES256 are)"
                )));
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp"]);
        match jsonwebtoken::decode::<Claims>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => {
                    Denied::unauthorized("token_expired", "the token has expired")
                }
                ErrorKind::InvalidSignature => {
                    invalid("the token's signature does not match".into())
                }
                ErrorKind::InvalidAlgorithm => {
                    invalid(format!("the key cannot verify a {:?} token", header.alg))
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    invalid(format!("the token has no {claim} claim"))
                }
                _ => invalid(
                    "the token is not a valid JWT with project, types and exp claims".into(),
                ),
            }),
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs a token granting `types` on `project` for `ttl`.
pub(crate) fn mint(
    secret: &[u8],
    project: &str,
    types: &[String],
    ttl: Duration,
    sub: Option<String>,
) -> anyhow::Result<String> {
    check_secret(secret)?;
    anyhow::ensure!(!project.is_empty(), "--project must not be empty");
    anyhow::ensure!(!types.is_empty(), "--types must name at least one type");
    anyhow::ensure!(ttl.as_secs() > 0, "--ttl-secs must be positive");
    let now = unix_now();
    let claims = Claims {
        project: project.to_owned(),
        types: types.to_vec(),
        exp: now.saturating_add(ttl.as_secs()),
        iat: Some(now),
        sub,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

/// The bearer token of a request: the `Authorization: Bearer` header, else
/// `query_token` (a WebSocket subprotocol's, else the `token` query
/// parameter). A non-Bearer Authorization header counts as no token.
pub(crate) fn bearer<'a>(
    authorization: Option<&'a str>,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    authorization
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .or(query_token)
}

/// The subprotocol a browser offers beside its token (and the one the
/// server selects): see [`subprotocol_token`].
pub(crate) const SUBPROTOCOL: &str = "wsroom";

/// The prefix of a token offered as a WebSocket subprotocol.
const SUBPROTOCOL_BEARER: &str = "bearer.";

/// The token a browser sends in `Sec-WebSocket-Protocol` as
/// `bearer.<token>`, beside [`SUBPROTOCOL`]: a browser's `WebSocket` cannot
/// set an `Authorization` header, and a token in the URL ends up in access
/// logs and browser history. `header` is each line of that header.
pub(crate) fn subprotocol_token<'a>(header: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    offered_subprotocols(header).find_map(|p| p.strip_prefix(SUBPROTOCOL_BEARER))
}

/// Every subprotocol a request offers, in order.
pub(crate) fn offered_subprotocols<'a>(
    header: impl Iterator<Item = &'a str>,
) -> impl Iterator<Item = &'a str> {
    header
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Normalizes an origin for comparison: lower case, no trailing `/`.
pub(crate) fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Checks an `--allowed-origin` value: `scheme://host[:port]`, nothing more.
pub(crate) fn check_origin(origin: &str) -> anyhow::Result<String> {
    let normalized = normalize_origin(origin);
    let url = url::Url::parse(&normalized)
        .map_err(|e| anyhow::anyhow!("--allowed-origin {origin:?} is not a URL: {e}"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty(),
        "--allowed-origin {origin:?} must look like https://example.com or http://localhost:3000"
    );
    Ok(normalized)
}

#[cfg(test)]
mod tests;
