//! Components are validated when loaded: imports outside the allowed set, core modules
//! and garbage are refused with an error that names the problem.

use stepbox::sandbox::LoadError;

use crate::support::*;

#[test]
fn a_component_importing_the_filesystem_is_refused_naming_the_import() {
    match sandbox().load(&component("forbidden_filesystem")) {
        Err(LoadError::DeniedImport { import }) => {
            assert!(import.starts_with("wasi:filesystem/"), "{import}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("forbidden_filesystem loaded"),
    }
}

#[test]
fn a_component_importing_sockets_is_refused_naming_the_import() {
    match sandbox().load(&component("forbidden_sockets")) {
        Err(LoadError::DeniedImport { import }) => {
            assert!(import.starts_with("wasi:sockets/"), "{import}");
            let message = LoadError::DeniedImport {
                import: import.clone(),
            }
            .to_string();
            assert!(message.contains(&import));
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("forbidden_sockets loaded"),
    }
}

#[test]
fn a_core_module_or_garbage_is_not_a_component() {
    let core_module = b"\0asm\x01\0\0\0";
    assert!(matches!(
        sandbox().load(core_module),
        Err(LoadError::Invalid(_))
    ));
    assert!(matches!(
        sandbox().load(b"definitely not wasm"),
        Err(LoadError::Invalid(_))
    ));
    let mut truncated = component("noop");
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        sandbox().load(&truncated),
        Err(LoadError::Invalid(_))
    ));
}

#[test]
fn every_example_step_loads_and_is_compiled_once_per_digest() {
    for name in [
        "validate_refund_request",
        "get_manager_approval",
        "execute_refund",
        "notify_customer",
        "noop",
    ] {
        let first = load(name);
        let again = load(name);
        assert_eq!(first.digest(), again.digest());
        assert_eq!(first.digest().len(), 64);
    }
}
