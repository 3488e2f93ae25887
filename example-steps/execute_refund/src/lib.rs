//! Third step of `customer_success.process_refund`: executes an approved refund under an id
//! that is deterministic per task and order, so a retry never issues a second refund.

use serde::{Deserialize, Serialize};
use serde_json::json;
use stepbox_guest::{Ctx, Step, StepError, export_step, info};

/// Step configuration from the workflow definition.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Prefix of the refund id.
    refund_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refund_prefix: "rf_".to_owned(),
        }
    }
}

/// The part of `validate_refund_request`'s result this step needs.
#[derive(Deserialize)]
struct Validated {
    order_id: String,
    amount: f64,
    currency: String,
}

/// The part of `get_manager_approval`'s result this step needs.
#[derive(Deserialize)]
struct Approval {
    approved: bool,
}

#[derive(Serialize)]
struct Executed {
    refund_id: String,
    order_id: String,
    amount: f64,
    currency: String,
    status: &'static str,
}

/// FNV-1a, 64 bits.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

struct ExecuteRefund;

impl Step for ExecuteRefund {
    type Config = Config;
    type Output = Executed;

    fn run(ctx: &Ctx, config: Config) -> Result<Executed, StepError> {
        let validated: Validated = ctx.upstream("validate_refund_request")?;
        let approval: Approval = ctx.upstream("get_manager_approval")?;
        if !approval.approved {
            return Err(StepError::permanent(
                "not_approved",
                "the refund has not been approved",
            ));
        }

        // Same task, same order, same id: a retry finds the refund it already issued.
        let hash = fnv1a64(&[ctx.task_id().as_bytes(), validated.order_id.as_bytes()]);
        let refund_id = format!("{}{hash:016x}", config.refund_prefix);

        ctx.audit(
            "refund.executed",
            &refund_id,
            &json!({
                "order_id": validated.order_id,
                "amount": validated.amount,
                "currency": validated.currency,
            }),
        )?;
        info!(
            { "refund_id" => refund_id, "amount" => validated.amount },
            "refund executed"
        );
        Ok(Executed {
            refund_id,
            order_id: validated.order_id,
            amount: validated.amount,
            currency: validated.currency,
            status: "executed",
        })
    }
}

export_step!(ExecuteRefund);
