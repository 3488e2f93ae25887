//! Field classes declared by an input schema, and the classification of one task context.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use super::{Classification, ClassifyError, DataClass, class_for_name, detect};

/// The schema keyword holding a property's data class.
const CLASS_KEYWORD: &str = "x-data-classification";
/// The schema keyword marking the property that identifies the data subject.
const SUBJECT_KEYWORD: &str = "x-data-subject";
/// Numbers shorter than this are counts and amounts, not identifiers worth masking.
const MIN_PII_NUMBER_LEN: usize = 4;

/// Field classes declared by an input JSON Schema (top-level `properties`, each optionally with
/// `"x-data-classification": "<data class>"`), plus the schema's subject property if any
/// (`"x-data-subject": true` on a property).
#[derive(Debug, Clone, Default)]
pub struct FieldClasses {
    classes: BTreeMap<String, DataClass>,
    subject: Option<String>,
}

impl FieldClasses {
    /// Reads the classification annotations of `schema`'s top-level `properties`.
    ///
    /// A schema without `properties` declares nothing. Fails, naming the property, when
    /// `properties` is not an object, a class is not a string or not a known data class, or
    /// `x-data-subject` is not a boolean or is set on more than one property.
    pub fn from_schema(schema: &Value) -> Result<Self, ClassifyError> {
        let mut classes = FieldClasses::default();
        let Some(properties) = schema.get("properties") else {
            return Ok(classes);
        };
        let properties = properties
            .as_object()
            .ok_or_else(|| ClassifyError::InvalidSchema {
                property: "properties".into(),
                problem: format!("must be an object, found {}", type_name(properties)),
            })?;
        for (property, definition) in properties {
            let invalid = |problem: String| ClassifyError::InvalidSchema {
                property: property.clone(),
                problem,
            };
            match definition.get(CLASS_KEYWORD) {
                None => {}
                Some(Value::String(name)) => {
                    let class = name
                        .parse()
                        .map_err(|e: ClassifyError| invalid(e.to_string()))?;
                    classes.declare(property.clone(), class);
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "{CLASS_KEYWORD} must be a string, found {}",
                        type_name(other)
                    )));
                }
            }
            match definition.get(SUBJECT_KEYWORD) {
                None | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => {
                    if let Some(first) = &classes.subject {
                        return Err(invalid(format!(
                            "{SUBJECT_KEYWORD} is already set on `{first}`; a schema has one subject"
                        )));
                    }
                    classes.subject = Some(property.clone());
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "{SUBJECT_KEYWORD} must be a boolean, found {}",
                        type_name(other)
                    )));
                }
            }
        }
        Ok(classes)
    }

    /// Declares `field`'s class, replacing any earlier one (for callers without a schema).
    pub fn declare(&mut self, field: impl Into<String>, class: DataClass) {
        self.classes.insert(field.into(), class);
    }

    /// The class declared for `field`, if any.
    pub fn get(&self, field: &str) -> Option<DataClass> {
        self.classes.get(field).copied()
    }

    /// The property marked `x-data-subject`, if any.
    pub fn subject_field(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

/// The classification of one task context.
#[derive(Clone, Default, PartialEq, serde::Serialize)]
pub struct ContextClassification {
    /// The class of every top-level field of the context.
    pub fields: BTreeMap<String, DataClass>,
    /// The highest level over all fields; `public` for an empty context.
    pub level: Classification,
    /// Whether any field is of a PII class.
    pub contains_pii: bool,
    /// Every string (and number of at least 4 characters, as a string) found in PII-class
    /// fields, nested values included, plus PII a detector found in undeclared fields; in order
    /// of first appearance, without duplicates. Feed these to
    /// [`Redactor::new`](super::Redactor::new). Never serialized, and `Debug` shows only
    /// their count.
    #[serde(skip)]
    pub pii_values: Vec<String>,
}

impl fmt::Debug for ContextClassification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextClassification")
            .field("fields", &self.fields)
            .field("level", &self.level)
            .field("contains_pii", &self.contains_pii)
            .field(
                "pii_values",
                &format_args!("<{} values>", self.pii_values.len()),
            )
            .finish()
    }
}

/// Classifies every top-level field of `context`.
///
/// A field's class is the schema's class if declared; else [`class_for_name`] of its name; else,
/// if any string inside the value (nested) matches a detector, the detector's class (email and
/// phone are `pii-contact`, SSN `pii-identifier`, card and IBAN `financial`; the highest wins,
/// PII before financial); else `internal`, since unclassified data is never public by default.
pub fn classify_context(
    classes: &FieldClasses,
    context: &Map<String, Value>,
) -> ContextClassification {
    let mut result = ContextClassification::default();
    for (name, value) in context {
        let class = match classes.get(name).or_else(|| class_for_name(name)) {
            Some(class) => {
                if class.is_pii() {
                    collect_values(value, &mut result.pii_values);
                }
                class
            }
            None => detected_class(value, &mut result.pii_values).unwrap_or(DataClass::Internal),
        };
        result.level = result.level.max(class.level());
        result.contains_pii |= class.is_pii();
        result.fields.insert(name.clone(), class);
    }
    result
}

/// The strongest class a detector finds in any string inside `value`; PII hits go to `pii`.
fn detected_class(value: &Value, pii: &mut Vec<String>) -> Option<DataClass> {
    let mut strongest: Option<DataClass> = None;
    for text in strings(value) {
        for finding in detect(text) {
            let class = finding.kind.class();
            if class.is_pii() {
                push_unique(pii, &text[finding.start..finding.end]);
            }
            let rank = |c: DataClass| (c.level(), c.is_pii());
            if strongest.is_none_or(|s| rank(class) > rank(s)) {
                strongest = Some(class);
            }
        }
    }
    strongest
}

/// Every string and every number of at least [`MIN_PII_NUMBER_LEN`] characters inside `value`.
fn collect_values(value: &Value, pii: &mut Vec<String>) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) => push_unique(pii, s),
            Value::Number(n) => {
                let n = n.to_string();
                if n.len() >= MIN_PII_NUMBER_LEN {
                    push_unique(pii, &n);
                }
            }
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(map) => stack.extend(map.values().rev()),
            Value::Null | Value::Bool(_) => {}
        }
    }
}

/// Every string inside `value`, depth first, without recursion (a hostile value may be deep).
fn strings(value: &Value) -> impl Iterator<Item = &str> {
    let mut stack = vec![value];
    std::iter::from_fn(move || {
        while let Some(value) = stack.pop() {
            match value {
                Value::String(s) => return Some(s.as_str()),
                Value::Array(items) => stack.extend(items.iter().rev()),
                Value::Object(map) => stack.extend(map.values().rev()),
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
        None
    })
}

fn push_unique(values: &mut Vec<String>, value: &str) {
    if !value.is_empty() && !values.iter().any(|v| v == value) {
        values.push(value.to_owned());
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn reads_classes_and_subject_from_a_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "customer_id": { "type": "string", "x-data-subject": true,
                                 "x-data-classification": "pii-identifier" },
                "amount": { "type": "number", "x-data-classification": "financial" },
                "note": { "type": "string" },
                "anything": true
            }
        });
        let classes = FieldClasses::from_schema(&schema).unwrap();
        assert_eq!(classes.get("customer_id"), Some(DataClass::PiiIdentifier));
        assert_eq!(classes.get("amount"), Some(DataClass::Financial));
        assert_eq!(classes.get("note"), None);
        assert_eq!(classes.get("anything"), None);
        assert_eq!(classes.subject_field(), Some("customer_id"));
    }

    #[test]
    fn a_schema_without_properties_declares_nothing() {
        for schema in [json!({}), json!(true), json!({"type": "object"})] {
            let classes = FieldClasses::from_schema(&schema).unwrap();
            assert_eq!(classes.get("x"), None);
            assert_eq!(classes.subject_field(), None);
        }
    }

    #[test]
    fn an_unknown_class_is_an_error_naming_the_property() {
        let schema = json!({"properties": {"email": {"x-data-classification": "pii"}}});
        let err = FieldClasses::from_schema(&schema).unwrap_err();
        let ClassifyError::InvalidSchema { property, problem } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(property, "email");
        assert!(problem.contains("unknown data class `pii`"), "{problem}");
        assert!(err.to_string().starts_with("schema property `email`: "));
    }

    #[test]
    fn a_non_string_class_is_an_error_naming_the_property() {
        let schema = json!({"properties": {"ssn": {"x-data-classification": 3}}});
        assert_eq!(
            FieldClasses::from_schema(&schema).unwrap_err(),
            ClassifyError::InvalidSchema {
                property: "ssn".into(),
                problem: "x-data-classification must be a string, found a number".into(),
            }
        );
    }

    #[test]
    fn malformed_properties_and_subjects_are_errors() {
        let not_object = json!({"properties": ["email"]});
        let err = FieldClasses::from_schema(&not_object).unwrap_err();
        assert!(
            matches!(err, ClassifyError::InvalidSchema { ref property, .. } if property == "properties")
        );

        let two_subjects = json!({"properties": {
            "a": {"x-data-subject": true}, "b": {"x-data-subject": true}
        }});
        let err = FieldClasses::from_schema(&two_subjects).unwrap_err();
        assert!(
            matches!(err, ClassifyError::InvalidSchema { ref property, .. } if property == "b")
        );

        let not_bool = json!({"properties": {"a": {"x-data-subject": "yes"}}});
        assert!(FieldClasses::from_schema(&not_bool).is_err());
    }

    #[test]
    fn declare_adds_or_replaces_a_class() {
        let mut classes = FieldClasses::default();
        classes.declare("note", DataClass::Public);
        classes.declare("note", DataClass::Confidential);
        assert_eq!(classes.get("note"), Some(DataClass::Confidential));
    }

    #[test]
    fn the_schema_class_wins_over_name_and_detectors() {
        let mut classes = FieldClasses::default();
        classes.declare("email", DataClass::Public);
        let context = object(json!({"email": "jane@example.com"}));
        let result = classify_context(&classes, &context);
        assert_eq!(result.fields["email"], DataClass::Public);
        assert_eq!(result.level, Classification::Public);
        assert!(!result.contains_pii);
        assert!(result.pii_values.is_empty());
    }

    #[test]
    fn names_then_detectors_then_internal() {
        let context = object(json!({
            "customer_email": "jane@example.com",
            "api_key": "sk_live_abc",
            "notes": ["call me on +14155552671", {"deep": "ssn 123-45-6789"}],
            "payout": "GB82 WEST 1234 5698 7654 32",
            "order_id": "ord_12345",
            "total": 150.0
        }));
        let result = classify_context(&FieldClasses::default(), &context);
        assert_eq!(result.fields["customer_email"], DataClass::PiiContact);
        assert_eq!(result.fields["api_key"], DataClass::Credential);
        assert_eq!(result.fields["notes"], DataClass::PiiIdentifier);
        assert_eq!(result.fields["payout"], DataClass::Financial);
        assert_eq!(result.fields["order_id"], DataClass::Internal);
        assert_eq!(result.fields["total"], DataClass::Internal);
        assert_eq!(result.fields.len(), 6);
        assert_eq!(result.level, Classification::Restricted);
        assert!(result.contains_pii);
        assert_eq!(
            result.pii_values,
            ["jane@example.com", "+14155552671", "123-45-6789"]
        );
    }

    #[test]
    fn a_field_with_contact_and_card_data_is_pii() {
        let context = object(json!({"memo": "4111 1111 1111 1111 jane@example.com"}));
        let result = classify_context(&FieldClasses::default(), &context);
        assert_eq!(result.fields["memo"], DataClass::PiiContact);
        assert_eq!(result.pii_values, ["jane@example.com"]);
    }

    #[test]
    fn level_is_the_highest_field_level_and_public_when_empty() {
        let empty = classify_context(&FieldClasses::default(), &Map::new());
        assert_eq!(empty.level, Classification::Public);
        assert!(!empty.contains_pii);

        let mut classes = FieldClasses::default();
        classes.declare("a", DataClass::Public);
        classes.declare("b", DataClass::Financial);
        let context = object(json!({"a": 1, "b": 2}));
        let result = classify_context(&classes, &context);
        assert_eq!(result.level, Classification::Confidential);
        assert!(!result.contains_pii);

        classes.declare("c", DataClass::Public);
        let only_public = object(json!({"a": 1, "c": "x"}));
        assert_eq!(
            classify_context(&classes, &only_public).level,
            Classification::Public
        );
    }

    #[test]
    fn pii_values_come_from_nested_values_of_pii_fields() {
        let mut classes = FieldClasses::default();
        classes.declare("customer", DataClass::PiiContact);
        let context = object(json!({
            "customer": {
                "name": "Jane Doe",
                "phones": [{"home": 4155552671_u64}, {"work": "+44 20 7946 0958"}],
                "age": 42,
                "vip": true,
                "empty": "",
                "again": "Jane Doe"
            },
            "sku": "Jane Doe's book"
        }));
        let result = classify_context(&classes, &context);
        assert_eq!(
            result.pii_values,
            ["Jane Doe", "4155552671", "+44 20 7946 0958"],
            "short numbers, bools and empty strings are left out, duplicates once"
        );
        assert_eq!(result.fields["sku"], DataClass::Internal);
    }

    #[test]
    fn debug_and_serialize_never_show_pii_values() {
        let context = object(json!({"email": "jane@example.com"}));
        let result = classify_context(&FieldClasses::default(), &context);
        assert_eq!(result.pii_values, ["jane@example.com"]);
        let debug = format!("{result:?}");
        assert!(!debug.contains("jane"), "{debug}");
        assert!(debug.contains("<1 values>"), "{debug}");
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(
            json,
            json!({"fields": {"email": "pii-contact"}, "level": "confidential", "contains_pii": true})
        );
    }
}
