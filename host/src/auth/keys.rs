//! The keys that verify tokens: the HS256 secret, and public keys for RS256
//! and ES256 (RS384/RS512, ES384 too) from a PEM file (one key) or a JWKS
//! file (several, chosen by the token's `kid`), so an identity provider
//! can sign tokens without sharing a secret with the server. Read again as
//! a whole on SIGHUP.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use super::check_secret;

/// Where the keys come from, to read them again.
#[derive(Debug, Clone)]
pub(crate) struct KeySources {
    pub(crate) secret: Option<SecretSource>,
    /// `--auth-public-keys`: a PEM or JWKS file.
    pub(crate) public_keys: Option<PathBuf>,
}

#[derive(Clone)]
pub(crate) enum SecretSource {
    /// Given on the command line or in the environment: it cannot change.
    Fixed(Vec<u8>),
    /// `--auth-secret-file`, read again on reload.
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            SecretSource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// A public key and the algorithms it verifies.
pub(crate) struct PublicKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: &'static [Algorithm],
}

/// Every key tokens may be verified with.
pub(crate) struct Keys {
    pub(crate) secret: Option<DecodingKey>,
    pub(crate) public: Vec<PublicKey>,
}

const RSA: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const P256: &[Algorithm] = &[Algorithm::ES256];
const P384: &[Algorithm] = &[Algorithm::ES384];

impl Keys {
    pub(crate) fn from_secret(secret: &[u8]) -> anyhow::Result<Keys> {
        check_secret(secret)?;
        Ok(Keys {
            secret: Some(DecodingKey::from_secret(secret)),
            public: Vec::new(),
        })
    }

    /// Reads every key from its source; fails, naming the file, if one
    /// cannot be used.
    pub(crate) fn load(sources: &KeySources) -> anyhow::Result<Keys> {
        let secret = match &sources.secret {
            None => None,
            Some(SecretSource::Fixed(bytes)) => {
                check_secret(bytes)?;
                Some(DecodingKey::from_secret(bytes))
            }
            Some(SecretSource::File(path)) => {
                let bytes = read_secret_file(path)?;
                check_secret(&bytes)?;
                Some(DecodingKey::from_secret(&bytes))
            }
        };
        let public = match &sources.public_keys {
            None => Vec::new(),
            Some(path) => read_public_keys(path)?,
        };
        Ok(Keys { secret, public })
    }

    /// The public key for a token signed with `alg` that names `kid`: the
    /// key with that `kid`, or the only key that verifies `alg` when the
    /// token names none.
    pub(crate) fn public_key(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<&PublicKey, String> {
        let mut fitting = self.public.iter().filter(|k| k.algorithms.contains(&alg));
        match kid {
            Some(kid) => self
                .public
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .filter(|k| k.algorithms.contains(&alg))
                .ok_or_else(|| format!("no {alg:?} key has the token's kid {kid:?}")),
            None => match (fitting.next(), fitting.next()) {
                (Some(key), None) => Ok(key),
                (None, _) => Err(format!("this server has no key for {alg:?} tokens")),
                (Some(_), Some(_)) => Err(format!(
                    "the token names no kid, and several {alg:?} keys could verify it"
                )),
            },
        }
    }
}

/// A secret file's bytes, without the trailing newline an editor adds.
pub(crate) fn read_secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the auth secret file {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    Ok(bytes)
}

/// The keys of a JWKS file (JSON with `keys`) or a PEM file (one RSA or EC
/// public key).
fn read_public_keys(path: &Path) -> anyhow::Result<Vec<PublicKey>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the auth public keys {}: {e}", path.display()))?;
    let what = |e: String| anyhow::anyhow!("--auth-public-keys {}: {e}", path.display());
    let keys = if text.trim_start().starts_with('{') {
        jwks_keys(&text).map_err(what)?
    } else {
        vec![pem_key(text.as_bytes()).map_err(what)?]
    };
    anyhow::ensure!(
        !keys.is_empty(),
        "--auth-public-keys {}: the JWKS holds no key",
        path.display()
    );
    Ok(keys)
}

fn pem_key(pem: &[u8]) -> Result<PublicKey, String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(PublicKey {
            kid: None,
            key,
            algorithms: RSA,
        });
    }
    // An EC key's curve decides its algorithm; jsonwebtoken's PEM reader
    // does not say which, so the key's size does (P-256 points are 65
    // bytes uncompressed, P-384's 97).
    match DecodingKey::from_ec_pem(pem) {
        Ok(key) => {
            let point = match key.kind() {
                DecodingKeyKind::SecretOrDer(point) => point.len(),
                DecodingKeyKind::RsaModulusExponent { .. } => 0,
            };
            let algorithms = match point {
                65 => P256,
                97 => P384,
                n => {
                    return Err(format!(
                        "an EC key of {n} bytes: only P-256 and P-384 are taken"
                    ));
                }
            };
            Ok(PublicKey {
                kid: None,
                key,
                algorithms,
            })
        }
        Err(_) => Err(
            "not a PEM public key (-----BEGIN PUBLIC KEY----- or -----BEGIN RSA PUBLIC KEY-----) \
             of RSA or EC, nor a JWKS (JSON with \"keys\")"
                .into(),
        ),
    }
}

fn jwks_keys(json: &str) -> Result<Vec<PublicKey>, String> {
    let set: JwkSet =
        serde_json::from_str(json).map_err(|e| format!("not a JWKS (JSON with \"keys\"): {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        let algorithms = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA,
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => P256,
                EllipticCurve::P384 => P384,
                ref other => return Err(format!("key {name}: curve {other:?} is not taken")),
            },
            _ => {
                return Err(format!(
                    "key {name}: only RSA and EC (P-256, P-384) public keys are taken"
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {name}: {e}"))?;
        keys.push(PublicKey {
            kid: jwk.common.key_id.clone(),
            key,
            algorithms,
        });
    }
    Ok(keys)
}
