//! Workflow definitions: the file a team writes (JSON, `deny_unknown_fields`
//! everywhere), parsed into types and checked for what can be checked without the
//! database: names, the DAG (unknown dependencies, cycles), the input schema, limits.
//! Module versions and grants against the namespace policy are checked by the engine
//! when the workflow is applied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::{Classification, ClassifyError, FieldClasses};
use crate::sandbox::{Limits, Origin};

/// Longest name (namespace, workflow, step, module).
const MAX_NAME: usize = 64;
/// Steps per workflow.
const MAX_STEPS: usize = 64;
/// Attempts a step may be given.
const MAX_ATTEMPTS: u32 = 20;

/// A workflow definition as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    /// The owning namespace, e.g. `customer_success`.
    pub namespace: String,
    /// The workflow's name, e.g. `process_refund`.
    pub name: String,
    /// Semantic version; a version is immutable once applied.
    pub version: String,
    /// What the workflow does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the task context; properties carry `x-data-classification`, one may
    /// carry `x-data-subject: true`.
    pub input_schema: serde_json::Value,
    /// The steps, in any order; `depends_on` makes the DAG.
    pub steps: Vec<StepDef>,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// Unique within the workflow.
    pub name: String,
    /// `module_name@semver`, uploaded to the same namespace.
    pub module: String,
    /// Steps that must complete first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Permission the task's creator must hold for this step to run.
    #[serde(default)]
    pub requires_permission: Option<String>,
    /// Context fields the step may read.
    #[serde(default)]
    pub reads: Vec<String>,
    /// The highest classification the step sees in clear.
    #[serde(default)]
    pub clearance: Classification,
    /// How much of the step's activity goes to the audit trail.
    #[serde(default)]
    pub audit_level: AuditLevel,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Wall-clock limit per attempt, milliseconds (overrides `limits.wall_time`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Resource limits (defaults for missing fields).
    #[serde(default)]
    pub limits: Limits,
    /// The step's own configuration, handed to it as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Secrets the step may use (must be granted to the namespace).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Origins the step may call (must be allowed for the namespace).
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// How much a step's activity is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditLevel {
    /// Start/finish events only.
    Summary,
    /// Plus fields read, secrets used, hosts called and the step's own events.
    #[default]
    Full,
}

/// Retries with exponential backoff and jitter, capped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry, milliseconds.
    pub initial_backoff_ms: u64,
    /// Growth factor per retry.
    pub multiplier: f64,
    /// Longest delay, milliseconds.
    pub max_backoff_ms: u64,
    /// Random spread as a fraction of the delay (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 500,
            multiplier: 2.0,
            max_backoff_ms: 60_000,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next` (2 for the first retry), given a random number in
    /// [0, 1) for the jitter; never more than `max_backoff_ms`.
    pub fn backoff(&self, next: u32, random: f64) -> Duration {
        let exponent = next.saturating_sub(2).min(64) as i32;
        let base = self.initial_backoff_ms as f64 * self.multiplier.powi(exponent);
        let spread = base * self.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        let ms = (base + spread).clamp(0.0, self.max_backoff_ms as f64);
        Duration::from_millis(ms as u64)
    }
}

/// What is wrong with a definition: each names the exact problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DefinitionError {
    /// Not valid JSON of the definition's shape.
    #[error("definition does not parse: {0}")]
    Parse(String),
    /// A name with characters or a length we do not accept.
    #[error(
        "{what} `{name}` is not a valid name (1-{MAX_NAME} of a-z, 0-9, _, starting with a letter)"
    )]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The version is not `MAJOR.MINOR.PATCH`.
    #[error("version `{0}` is not a semantic version (MAJOR.MINOR.PATCH)")]
    InvalidVersion(String),
    /// No steps, or too many.
    #[error("a workflow needs 1 to {MAX_STEPS} steps, this one has {0}")]
    StepCount(usize),
    /// Two steps share a name.
    #[error("step `{0}` is defined twice")]
    DuplicateStep(String),
    /// A `depends_on` entry names no step.
    #[error("step `{step}` depends on `{dependency}`, which is not a step of this workflow")]
    UnknownDependency {
        /// The step.
        step: String,
        /// The missing dependency.
        dependency: String,
    },
    /// The dependencies loop.
    #[error("steps form a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    /// `module` is not `name@version`.
    #[error("step `{step}`: module `{module}` must be written name@MAJOR.MINOR.PATCH")]
    InvalidModule {
        /// The step.
        step: String,
        /// The reference.
        module: String,
    },
    /// A read names a field the input schema does not declare.
    #[error("step `{step}` reads `{field}`, which the input schema does not declare")]
    UndeclaredRead {
        /// The step.
        step: String,
        /// The field.
        field: String,
    },
    /// The input schema is not usable.
    #[error("invalid input schema: {0}")]
    InvalidSchema(String),
    /// A limit, retry or host setting is out of range.
    #[error("step `{step}`: {problem}")]
    InvalidStep {
        /// The step.
        step: String,
        /// What is wrong.
        problem: String,
    },
}

impl From<ClassifyError> for DefinitionError {
    fn from(e: ClassifyError) -> Self {
        Self::InvalidSchema(e.to_string())
    }
}

/// A valid name: lowercase identifier.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A valid secret name: 1-64 of `A-Z`, `a-z`, `0-9`, `_` (environment-variable style,
/// `NOTIFY_API_KEY`).
pub fn valid_secret_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A valid `MAJOR.MINOR.PATCH` version.
pub fn valid_version(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 9
                && p.bytes().all(|b| b.is_ascii_digit())
                && (*p == "0" || !p.starts_with('0'))
        })
}

/// A module reference `name@version`, split.
pub fn parse_module_ref(reference: &str) -> Option<(&str, &str)> {
    let (name, version) = reference.split_once('@')?;
    (valid_name(name) && valid_version(version)).then_some((name, version))
}

fn name(what: &'static str, name: &str) -> Result<(), DefinitionError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(DefinitionError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

impl WorkflowDef {
    /// Parse and check a definition: JSON when the text opens with `{`, YAML otherwise.
    /// Both reject unknown fields; the stored form is always the canonical JSON.
    pub fn parse(text: &str) -> Result<(Self, FieldClasses), DefinitionError> {
        let def: Self = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| DefinitionError::Parse(e.to_string()))?
        } else {
            yaml_serde::from_str(text).map_err(|e| DefinitionError::Parse(e.to_string()))?
        };
        let classes = def.check()?;
        Ok((def, classes))
    }

    /// Check everything that needs no database; returns the schema's field classes.
    pub fn check(&self) -> Result<FieldClasses, DefinitionError> {
        name("namespace", &self.namespace)?;
        name("workflow", &self.name)?;
        if !valid_version(&self.version) {
            return Err(DefinitionError::InvalidVersion(self.version.clone()));
        }
        if !(1..=MAX_STEPS).contains(&self.steps.len()) {
            return Err(DefinitionError::StepCount(self.steps.len()));
        }
        if !self.input_schema.is_object() {
            return Err(DefinitionError::InvalidSchema(
                "the input schema must be a JSON object".into(),
            ));
        }
        let classes = FieldClasses::from_schema(&self.input_schema)?;
        let declared: BTreeSet<&str> = self
            .input_schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();

        let mut names = BTreeSet::new();
        for step in &self.steps {
            name("step", &step.name)?;
            if !names.insert(step.name.as_str()) {
                return Err(DefinitionError::DuplicateStep(step.name.clone()));
            }
        }
        for step in &self.steps {
            step.check(&names, &declared)?;
        }
        self.order()?;
        Ok(classes)
    }

    /// The steps in an order where every step comes after its dependencies, or the cycle.
    pub fn order(&self) -> Result<Vec<&StepDef>, DefinitionError> {
        let by_name: BTreeMap<&str, &StepDef> =
            self.steps.iter().map(|s| (s.name.as_str(), s)).collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<'a>(
            step: &'a StepDef,
            by_name: &BTreeMap<&str, &'a StepDef>,
            marks: &mut BTreeMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
            out: &mut Vec<&'a StepDef>,
        ) -> Result<(), DefinitionError> {
            match marks.get(step.name.as_str()) {
                Some(Mark::Done) => return Ok(()),
                Some(Mark::Visiting) => {
                    let start = path.iter().position(|n| *n == step.name).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(step.name.clone());
                    return Err(DefinitionError::Cycle(cycle));
                }
                None => {}
            }
            marks.insert(&step.name, Mark::Visiting);
            path.push(&step.name);
            for dependency in &step.depends_on {
                if let Some(dep) = by_name.get(dependency.as_str()) {
                    visit(dep, by_name, marks, path, out)?;
                }
            }
            path.pop();
            marks.insert(&step.name, Mark::Done);
            out.push(step);
            Ok(())
        }
        let mut marks = BTreeMap::new();
        let mut out = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            visit(step, &by_name, &mut marks, &mut Vec::new(), &mut out)?;
        }
        Ok(out)
    }
}

impl StepDef {
    fn invalid(&self, problem: impl fmt::Display) -> DefinitionError {
        DefinitionError::InvalidStep {
            step: self.name.clone(),
            problem: problem.to_string(),
        }
    }

    fn check(
        &self,
        steps: &BTreeSet<&str>,
        declared: &BTreeSet<&str>,
    ) -> Result<(), DefinitionError> {
        if parse_module_ref(&self.module).is_none() {
            return Err(DefinitionError::InvalidModule {
                step: self.name.clone(),
                module: self.module.clone(),
            });
        }
        for dependency in &self.depends_on {
            if !steps.contains(dependency.as_str()) {
                return Err(DefinitionError::UnknownDependency {
                    step: self.name.clone(),
                    dependency: dependency.clone(),
                });
            }
        }
        for field in &self.reads {
            if !declared.contains(field.as_str()) {
                return Err(DefinitionError::UndeclaredRead {
                    step: self.name.clone(),
                    field: field.clone(),
                });
            }
        }
        let retry = &self.retry;
        if !(1..=MAX_ATTEMPTS).contains(&retry.max_attempts) {
            return Err(self.invalid(format!("retry.max_attempts must be 1 to {MAX_ATTEMPTS}")));
        }
        if !(1.0..=10.0).contains(&retry.multiplier) || !(0.0..=1.0).contains(&retry.jitter) {
            return Err(self.invalid("retry.multiplier must be 1 to 10 and retry.jitter 0 to 1"));
        }
        if retry.initial_backoff_ms > retry.max_backoff_ms {
            return Err(self.invalid("retry.initial_backoff_ms exceeds retry.max_backoff_ms"));
        }
        self.limits().validate().map_err(|p| self.invalid(p))?;
        for host in &self.hosts {
            Origin::parse(host).map_err(|e| self.invalid(format!("host `{host}`: {e}")))?;
        }
        for secret in &self.secrets {
            if !valid_secret_name(secret) {
                return Err(self.invalid(format!("secret name `{secret}` is not valid")));
            }
        }
        if !self.config.is_object() {
            return Err(self.invalid("config must be a JSON object"));
        }
        Ok(())
    }

    /// The step's limits with `timeout_ms` applied.
    pub fn limits(&self) -> Limits {
        let mut limits = self.limits.clone();
        if let Some(ms) = self.timeout_ms {
            limits.wall_time = Duration::from_millis(ms);
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refund() -> serde_json::Value {
        json!({
            "namespace": "customer_success",
            "name": "process_refund",
            "version": "1.0.0",
            "input_schema": {
                "type": "object",
                "properties": {
                    "customer_email": { "type": "string", "x-data-classification": "pii-contact", "x-data-subject": true },
                    "refund_amount": { "type": "number", "x-data-classification": "financial" }
                }
            },
            "steps": [
                { "name": "validate", "module": "validate_refund_request@0.1.0", "reads": ["refund_amount"], "clearance": "confidential" },
                { "name": "approve", "module": "get_manager_approval@0.1.0", "depends_on": ["validate"] },
                { "name": "execute", "module": "execute_refund@0.1.0", "depends_on": ["approve"],
                  "retry": { "max_attempts": 5 } },
                { "name": "notify", "module": "notify_customer@0.1.0", "depends_on": ["execute"],
                  "reads": ["customer_email"], "secrets": ["NOTIFY_API_KEY"], "hosts": ["https://notify.example.com"] }
            ]
        })
    }

    fn check(def: serde_json::Value) -> Result<(WorkflowDef, FieldClasses), DefinitionError> {
        WorkflowDef::parse(&def.to_string())
    }

    const REFUND_YAML: &str = r#"
# The refund workflow as a step author would write it.
namespace: customer_success
name: process_refund
version: 1.0.0
input_schema:
  type: object
  properties:
    customer_email: { type: string, x-data-classification: pii-contact, x-data-subject: true }
    refund_amount: { type: number, x-data-classification: financial }
steps:
  - name: validate
    module: validate_refund_request@0.1.0
    reads: [refund_amount]
    clearance: confidential
  - { name: approve, module: get_manager_approval@0.1.0, depends_on: [validate] }
  - name: execute
    module: execute_refund@0.1.0
    depends_on: [approve]
    retry: { max_attempts: 5 }
  - name: notify
    module: notify_customer@0.1.0
    depends_on: [execute]
    reads: [customer_email]
    secrets: [NOTIFY_API_KEY]
    hosts: ["https://notify.example.com"]
"#;

    #[test]
    fn a_yaml_definition_means_the_same_as_its_json() {
        let (from_yaml, yaml_classes) = WorkflowDef::parse(REFUND_YAML).unwrap();
        let (from_json, _) = check(refund()).unwrap();
        assert_eq!(
            serde_json::to_value(&from_yaml).unwrap(),
            serde_json::to_value(&from_json).unwrap()
        );
        assert_eq!(yaml_classes.subject_field(), Some("customer_email"));
    }

    #[test]
    fn a_yaml_definition_is_refused_with_the_same_precision() {
        let unknown = REFUND_YAML.replace("    clearance: confidential", "    colour: red");
        let err = WorkflowDef::parse(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        let cycle = REFUND_YAML.replace(
            "  - name: validate\n",
            "  - name: validate\n    depends_on: [notify]\n",
        );
        assert!(matches!(
            WorkflowDef::parse(&cycle),
            Err(DefinitionError::Cycle(_))
        ));
        let err = WorkflowDef::parse("steps: [unclosed").unwrap_err();
        assert!(matches!(err, DefinitionError::Parse(_)), "{err}");
    }

    #[test]
    fn the_refund_workflow_is_valid_and_ordered_by_its_dependencies() {
        let (def, classes) = check(refund()).unwrap();
        let order: Vec<&str> = def
            .order()
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(order, ["validate", "approve", "execute", "notify"]);
        assert_eq!(classes.subject_field(), Some("customer_email"));
        assert_eq!(def.steps[2].retry.max_attempts, 5);
        assert_eq!(def.steps[2].retry.initial_backoff_ms, 500);
    }

    #[test]
    fn each_problem_is_named() {
        let cases: Vec<(Box<dyn Fn(&mut serde_json::Value)>, &str)> = vec![
            (
                Box::new(|d| d["steps"][1]["depends_on"] = json!(["nope"])),
                "depends on `nope`",
            ),
            (
                Box::new(|d| d["steps"][0]["depends_on"] = json!(["notify"])),
                "cycle: validate → notify → execute → approve → validate",
            ),
            (
                Box::new(|d| d["steps"][1]["name"] = json!("validate")),
                "`validate` is defined twice",
            ),
            (
                Box::new(|d| d["steps"][0]["module"] = json!("validate")),
                "name@MAJOR.MINOR.PATCH",
            ),
            (
                Box::new(|d| d["steps"][0]["reads"] = json!(["ssn"])),
                "reads `ssn`",
            ),
            (
                Box::new(|d| d["version"] = json!("1.0")),
                "not a semantic version",
            ),
            (
                Box::new(|d| d["name"] = json!("Process Refund")),
                "workflow `Process Refund`",
            ),
            (
                Box::new(|d| d["steps"][0]["colour"] = json!("red")),
                "unknown field `colour`",
            ),
            (
                Box::new(|d| {
                    d["input_schema"]["properties"]["refund_amount"]["x-data-classification"] =
                        json!("money")
                }),
                "money",
            ),
            (
                Box::new(|d| d["steps"][3]["hosts"] = json!(["ftp://x"])),
                "scheme `ftp`",
            ),
            (
                Box::new(|d| d["steps"][0]["retry"] = json!({ "max_attempts": 0 })),
                "max_attempts",
            ),
            (
                Box::new(|d| d["steps"][0]["limits"] = json!({ "memory_bytes": 1u64 << 40 })),
                "memory_bytes",
            ),
        ];
        for (edit, expected) in cases {
            let mut def = refund();
            edit(&mut def);
            let error = check(def).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "expected `{expected}` in: {error}"
            );
        }
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            multiplier: 2.0,
            max_backoff_ms: 1_000,
            jitter: 0.2,
        };
        assert_eq!(policy.backoff(2, 0.5), Duration::from_millis(100));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(200));
        assert_eq!(policy.backoff(4, 0.0), Duration::from_millis(320));
        assert_eq!(policy.backoff(4, 1.0), Duration::from_millis(480));
        assert_eq!(policy.backoff(9, 0.5), Duration::from_millis(1_000));
        assert_eq!(policy.backoff(60, 1.0), Duration::from_millis(1_000));
    }
}
