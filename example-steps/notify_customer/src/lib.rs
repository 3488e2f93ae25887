//! Last step of `customer_success.process_refund`: tells the customer, through the
//! notification service, that the refund was executed.

use serde::{Deserialize, Serialize};
use serde_json::json;
use stepbox_guest::http::Request;
use stepbox_guest::{Ctx, Step, StepError, export_step, info};

/// Step configuration from the workflow definition.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// URL of the notification service's send endpoint.
    endpoint: String,
    /// Name of the secret holding the service's API key.
    #[serde(default = "default_secret")]
    secret: String,
}

fn default_secret() -> String {
    "NOTIFY_API_KEY".to_owned()
}

/// The part of `execute_refund`'s result this step needs.
#[derive(Deserialize)]
struct Executed {
    refund_id: String,
    amount: f64,
    currency: String,
}

#[derive(Serialize)]
struct Notified {
    notified: bool,
    status: u16,
    refund_id: String,
}

struct NotifyCustomer;

impl Step for NotifyCustomer {
    type Config = Config;
    type Output = Notified;

    fn run(ctx: &Ctx, config: Config) -> Result<Notified, StepError> {
        // Personal data: goes into the request body and nowhere else.
        let email: String = ctx.get("customer_email")?;
        let refund: Executed = ctx.upstream("execute_refund")?;
        let key = ctx.secret(&config.secret)?;

        let response = Request::post(&config.endpoint)
            .header("authorization", format!("Bearer {key}"))
            .json(&json!({
                "to": email,
                "template": "refund_executed",
                "refund_id": refund.refund_id,
                "amount": refund.amount,
                "currency": refund.currency,
            }))?
            .send()?;

        let status = response.status;
        if response.is_success() {
            info!(
                { "refund_id" => refund.refund_id, "status" => status },
                "customer notified"
            );
            Ok(Notified {
                notified: true,
                status,
                refund_id: refund.refund_id,
            })
        } else if status == 429 || (500..600).contains(&status) {
            Err(StepError::retryable(
                "notify_unavailable",
                format!("notification service unavailable (HTTP {status})"),
            ))
        } else {
            Err(StepError::permanent(
                "notify_rejected",
                format!("notification service rejected the request (HTTP {status})"),
            ))
        }
    }
}

export_step!(NotifyCustomer);
