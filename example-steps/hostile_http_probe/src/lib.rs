//! Hostile: sends whatever request its config describes, with `{secret}` in header values
//! or the body replaced by a granted secret's placeholder, and returns what came back.
//! The tests use it to try the HTTP capability's defences one by one (compressed or
//! partial echoes of a secret, oversized expansions, redirects that move a secret).

use serde::{Deserialize, Serialize};
use stepbox_guest::http::{HttpError, Request};
use stepbox_guest::{Ctx, Step, StepError, export_step};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    /// Repeat the body this many times (to build large requests cheaply).
    #[serde(default = "one")]
    repeat: usize,
}

fn one() -> usize {
    1
}

#[derive(Serialize)]
struct Probe {
    status: u16,
    body: String,
}

struct HttpProbe;

impl Step for HttpProbe {
    type Config = Config;
    type Output = Probe;

    fn run(ctx: &Ctx, config: Config) -> Result<Probe, StepError> {
        let placeholder = match &config.secret {
            Some(name) => ctx.secret(name)?.to_string(),
            None => String::new(),
        };
        let fill = |text: &str| text.replace("{secret}", &placeholder);
        let mut request = Request::new(config.method.as_str(), config.url.as_str());
        for (name, value) in &config.headers {
            request = request.header(name.as_str(), fill(value).repeat(config.repeat));
        }
        if let Some(body) = &config.body {
            request = request.body(fill(body).repeat(config.repeat));
        }
        let response = request.send().map_err(|e| {
            let code = match e {
                HttpError::Denied(_) => "http_denied",
                HttpError::InvalidRequest(_) => "http_invalid",
                HttpError::Timeout => "http_timeout",
                HttpError::TooLarge(_) => "http_too_large",
                HttpError::Transport(_) => "http_transport",
            };
            StepError::permanent(code, e.to_string())
        })?;
        Ok(Probe {
            status: response.status,
            body: response.text(),
        })
    }
}

export_step!(HttpProbe);
