//! Second step of `customer_success.process_refund`: approves a validated refund by policy
//! (no approval needed, or under the auto-approve limit), else rejects it or leaves it pending.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stepbox_guest::{Ctx, Step, StepError, export_step, info};

/// Step configuration from the workflow definition.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Refunds up to this amount are approved without a manager.
    auto_approve_limit: f64,
    /// What to do with a refund above the limit.
    on_exceed: OnExceed,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum OnExceed {
    /// Fail the step permanently.
    Reject,
    /// Fail retryably: a manager may approve it before the next attempt.
    Pending,
}

/// The part of `validate_refund_request`'s result this step needs.
#[derive(Deserialize)]
struct Validated {
    amount: f64,
    needs_approval: bool,
}

#[derive(Serialize)]
struct Approval {
    approved: bool,
    approver: &'static str,
    amount: f64,
}

struct GetManagerApproval;

impl Step for GetManagerApproval {
    type Config = Config;
    type Output = Approval;

    fn run(ctx: &Ctx, config: Config) -> Result<Approval, StepError> {
        let validated: Validated = ctx.upstream("validate_refund_request")?;
        let amount = validated.amount;

        let approver = if !validated.needs_approval {
            "policy:no_approval_needed"
        } else if amount <= config.auto_approve_limit {
            "policy:auto_approve_limit"
        } else {
            return Err(match config.on_exceed {
                OnExceed::Reject => {
                    info!({ "decision" => "rejected", "amount" => amount }, "refund not approved");
                    StepError::permanent(
                        "approval_denied",
                        format!(
                            "refund amount exceeds the auto-approve limit of {:.2}",
                            config.auto_approve_limit
                        ),
                    )
                }
                OnExceed::Pending => {
                    info!({ "decision" => "pending", "amount" => amount }, "refund awaits a manager");
                    StepError::retryable("approval_pending", "refund awaits a manager's approval")
                        .retry_after(Duration::from_secs(60))
                }
            });
        };

        info!(
            { "decision" => "approved", "approver" => approver, "amount" => amount },
            "refund approved"
        );
        Ok(Approval {
            approved: true,
            approver,
            amount,
        })
    }
}

export_step!(GetManagerApproval);
