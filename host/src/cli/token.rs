//! `stepbox token`: mint a development token with the data directory's key.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::CliError;
use crate::auth::{DEV_AUDIENCE, DEV_ISSUER, DevKey, DevTokenRequest};
use crate::engine::{Clock, SystemClock};

/// Longest lifetime a development token may have.
const MAX_TTL_SECS: i64 = 30 * 24 * 3600;

/// `stepbox token`
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Data directory holding the development signing key (made on first use).
    #[arg(long, env = "STEPBOX_DATA_DIR", default_value = "stepbox-data")]
    pub data_dir: PathBuf,
    /// Subject (user id).
    #[arg(long)]
    pub sub: String,
    /// Email.
    #[arg(long)]
    pub email: Option<String>,
    /// Roles, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Permissions, comma-separated (e.g. `customer_success.process_refund:execute`).
    #[arg(long, value_delimiter = ',')]
    pub permissions: Vec<String>,
    /// Team.
    #[arg(long)]
    pub team: Option<String>,
    /// The holder has just passed multi-factor authentication.
    #[arg(long)]
    pub mfa: bool,
    /// Lifetime: `90s`, `15m`, `1h`, `7d` (at most 30 days).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: i64,
}

/// Seconds in a lifetime such as `90s`, `15m`, `1h` or `7d`.
fn parse_ttl(text: &str) -> Result<i64, String> {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let n: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a lifetime such as 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    if !(1..=MAX_TTL_SECS).contains(&secs) {
        return Err(format!("`{text}`: a lifetime is between 1s and 30d"));
    }
    Ok(secs)
}

/// Print what the token says, then the token itself as the last line.
pub(super) fn run(args: TokenArgs) -> Result<ExitCode, CliError> {
    let key = DevKey::load_or_create(&args.data_dir)
        .map_err(|e| CliError::Usage(format!("development key: {e}")))?;
    let set = |items: Vec<String>| -> BTreeSet<String> {
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    if args.sub.trim().is_empty() {
        return Err(CliError::Usage("--sub must not be empty".into()));
    }
    let request = DevTokenRequest {
        sub: args.sub,
        email: args.email,
        roles: set(args.roles),
        permissions: set(args.permissions),
        team: args.team,
        mfa: args.mfa,
        ttl_secs: args.ttl,
    };
    let now = SystemClock.now_ms().div_euclid(1000);
    let token = key
        .mint(&request, now)
        .map_err(|e| CliError::Usage(format!("development key: {e}")))?;
    eprintln!(
        "development token for {} (roles: {}; permissions: {}; mfa: {}), issuer {DEV_ISSUER}, audience {DEV_AUDIENCE}, key {}, valid {}s",
        request.sub,
        join(&request.roles),
        join(&request.permissions),
        if request.mfa { "now" } else { "no" },
        key.kid(),
        request.ttl_secs,
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn join(items: &BTreeSet<String>) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn lifetimes_parse_with_units_and_stay_bounded() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        for bad in ["", "h", "1w", "-5m", "0s", "31d", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
