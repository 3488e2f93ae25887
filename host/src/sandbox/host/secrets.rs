//! `secrets`: only granted names; the guest gets a per-attempt random placeholder, never
//! the value. The HTTP capability swaps placeholders for values in outbound requests.

use std::collections::BTreeMap;

use crate::sandbox::bindings::secrets::{Host, SecretError};
use crate::sandbox::grants::SecretValue;
use crate::sandbox::record::{Capability, Denial};
use crate::sandbox::state::View;

use super::bounded;

/// Random bytes in a placeholder: unguessable, so a guest cannot forge one for a secret
/// it was not granted.
const PLACEHOLDER_ENTROPY: usize = 16;

/// Granted secrets and the placeholders issued for them in this attempt.
pub(crate) struct SecretsCap {
    granted: BTreeMap<String, SecretValue>,
    /// placeholder → (name, value)
    issued: Vec<(String, String, SecretValue)>,
}

impl SecretsCap {
    pub(crate) fn new(granted: BTreeMap<String, SecretValue>) -> Self {
        Self {
            granted,
            issued: Vec::new(),
        }
    }

    /// Placeholders issued so far, with the secret name and value each stands for.
    pub(crate) fn issued(&self) -> impl Iterator<Item = (&str, &str, &SecretValue)> {
        self.issued
            .iter()
            .map(|(p, n, v)| (p.as_str(), n.as_str(), v))
    }

    /// Values of every granted secret (issued or not), to mask them in responses.
    pub(crate) fn values(&self) -> impl Iterator<Item = &SecretValue> {
        self.granted.values()
    }
}

fn new_placeholder() -> wasmtime::Result<String> {
    let mut bytes = [0u8; PLACEHOLDER_ENTROPY];
    getrandom::fill(&mut bytes).map_err(|e| wasmtime::format_err!("no randomness: {e}"))?;
    Ok(format!("{{{{stepbox-secret:{}}}}}", hex::encode(bytes)))
}

impl Host for View<'_, SecretsCap> {
    fn placeholder(&mut self, name: String) -> wasmtime::Result<Result<String, SecretError>> {
        self.shared.charge()?;
        let Some(value) = self.cap.granted.get(&name).cloned() else {
            self.shared.record.denials.push(Denial {
                capability: Capability::Secrets,
                target: bounded(&name),
                reason: "secret not granted to this step".into(),
            });
            return Ok(Err(SecretError::NotGranted(name)));
        };
        if let Some((placeholder, ..)) = self.cap.issued.iter().find(|(_, n, _)| *n == name) {
            return Ok(Ok(placeholder.clone()));
        }
        let placeholder = new_placeholder()?;
        self.cap
            .issued
            .push((placeholder.clone(), name.clone(), value));
        self.shared.record.secrets_used.push(name);
        Ok(Ok(placeholder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::host::testing;

    #[test]
    fn granted_secret_yields_a_placeholder_not_the_value() {
        let mut cap = SecretsCap::new([("API_KEY".into(), SecretValue::new("sk_live_42"))].into());
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        let placeholder = view.placeholder("API_KEY".into()).unwrap().unwrap();
        assert!(!placeholder.contains("sk_live_42"));
        assert!(placeholder.starts_with("{{stepbox-secret:"));
        assert_eq!(
            view.placeholder("API_KEY".into()).unwrap().unwrap(),
            placeholder
        );
        assert_eq!(shared.record.secrets_used, vec!["API_KEY".to_owned()]);
    }

    #[test]
    fn ungranted_secret_is_refused_and_recorded() {
        let mut cap = SecretsCap::new(BTreeMap::new());
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        assert_eq!(
            view.placeholder("DB_PASSWORD".into()).unwrap(),
            Err(SecretError::NotGranted("DB_PASSWORD".into()))
        );
        assert_eq!(shared.record.denials[0].target, "DB_PASSWORD");
        assert!(shared.record.secrets_used.is_empty());
    }
}
