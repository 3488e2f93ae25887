//! What one step may do, and the task data it may see: the allowed sets the host
//! imports check on every call.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use url::Url;

use crate::classify::{Classification, ContextClassification, DataClass};

/// A step's grants, resolved from its declaration and the namespace policy before the
/// attempt starts. Deny by default: an empty `Grants` lets a step read nothing, use no
/// secret and call no host.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Context fields the step declared in `reads`.
    pub reads: BTreeSet<String>,
    /// Upstream steps whose results the step may read (its dependencies).
    pub upstream: BTreeSet<String>,
    /// The highest classification the step may see in clear; fields above it read as
    /// `"[REDACTED]"`.
    pub clearance: Classification,
    /// Granted secrets by name.
    pub secrets: BTreeMap<String, SecretValue>,
    /// Origins (scheme, host, port) the step may call.
    pub origins: BTreeSet<Origin>,
}

/// A secret's value. It never prints: `Debug` and `Display` show only `[secret]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: only the HTTP capability substitutes it, into outbound requests.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret]")
    }
}

/// An HTTP origin: scheme, lowercase host and port (the scheme's default when omitted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

/// Why a URL is not a usable origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not an absolute URL.
    #[error("`{0}` is not an absolute URL")]
    NotAUrl(String),
    /// Only `http` and `https` are allowed.
    #[error("scheme `{0}` is not allowed (use http or https)")]
    Scheme(String),
    /// Credentials in a URL would bypass the secrets capability.
    #[error("URLs with user information are not allowed")]
    UserInfo,
}

impl Origin {
    /// The origin of an absolute `http`/`https` URL.
    pub fn of(url: &Url) -> Result<Self, OriginError> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(OriginError::Scheme(scheme.to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OriginError::UserInfo);
        }
        let host = url
            .host_str()
            .ok_or_else(|| OriginError::NotAUrl(url.to_string()))?
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| OriginError::NotAUrl(url.to_string()))?;
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
            port,
        })
    }

    /// Parse `https://host[:port]` (a path, if any, is ignored).
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        let url = Url::parse(text).map_err(|_| OriginError::NotAUrl(text.to_owned()))?;
        Self::of(&url)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The task data an attempt may draw on.
#[derive(Debug, Clone, Default)]
pub struct TaskData {
    /// The task context (top-level fields).
    pub context: serde_json::Map<String, serde_json::Value>,
    /// Each context field's class, and the task's known PII values.
    pub classification: ContextClassification,
    /// Results of completed upstream steps, by step name.
    pub upstream: BTreeMap<String, serde_json::Value>,
}

impl TaskData {
    /// The classification level of a context field; unclassified fields are internal.
    pub(crate) fn level_of(&self, field: &str) -> Classification {
        self.classification
            .fields
            .get(field)
            .copied()
            .map_or(Classification::Internal, DataClass::level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_includes_default_port_and_lowercases_host() {
        let origin = Origin::parse("https://Notify.Example.com/v1/x").unwrap();
        assert_eq!(origin.to_string(), "https://notify.example.com:443");
        assert_eq!(
            origin,
            Origin::parse("https://notify.example.com:443").unwrap()
        );
        assert_ne!(origin, Origin::parse("http://notify.example.com").unwrap());
        assert_ne!(
            origin,
            Origin::parse("https://notify.example.com:8443").unwrap()
        );
    }

    #[test]
    fn origin_refuses_other_schemes_and_credentials() {
        assert_eq!(
            Origin::parse("file:///etc/passwd"),
            Err(OriginError::Scheme("file".into()))
        );
        assert_eq!(
            Origin::parse("https://user:pw@example.com"),
            Err(OriginError::UserInfo)
        );
        assert!(matches!(
            Origin::parse("not a url"),
            Err(OriginError::NotAUrl(_))
        ));
    }

    #[test]
    fn secret_value_never_prints() {
        let secret = SecretValue::new("sk_live_123");
        assert_eq!(format!("{secret:?}"), "[secret]");
    }
}
