//! The import allow-list: a component may import the `stepbox:step` interfaces and the
//! parts of WASI that carry no authority here (clocks, random, exit, captured stdio,
//! closed stdin, an empty environment). Anything else — `wasi:filesystem`,
//! `wasi:sockets`, `wasi:http`, unknown packages — is refused when the component is
//! loaded, naming the import.

/// Interfaces (package/interface, without version) a step may import, and the major
/// version line each must be on.
const ALLOWED: &[(&str, &str)] = &[
    ("stepbox:step/types", "0.1."),
    ("stepbox:step/context", "0.1."),
    ("stepbox:step/log", "0.1."),
    ("stepbox:step/audit", "0.1."),
    ("stepbox:step/secrets", "0.1."),
    ("stepbox:step/http", "0.1."),
    ("wasi:io/error", "0.2."),
    ("wasi:io/poll", "0.2."),
    ("wasi:io/streams", "0.2."),
    ("wasi:clocks/wall-clock", "0.2."),
    ("wasi:clocks/monotonic-clock", "0.2."),
    ("wasi:random/random", "0.2."),
    ("wasi:random/insecure", "0.2."),
    ("wasi:random/insecure-seed", "0.2."),
    ("wasi:cli/environment", "0.2."),
    ("wasi:cli/exit", "0.2."),
    ("wasi:cli/stdin", "0.2."),
    ("wasi:cli/stdout", "0.2."),
    ("wasi:cli/stderr", "0.2."),
    ("wasi:cli/terminal-input", "0.2."),
    ("wasi:cli/terminal-output", "0.2."),
    ("wasi:cli/terminal-stdin", "0.2."),
    ("wasi:cli/terminal-stdout", "0.2."),
    ("wasi:cli/terminal-stderr", "0.2."),
];

/// Whether a component import name (`wasi:cli/exit@0.2.6`) is allowed.
pub(crate) fn is_allowed(import: &str) -> bool {
    let (interface, version) = import.split_once('@').unwrap_or((import, ""));
    ALLOWED
        .iter()
        .any(|(name, line)| *name == interface && version.starts_with(line))
}

/// The first import not on the allow-list, if any.
pub(crate) fn first_denied<'a>(imports: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    imports.into_iter().find(|name| !is_allowed(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stepbox_and_harmless_wasi_are_allowed() {
        assert!(is_allowed("stepbox:step/context@0.1.0"));
        assert!(is_allowed("stepbox:step/context@0.1.7"));
        assert!(is_allowed("wasi:cli/stderr@0.2.6"));
        assert!(is_allowed("wasi:random/random@0.2.0"));
    }

    #[test]
    fn authority_bearing_or_unknown_imports_are_refused() {
        assert!(!is_allowed("wasi:filesystem/preopens@0.2.6"));
        assert!(!is_allowed("wasi:sockets/tcp@0.2.6"));
        assert!(!is_allowed("wasi:http/outgoing-handler@0.2.6"));
        assert!(!is_allowed("stepbox:step/context@0.2.0"));
        assert!(!is_allowed("stepbox:step/context"));
        assert!(!is_allowed("evil:step/context@0.1.0"));
        assert_eq!(
            first_denied(["wasi:cli/exit@0.2.6", "wasi:sockets/tcp@0.2.6"]),
            Some("wasi:sockets/tcp@0.2.6")
        );
    }
}
