//! `stepbox serve --config FILE`: the production settings in one YAML file, with flags
//! and environment variables overriding it. Unknown keys are refused, so a misspelt
//! setting is an error at start-up rather than a default silently kept.
//!
//! ```yaml
//! listen: 0.0.0.0:8443
//! tls: { cert: /etc/stepbox/tls.crt, key: /etc/stepbox/tls.key }
//! database: postgres://stepbox@db.internal/stepbox
//! keys: /etc/stepbox/keys.json          # away from the database and its backups
//! audit_key: /etc/stepbox/audit-signing.pem  # signs audit checkpoints; not a data key
//! subject_vault: /etc/stepbox/subject-vault.db  # with the key file, out of database backups
//! policy: /etc/stepbox/policy.json
//! workers: 8
//! rate_limits: { per_ip: 1000, per_principal: 200 }
//! jwt:
//!   issuer: https://idp.example.com/
//!   audience: stepbox
//!   jwks_file: /etc/stepbox/jwks.json     # and/or public_keys: { kid: file.pem }
//!   hs256_secret_env: STEPBOX_JWT_SECRET  # HS256 only when a secret is configured
//!   accept_dev_tokens: false              # also accept `stepbox token`'s development key
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::CliError;
use crate::auth::{DEV_AUDIENCE, DEV_ISSUER, DevKey, KeySet, Verifier};

/// The file's settings; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Database URL.
    pub database: Option<String>,
    /// Key file.
    pub keys: Option<PathBuf>,
    /// Audit checkpoint signing key file.
    pub audit_key: Option<PathBuf>,
    /// Subject vault file.
    pub subject_vault: Option<PathBuf>,
    /// Access policy file.
    pub policy: Option<PathBuf>,
    /// Workers in this process.
    pub workers: Option<usize>,
    /// Request budgets.
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    /// Which tokens to accept; without it, only the development key's.
    pub jwt: Option<JwtConfig>,
}

/// `tls:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// `rate_limits:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second per client address.
    pub per_ip: Option<NonZeroU32>,
    /// Requests per second per principal.
    pub per_principal: Option<NonZeroU32>,
}

/// `jwt:` an identity provider's tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// A JWKS document of the provider's public keys.
    pub jwks_file: Option<PathBuf>,
    /// Public keys in PEM by `kid`.
    #[serde(default)]
    pub public_keys: BTreeMap<String, PathBuf>,
    /// The environment variable holding an HS256 secret (at least 32 bytes), if HS256
    /// tokens are to be accepted at all.
    pub hs256_secret_env: Option<String>,
    /// Also accept tokens minted by `stepbox token` (development only).
    #[serde(default)]
    pub accept_dev_tokens: bool,
}

impl ServeConfig {
    /// The file at `path`, or every setting unset when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, CliError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: path.display().to_string(),
            source,
        })?;
        yaml_serde::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{}: not a serve configuration: {e}",
                path.display()
            ))
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The token verifier `jwt` describes, or the development key's when there is none.
pub fn verifier(jwt: Option<&JwtConfig>, dev_key: &DevKey) -> Result<Verifier, CliError> {
    let Some(jwt) = jwt else {
        return Ok(Verifier::new(dev_key.key_set(), DEV_ISSUER, DEV_AUDIENCE));
    };
    let bad = |what: String| CliError::Usage(format!("jwt: {what}"));
    let mut keys = KeySet::default();
    if let Some(path) = &jwt.jwks_file {
        let text = String::from_utf8(read(path)?)
            .map_err(|_| bad(format!("{} is not UTF-8", path.display())))?;
        keys.add_jwks(&text)
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    }
    for (kid, path) in &jwt.public_keys {
        keys.add_pem(kid, &read(path)?)
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    }
    if let Some(var) = &jwt.hs256_secret_env {
        let secret = std::env::var(var).map_err(|_| bad(format!("{var} is not set")))?;
        keys.add_hs256_secret("hs256", secret.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
    }
    if keys.is_empty() && !jwt.accept_dev_tokens {
        return Err(bad(
            "no key to verify tokens with: give jwks_file, public_keys or hs256_secret_env".into(),
        ));
    }
    let provider = Verifier::new(keys, &jwt.issuer, &jwt.audience);
    if !jwt.accept_dev_tokens {
        return Ok(provider);
    }
    Ok(provider.or(Verifier::new(dev_key.key_set(), DEV_ISSUER, DEV_AUDIENCE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthError, DevTokenRequest};

    #[test]
    fn a_full_configuration_parses_and_a_misspelt_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stepbox.yaml");
        std::fs::write(
            &path,
            "listen: 0.0.0.0:8443\ntls: { cert: /etc/tls.crt, key: /etc/tls.key }\n\
             database: postgres://stepbox@db/stepbox\nkeys: /etc/keys.json\nworkers: 8\n\
             rate_limits: { per_ip: 50 }\n\
             jwt: { issuer: https://idp.example.com/, audience: stepbox, jwks_file: /etc/jwks.json }\n",
        )
        .unwrap();
        let config = ServeConfig::load(Some(&path)).unwrap();
        assert_eq!(config.listen, Some("0.0.0.0:8443".parse().unwrap()));
        assert_eq!(config.workers, Some(8));
        assert_eq!(config.rate_limits.per_ip.map(NonZeroU32::get), Some(50));
        assert_eq!(config.rate_limits.per_principal, None);
        assert_eq!(config.jwt.unwrap().audience, "stepbox");

        std::fs::write(&path, "listen: 0.0.0.0:8443\nworker: 8\n").unwrap();
        let err = ServeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `worker`"), "{err}");
        assert!(ServeConfig::load(None).unwrap().listen.is_none());
    }

    #[test]
    fn the_jwt_section_decides_which_tokens_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevKey::load_or_create(dir.path()).unwrap();
        let request = DevTokenRequest {
            sub: "user_1".into(),
            ttl_secs: 600,
            ..DevTokenRequest::default()
        };
        let now = 1_764_000_000;
        let token = dev.mint(&request, now).unwrap();

        // No jwt section: the development key.
        let default = verifier(None, &dev).unwrap();
        assert!(default.verify(&token, now).is_ok());

        // A provider only: development tokens are refused.
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
        let hs = "STEPBOX_TEST_JWT_SECRET_CONFIG";
        // SAFETY: this test is the only reader and writer of this variable.
        unsafe { std::env::set_var(hs, "0123456789abcdef0123456789abcdef") };
        let mut jwt = JwtConfig {
            issuer: "https://idp.example.com/".into(),
            audience: "stepbox".into(),
            jwks_file: Some(jwks),
            public_keys: BTreeMap::new(),
            hs256_secret_env: Some(hs.into()),
            accept_dev_tokens: false,
        };
        let provider = verifier(Some(&jwt), &dev).unwrap();
        assert!(matches!(
            provider.verify(&token, now),
            Err(AuthError::UnknownKey | AuthError::AlgorithmRefused)
        ));
        jwt.accept_dev_tokens = true;
        assert!(
            verifier(Some(&jwt), &dev)
                .unwrap()
                .verify(&token, now)
                .is_ok()
        );

        // Nothing to verify with is an error, and so is a secret that is not set.
        jwt.accept_dev_tokens = false;
        jwt.hs256_secret_env = Some("STEPBOX_TEST_UNSET_SECRET".into());
        let err = verifier(Some(&jwt), &dev).unwrap_err().to_string();
        assert!(
            err.contains("STEPBOX_TEST_UNSET_SECRET is not set"),
            "{err}"
        );
        jwt.hs256_secret_env = None;
        let err = verifier(Some(&jwt), &dev).unwrap_err().to_string();
        assert!(err.contains("no key to verify tokens with"), "{err}");
    }
}
