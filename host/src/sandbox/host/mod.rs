//! The host side of each `stepbox:step` import, one module per capability, each with the
//! same shape: the capability's per-attempt state (its allowed set), the generated
//! `Host` impl on its [`View`](super::state::View), and tests that call the `Host`
//! trait directly. A denial is both a guest-visible error and an entry in the record.

mod audit;
mod context;
mod http;
mod log;
mod secrets;

pub(crate) use audit::AuditCap;
pub(crate) use context::ContextCap;
pub(crate) use http::HttpCap;
pub(crate) use log::LogCap;
pub(crate) use secrets::SecretsCap;

use super::state::View;

/// Names longer than this are cut in the record (a guest could otherwise bloat it).
const MAX_RECORDED_NAME: usize = 128;

/// A guest-supplied name, bounded for the record.
fn bounded(name: &str) -> String {
    if name.len() <= MAX_RECORDED_NAME {
        return name.to_owned();
    }
    let mut end = MAX_RECORDED_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// The `types` interface has no functions, only the types the others share.
impl<C> super::bindings::types::Host for View<'_, C> {}

#[cfg(test)]
pub(crate) mod testing {
    //! A `Shared` for calling `Host` impls directly.
    use crate::sandbox::limits::Limits;
    use crate::sandbox::state::Shared;

    pub(crate) fn shared(host_calls: u32) -> Shared {
        Shared::for_tests(host_calls, Vec::new())
    }

    pub(crate) fn shared_with_known(known: Vec<String>) -> Shared {
        Shared::for_tests(Limits::default().host_calls, known)
    }
}
