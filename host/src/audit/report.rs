//! Compliance reports and SOC 2 controls, counted from the trail, the tasks and the stored
//! ciphertexts of a period — never from constants. A control's status follows from its
//! evidence: `effective`, `attention` (the evidence shows a gap) or `no_activity`.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use time::{Date, Month, OffsetDateTime, Time};

use super::AuditError;
use super::chain::Verification;
use super::checkpoint::CheckpointKeys;
use super::present::{parse_rfc3339, rfc3339};
use crate::crypto::KeyRing;
use crate::store::{AuditFilter, Store};

/// A calendar period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The month.
    Monthly,
    /// The quarter.
    Quarterly,
    /// The year.
    Annual,
}

impl std::str::FromStr for Period {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "monthly" => Ok(Self::Monthly),
            "quarterly" => Ok(Self::Quarterly),
            "annual" => Ok(Self::Annual),
            _ => Err(()),
        }
    }
}

fn start_of(date: Option<Date>) -> Option<i64> {
    let t = date?.with_time(Time::MIDNIGHT).assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The `[from, to)` unix-ms bounds of the `period` that contains `now_ms`.
pub fn period_bounds(period: Period, now_ms: i64) -> Option<(i64, i64)> {
    let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000).ok()?;
    let (year, month) = (now.year(), now.month() as u8);
    let first = match period {
        Period::Monthly => month,
        Period::Quarterly => (month - 1) / 3 * 3 + 1,
        Period::Annual => 1,
    };
    let length = match period {
        Period::Monthly => 1,
        Period::Quarterly => 3,
        Period::Annual => 12,
    };
    let date = |year: i32, month: u8| {
        Month::try_from(month)
            .ok()
            .and_then(|m| Date::from_calendar_date(year, m, 1).ok())
    };
    let (end_year, end_month) = if first + length > 12 {
        (year + 1, first + length - 12)
    } else {
        (year, first + length)
    };
    Some((
        start_of(date(year, first))?,
        start_of(date(end_year, end_month))?,
    ))
}

/// What a report is computed from besides the store.
pub struct ReportInputs<'a> {
    /// The key-encryption keys held.
    pub ring: &'a KeyRing,
    /// The checkpoint keys, if checkpoints are signed here.
    pub checkpoint_keys: Option<&'a CheckpointKeys>,
    /// Now, unix ms.
    pub now_ms: i64,
}

fn share(sealed: i64, stored: i64) -> Value {
    if stored == 0 {
        Value::Null
    } else {
        json!((sealed as f64 / stored as f64 * 10_000.0).round() / 100.0)
    }
}

/// The report over `[from_ms, to_ms)`: what ran, what was refused, who read data, what
/// was erased, how the data is classified and sealed, the keys, the chain.
pub async fn compliance_report(
    store: &Store,
    inputs: &ReportInputs<'_>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Value, AuditError> {
    let mut tx = store.begin_read().await?;
    let counts = tx.audit_counts(from_ms, to_ms).await?;
    let auth_codes = tx.audit_codes("auth.failed", from_ms, to_ms).await?;
    let denials = tx.denial_counts(from_ms, to_ms).await?;
    let tasks = tx.task_counts(from_ms, to_ms).await?;
    let coverage = tx.sealed_coverage().await?;
    let (data_keys, destroyed) = tx.data_key_counts().await?;
    let by_kek = tx.data_keys_by_kek().await?;
    let anonymous_successes = tx
        .count_audit(&AuditFilter {
            actor: Some("anonymous".into()),
            outcome: Some("success".into()),
            from_ts: Some(from_ms),
            until_ts: Some(to_ms),
            ..AuditFilter::default()
        })
        .await?;
    tx.commit().await?;
    let chain: Verification = match inputs.checkpoint_keys {
        Some(keys) => super::verify_signed(store, keys).await?,
        None => super::verify(store).await?,
    };

    let count = |action: &str| -> i64 {
        counts
            .iter()
            .filter(|(a, _, _)| a == action)
            .map(|(_, _, n)| n)
            .sum()
    };
    let mut by_workflow: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_classification: BTreeMap<String, i64> = BTreeMap::new();
    let mut pii: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    for group in &tasks {
        let name = format!("{}.{}", group.namespace, group.workflow);
        *by_workflow.entry(name.clone()).or_default() += group.count;
        *by_classification
            .entry(group.classification.clone())
            .or_default() += group.count;
        *by_status.entry(group.status.clone()).or_default() += group.count;
        if group.contains_pii {
            *pii.entry(name).or_default() += group.count;
        }
    }
    let tasks_created: i64 = tasks.iter().map(|g| g.count).sum();
    let mut unauthorized_by_action: BTreeMap<String, i64> = BTreeMap::new();
    let mut unauthorized_by_code: BTreeMap<String, i64> = BTreeMap::new();
    let mut unauthorized = 0;
    for (action, code, n) in &denials {
        if action == "auth.failed" {
            continue;
        }
        unauthorized += n;
        *unauthorized_by_action.entry(action.clone()).or_default() += n;
        *unauthorized_by_code
            .entry(code.clone().unwrap_or_else(|| "unspecified".into()))
            .or_default() += n;
    }
    let auth_by_code: BTreeMap<String, i64> = auth_codes
        .iter()
        .map(|(code, n)| (code.clone().unwrap_or_else(|| "unspecified".into()), *n))
        .collect();
    let (mut stored, mut sealed) = (0, 0);
    let mut coverage_json = serde_json::Map::new();
    for (name, c) in &coverage {
        stored += c.stored;
        sealed += c.sealed;
        coverage_json.insert(
            (*name).to_owned(),
            json!({ "stored": c.stored, "sealed": c.sealed, "percent": share(c.sealed, c.stored) }),
        );
    }
    coverage_json.insert(
        "overall".into(),
        json!({ "stored": stored, "sealed": sealed, "percent": share(sealed, stored) }),
    );
    let keks: Vec<Value> = inputs
        .ring
        .created()
        .iter()
        .map(|(id, created)| {
            let age_days = parse_rfc3339(created).map(|t| (inputs.now_ms - t) / 86_400_000);
            json!({
                "id": id.to_string(),
                "created_at": created,
                "age_days": age_days,
                "active": id == inputs.ring.active_id(),
                "data_keys": by_kek.iter().find(|(k, _)| *k == id.to_string()).map_or(0, |(_, n)| *n),
            })
        })
        .collect();

    Ok(json!({
        "period": { "from": rfc3339(from_ms), "to": rfc3339(to_ms) },
        "generated_at": rfc3339(inputs.now_ms),
        "workflow_executions": {
            "created": tasks_created,
            "created_events": count("task.created"),
            "completed": count("task.completed"),
            "failed": count("task.failed"),
            "cancelled": count("task.cancelled"),
            "by_workflow": by_workflow,
            "by_status_now": by_status,
        },
        "unauthorized_attempts": {
            "total": unauthorized,
            "by_action": unauthorized_by_action,
            "by_code": unauthorized_by_code,
        },
        "authentication_failures": {
            "total": count("auth.failed"),
            "by_code": auth_by_code,
            "anonymous_successes": anonymous_successes,
        },
        "data_access_requests": {
            "task_reads": count("task.read"),
            "audit_reads": count("audit.queried") + count("audit.task_viewed") + count("audit.exported"),
            "subject_access": count("gdpr.accessed"),
            "subject_export": count("gdpr.exported"),
        },
        "erasures": {
            "requests": count("gdpr.erased"),
            "data_keys_destroyed_ever": destroyed,
        },
        "pii_workflows": pii,
        "tasks_by_classification": by_classification,
        "encryption_coverage": coverage_json,
        "keys": {
            "key_encryption_keys": keks,
            "data_keys": { "held": data_keys - destroyed, "destroyed": destroyed },
            "rotations": count("key.rotated"),
        },
        "changes": {
            "module_uploads": count("module.uploaded"),
            "modules_refused": count("module.refused"),
            "workflow_versions": count("workflow.applied"),
            "policy_changes": count("namespace.policy_set"),
            "secrets_set": count("secret.set"),
        },
        "audit_chain": {
            "intact": chain.is_intact(),
            "signed": inputs.checkpoint_keys.is_some(),
            "checked": chain.checked,
            "unsealed": chain.unsealed,
            "checkpoints": chain.checkpoints,
            "signed_through": chain.signed_through,
            "head": chain.head.as_ref().map(|(seq, _)| seq),
            "broken": chain.broken,
        },
        "events_in_period": counts.iter().map(|(_, _, n)| n).sum::<i64>(),
    }))
}

fn status(effective: bool, active: bool) -> &'static str {
    match (active, effective) {
        (false, _) => "no_activity",
        (true, true) => "effective",
        (true, false) => "attention",
    }
}

/// The SOC 2 controls this installation evidences, each with its status and evidence,
/// from a report.
pub fn controls(report: &Value) -> Value {
    let n = |path: &[&str]| -> i64 {
        path.iter()
            .fold(report, |v, key| &v[*key])
            .as_i64()
            .unwrap_or(0)
    };
    let intact = report["audit_chain"]["intact"] == true;
    let created = n(&["workflow_executions", "created"]);
    let created_events = n(&["workflow_executions", "created_events"]);
    let refused = n(&["unauthorized_attempts", "total"]);
    let auth_failed = n(&["authentication_failures", "total"]);
    let anonymous = n(&["authentication_failures", "anonymous_successes"]);
    let overall = &report["encryption_coverage"]["overall"];
    let (stored, sealed) = (
        overall["stored"].as_i64().unwrap_or(0),
        overall["sealed"].as_i64().unwrap_or(0),
    );
    let changes = n(&["changes", "module_uploads"])
        + n(&["changes", "workflow_versions"])
        + n(&["changes", "policy_changes"]);
    let chain = &report["audit_chain"];
    // Signed, where checkpoints are made here: at least one good checkpoint.
    let signed = chain["signed"] != true || n(&["audit_chain", "checkpoints"]) > 0;
    json!({
        "period": report["period"],
        "controls": [
            {
                "id": "CC6.1", "name": "Logical access",
                "status": status(intact && created == created_events, created > 0 || refused > 0),
                "evidence": {
                    "tasks_created": created,
                    "tasks_with_a_creation_event": created_events,
                    "requests_refused_by_policy": refused,
                },
            },
            {
                "id": "CC6.2", "name": "Authentication",
                "status": status(anonymous == 0, auth_failed > 0 || created > 0),
                "evidence": {
                    "tokens_refused": auth_failed,
                    "refusals_by_code": report["authentication_failures"]["by_code"],
                    "unauthenticated_successes": anonymous,
                },
            },
            {
                "id": "CC6.3", "name": "Authorization",
                "status": status(intact, refused > 0 || created > 0),
                "evidence": {
                    "denials_by_code": report["unauthorized_attempts"]["by_code"],
                    "denials_by_action": report["unauthorized_attempts"]["by_action"],
                },
            },
            {
                "id": "CC6.7", "name": "Encryption of data at rest",
                "status": status(sealed == stored, stored > 0),
                "evidence": report["encryption_coverage"],
            },
            {
                "id": "CC7.2", "name": "Monitoring and audit trail",
                "status": status(intact && signed, n(&["audit_chain", "checked"]) > 0),
                "evidence": report["audit_chain"],
            },
            {
                "id": "CC8.1", "name": "Change management",
                "status": status(intact, changes > 0),
                "evidence": report["changes"],
            },
        ],
    })
}

/// A report as CSV rows `section,metric,value`, nested values flattened with dots.
pub fn report_csv(report: &Value) -> Vec<u8> {
    fn walk(prefix: &str, value: &Value, rows: &mut Vec<[String; 2]>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, inner, rows);
                }
            }
            Value::Array(items) => {
                for (i, inner) in items.iter().enumerate() {
                    walk(&format!("{prefix}.{i}"), inner, rows);
                }
            }
            Value::String(s) => rows.push([prefix.to_owned(), s.clone()]),
            Value::Null => rows.push([prefix.to_owned(), String::new()]),
            other => rows.push([prefix.to_owned(), other.to_string()]),
        }
    }
    let mut rows = Vec::new();
    walk("", report, &mut rows);
    let mut writer = csv::Writer::from_writer(Vec::new());
    let _ = writer.write_record(["section", "metric", "value"]);
    for [path, value] in rows {
        let (section, metric) = path.split_once('.').unwrap_or((&path, ""));
        let _ = writer.write_record([section, metric, &value]);
    }
    writer.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_calendar_periods_in_utc() {
        let now = parse_rfc3339("2026-11-24T16:00:00Z").unwrap();
        let bounds = |p| {
            let (from, to) = period_bounds(p, now).unwrap();
            (rfc3339(from), rfc3339(to))
        };
        assert_eq!(
            bounds(Period::Quarterly),
            ("2026-10-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        assert_eq!(
            bounds(Period::Monthly),
            ("2026-11-01T00:00:00Z".into(), "2026-12-01T00:00:00Z".into())
        );
        assert_eq!(
            bounds(Period::Annual),
            ("2026-01-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        let feb = parse_rfc3339("2026-02-10T00:00:00Z").unwrap();
        let (from, to) = period_bounds(Period::Quarterly, feb).unwrap();
        assert_eq!(
            (rfc3339(from), rfc3339(to)),
            ("2026-01-01T00:00:00Z".into(), "2026-04-01T00:00:00Z".into())
        );
    }

    #[test]
    fn a_control_is_only_as_good_as_its_evidence() {
        let report = json!({
            "audit_chain": { "intact": true, "checked": 10, "signed": true, "checkpoints": 1 },
            "workflow_executions": { "created": 3, "created_events": 3 },
            "unauthorized_attempts": { "total": 1 },
            "authentication_failures": { "total": 2, "anonymous_successes": 0 },
            "encryption_coverage": { "overall": { "stored": 12, "sealed": 11 } },
            "changes": { "module_uploads": 0, "workflow_versions": 0, "policy_changes": 0 },
        });
        let controls = controls(&report);
        let status: Vec<&str> = controls["controls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            status,
            [
                "effective",
                "effective",
                "effective",
                "attention",
                "effective",
                "no_activity"
            ]
        );
    }
}
