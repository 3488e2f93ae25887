//! Development tokens: an Ed25519 key pair kept in the data directory (never in the
//! repository), and the tokens `stepbox token` mints with it. Production deployments
//! configure their identity provider's keys instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::KeySet;

/// The issuer of development tokens.
pub const DEV_ISSUER: &str = "stepbox-dev";
/// The audience of development tokens.
pub const DEV_AUDIENCE: &str = "stepbox";
/// The private key's file in the data directory (mode 0600).
const KEY_FILE: &str = "jwt-dev-key.pem";

/// What a development token says.
#[derive(Debug, Clone, Default)]
pub struct DevTokenRequest {
    /// Subject.
    pub sub: String,
    /// Email, if any.
    pub email: Option<String>,
    /// Roles.
    pub roles: BTreeSet<String>,
    /// Permissions.
    pub permissions: BTreeSet<String>,
    /// Team, if any.
    pub team: Option<String>,
    /// Whether the holder just passed MFA (`mfa_time` = now).
    pub mfa: bool,
    /// Lifetime, seconds.
    pub ttl_secs: i64,
}

#[derive(Serialize)]
struct DevClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<&'a str>,
    roles: &'a BTreeSet<String>,
    permissions: &'a BTreeSet<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mfa_time: Option<i64>,
    sid: String,
}

/// The development signing key. `Debug` shows only its id.
pub struct DevKey {
    kid: String,
    signing: EncodingKey,
    public_pem: String,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey").field("kid", &self.kid).finish()
    }
}

/// Why the development key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {kind}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        kind: std::io::ErrorKind,
    },
    /// The key file does not hold an Ed25519 private key.
    #[error("{0} does not hold an Ed25519 private key in PKCS#8 PEM")]
    Invalid(PathBuf),
    /// No randomness for a new key or a session id.
    #[error("no randomness: {0}")]
    Random(String),
    /// The token could not be signed.
    #[error("signing the token failed")]
    Sign,
}

impl DevKey {
    /// The key in `dir`, made (0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, DevKeyError> {
        let path = dir.join(KEY_FILE);
        let io = |e: std::io::Error| DevKeyError::Io {
            path: path.clone(),
            kind: e.kind(),
        };
        let signing = match std::fs::read_to_string(&path) {
            Ok(pem) => {
                SigningKey::from_pkcs8_pem(&pem).map_err(|_| DevKeyError::Invalid(path.clone()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = zeroize::Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut *secret).map_err(|e| DevKeyError::Random(e.to_string()))?;
                let key = SigningKey::from_bytes(&secret);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|_| DevKeyError::Invalid(path.clone()))?;
                std::fs::create_dir_all(dir).map_err(io)?;
                write_private(&path, pem.as_bytes()).map_err(io)?;
                key
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_signing(&signing).ok_or(DevKeyError::Invalid(path))
    }

    fn from_signing(signing: &SigningKey) -> Option<Self> {
        let verifying = signing.verifying_key();
        let kid = format!(
            "dev-{}",
            &hex::encode(Sha256::digest(verifying.as_bytes()))[..16]
        );
        let pkcs8 = signing.to_pkcs8_pem(LineEnding::LF).ok()?;
        let public_pem = verifying.to_public_key_pem(LineEnding::LF).ok()?;
        Some(Self {
            kid,
            signing: EncodingKey::from_ed_pem(pkcs8.as_bytes()).ok()?,
            public_pem,
        })
    }

    /// The key's id, the `kid` of its tokens.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Keys that verify this key's tokens.
    pub fn key_set(&self) -> KeySet {
        let mut keys = KeySet::default();
        keys.add_pem(&self.kid, self.public_pem.as_bytes())
            .expect("an Ed25519 public key made here parses");
        keys
    }

    /// A signed token for `request`, issued at `now` (unix seconds).
    pub fn mint(&self, request: &DevTokenRequest, now: i64) -> Result<String, DevKeyError> {
        let mut sid = [0u8; 12];
        getrandom::fill(&mut sid).map_err(|e| DevKeyError::Random(e.to_string()))?;
        let claims = DevClaims {
            iss: DEV_ISSUER,
            aud: DEV_AUDIENCE,
            sub: &request.sub,
            iat: now,
            nbf: now,
            exp: now.saturating_add(request.ttl_secs),
            email: request.email.as_deref(),
            team: request.team.as_deref(),
            roles: &request.roles,
            permissions: &request.permissions,
            mfa_time: request.mfa.then_some(now),
            sid: format!("sess_{}", hex::encode(sid)),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing).map_err(|_| DevKeyError::Sign)
    }
}

/// Write a new file readable by its owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}
