//! Write stepbox workflow steps in Rust.
//!
//! A step is a type implementing [`Step`], exported with [`export_step!`] and built with
//! `cargo build --release --target wasm32-wasip2`: the result in
//! `target/wasm32-wasip2/release/<crate>.wasm` is the component you upload. The step runs
//! in the stepbox sandbox, where the host is the only door to data, secrets and the
//! network: [`Ctx::get`] reads a declared context field, [`Ctx::secret`] hands out an
//! opaque placeholder for a granted secret, [`http::Request::send`] asks the host to call
//! an allow-listed service, the [`info!`] family of macros logs (redacted by the host) and
//! [`Ctx::audit`] adds a business event to the audit trail.
//!
//! Your crate needs `crate-type = ["cdylib"]` under `[lib]`, and depends on this crate and
//! `serde`.
//!
//! # Example
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use stepbox_guest::{Ctx, Step, StepError, export_step, info};
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     /// Refunds above this need a manager's approval.
//!     approval_threshold: f64,
//! }
//!
//! #[derive(Serialize)]
//! struct Checked {
//!     amount: f64,
//!     needs_approval: bool,
//! }
//!
//! struct CheckRefund;
//!
//! impl Step for CheckRefund {
//!     type Config = Config;
//!     type Output = Checked;
//!
//!     fn run(ctx: &Ctx, config: Config) -> Result<Checked, StepError> {
//!         let amount: f64 = ctx.get("refund_amount")?;
//!         if amount <= 0.0 {
//!             return Err(StepError::permanent("invalid_amount", "refund amount must be positive"));
//!         }
//!         let needs_approval = amount > config.approval_threshold;
//!         info!({ "needs_approval" => needs_approval }, "checked refund of {amount:.2}");
//!         ctx.audit("refund.checked", ctx.task_id(), &serde_json::json!({ "amount": amount }))?;
//!         Ok(Checked { amount, needs_approval })
//!     }
//! }
//!
//! export_step!(CheckRefund);
//! ```

#![deny(missing_docs)]

// Lets the generated bindings name this crate the same way from inside and outside.
extern crate self as stepbox_guest;

mod ctx;
mod error;
pub mod http;
pub mod log;

pub use ctx::{Ctx, NoConfig, Secret};
pub use error::{ErrorKind, StepError};

use serde::{Serialize, de::DeserializeOwned};

/// The generated WIT bindings. Exposed for the [`export_step!`] macro and for steps that
/// must talk to the host without this crate's types (the hostile test steps do).
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "step",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__stepbox_export_world",
        default_bindings_module: "::stepbox_guest::bindings",
        runtime_path: "::stepbox_guest::__wit_bindgen::rt",
        bitflags_path: "::stepbox_guest::__wit_bindgen::bitflags",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// One workflow step.
pub trait Step {
    /// The step's `config` from the workflow definition. Use [`NoConfig`] when there is none.
    type Config: DeserializeOwned;
    /// What the step returns; stored as the step's JSON result and readable by downstream
    /// steps through [`Ctx::upstream`].
    type Output: Serialize;

    /// Run one attempt.
    fn run(ctx: &Ctx, config: Self::Config) -> Result<Self::Output, StepError>;
}

/// Export a [`Step`] implementation as the component's `run` entry point.
///
/// Use it once per crate, at the crate root.
#[macro_export]
macro_rules! export_step {
    ($step:ty) => {
        #[doc(hidden)]
        struct __StepboxExport;

        impl $crate::bindings::Guest for __StepboxExport {
            fn run(
                input: $crate::bindings::stepbox::step::types::StepInput,
            ) -> ::core::result::Result<
                ::std::string::String,
                $crate::bindings::stepbox::step::types::StepError,
            > {
                $crate::__run::<$step>(input)
            }
        }

        $crate::bindings::__stepbox_export_world!(__StepboxExport);
    };
}

/// Glue between the WIT entry point and [`Step::run`]: parse the config, run, serialise.
#[doc(hidden)]
pub fn __run<S: Step>(
    input: bindings::stepbox::step::types::StepInput,
) -> Result<String, bindings::stepbox::step::types::StepError> {
    let bindings::stepbox::step::types::StepInput {
        task_id,
        step_name,
        attempt,
        config,
    } = input;
    let config: S::Config = serde_json::from_str(&config).map_err(|e| {
        StepError::permanent("invalid_config", format!("step config does not parse: {e}"))
            .into_wit()
    })?;
    let ctx = Ctx::new(task_id, step_name, attempt);
    let output = S::run(&ctx, config).map_err(StepError::into_wit)?;
    serde_json::to_string(&output).map_err(|e| {
        StepError::permanent(
            "invalid_output",
            format!("step output does not serialise: {e}"),
        )
        .into_wit()
    })
}
