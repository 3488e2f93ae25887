//! First step of `customer_success.process_refund`: checks the request and decides whether a
//! manager must approve it.

use serde::{Deserialize, Serialize};
use stepbox_guest::{Ctx, Step, StepError, export_step, info};

/// Step configuration from the workflow definition.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// No refund may exceed this amount.
    max_amount: f64,
    /// Refunds above this amount need a manager's approval.
    approval_threshold: f64,
}

/// The validated request, read by the downstream steps.
#[derive(Serialize)]
struct Validated {
    order_id: String,
    amount: f64,
    currency: String,
    reason: String,
    needs_approval: bool,
}

struct ValidateRefundRequest;

impl Step for ValidateRefundRequest {
    type Config = Config;
    type Output = Validated;

    fn run(ctx: &Ctx, config: Config) -> Result<Validated, StepError> {
        let amount: f64 = ctx.get("refund_amount")?;
        let order_id: String = ctx.get("order_id")?;
        let currency: String = ctx.get_opt("currency")?.unwrap_or_else(|| "USD".to_owned());
        let reason: Option<String> = ctx.get_opt("reason")?;

        if !amount.is_finite() || amount <= 0.0 {
            return Err(StepError::permanent(
                "invalid_amount",
                "refund amount must be a positive number",
            ));
        }
        if amount > config.max_amount {
            return Err(StepError::permanent(
                "amount_over_maximum",
                format!(
                    "refund amount exceeds the maximum of {:.2}",
                    config.max_amount
                ),
            ));
        }
        let reason = match reason.map(|r| r.trim().to_owned()) {
            Some(r) if !r.is_empty() => r,
            _ => {
                return Err(StepError::permanent(
                    "missing_reason",
                    "a refund needs a reason",
                ));
            }
        };
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(StepError::permanent(
                "invalid_currency",
                "currency must be a three-letter ISO 4217 code",
            ));
        }

        let needs_approval = amount > config.approval_threshold;
        info!(
            { "order_id" => order_id, "needs_approval" => needs_approval },
            "refund request valid"
        );
        Ok(Validated {
            order_id,
            amount,
            currency,
            reason,
            needs_approval,
        })
    }
}

export_step!(ValidateRefundRequest);
