//! Masks PII in free text and JSON values.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use serde_json::{Map, Value};

use super::detect::detect_all;
use super::{DataClass, class_for_name};

/// What every masked value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Known values shorter than this match inside too many unrelated words to be worth masking.
const MIN_KNOWN_LEN: usize = 4;
/// Masking could expose a new finding (a number glued to a masked one now standing alone); the
/// detectors treat a marker's brackets as glue so that this should not happen, and as a safety
/// net text is masked again until nothing changes, at most this many times. Real text settles
/// in one pass; the bound keeps hostile input linear.
const MAX_PASSES: usize = 8;
/// JSON nested deeper than this is masked whole rather than walked (serde_json's own parser
/// stops at 128 levels).
const MAX_DEPTH: usize = 128;

/// Value sets [`Redactor::shared`] keeps; past it, it starts over.
const RECENT_MAX: usize = 256;
/// How long [`Redactor::shared`] keeps a redactor: about as long as a task's steps take to
/// run one after another, so that its values do not outlive the task by much.
const RECENT_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The redactors [`Redactor::shared`] built lately, by their values, with when.
type Recent = HashMap<Vec<String>, (std::time::Instant, Redactor)>;
static RECENT: std::sync::Mutex<Option<Recent>> = std::sync::Mutex::new(None);
/// How many times [`Redactor::forget_shared`] ran: an attempt that began before an erasure
/// may still use what it built, but never keeps it for others.
static FORGOTTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Known values as a redactor uses them: at least [`MIN_KNOWN_LEN`] bytes, none
/// overlapping the marker, sorted, each once.
fn normalized<I, S>(known: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut values: Vec<String> = known
        .into_iter()
        .map(|v| v.as_ref().to_owned())
        .filter(|v| v.len() >= MIN_KNOWN_LEN && !overlaps_marker(v))
        .collect();
    values.sort_unstable();
    values.dedup();
    values
}

/// Masks PII in text and JSON. Cheap to clone (`Arc` inside), `Send + Sync`.
///
/// `Debug` shows how many known values it holds, never the values.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Known>,
}

/// The exact values to mask, besides what the detectors find.
enum Known {
    /// No known values: detectors only.
    None,
    /// A matcher over `count` distinct values.
    Values { matcher: AhoCorasick, count: usize },
    /// The matcher could not be built (aho-corasick's size limits): fail closed and mask
    /// every non-empty text whole.
    Unbuildable,
}

impl Redactor {
    /// A redactor for `known`: exact PII values of the task (e.g. the customer's email) to mask
    /// wherever they appear, ASCII-case-insensitively, longest match first.
    ///
    /// Values shorter than 4 bytes are ignored (too many false hits), and so are values that
    /// overlap `[REDACTED]` itself (`DACT`, `x[RED`), which would make masking never settle.
    pub fn new<I, S>(known: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::build(normalized(known))
    }

    /// [`Redactor::new`], reusing the redactor built for the same values a moment ago if
    /// there is one. The steps of one task mask the same values (its context's PII), and
    /// building the matcher cost more than a short step's whole run.
    ///
    /// At most [`RECENT_MAX`] value sets stay in this process's memory, each for at most
    /// [`RECENT_TTL`], as the tasks' contexts themselves do while they run; a subject's
    /// erasure drops them all ([`Redactor::forget_shared`]). `since` is
    /// [`Redactor::generation`] when the caller's work began: if an erasure came after,
    /// what is built here is not kept. Never give it secrets or credentials, which must not
    /// outlive their attempt.
    pub fn shared<I, S>(known: I, since: u64) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let values = normalized(known);
        if values.is_empty() {
            return Self::detectors_only();
        }
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if since != Self::generation() {
            return Self::build(values);
        }
        let recent = recent.get_or_insert_with(HashMap::new);
        if let Some((at, redactor)) = recent.get(&values)
            && at.elapsed() < RECENT_TTL
        {
            return redactor.clone();
        }
        let redactor = Self::build(values.clone());
        recent.retain(|_, (at, _)| at.elapsed() < RECENT_TTL);
        if recent.len() >= RECENT_MAX {
            recent.clear();
        }
        recent.insert(values, (std::time::Instant::now(), redactor.clone()));
        redactor
    }

    /// Which erasure this process is at: what [`Redactor::shared`] takes as `since`.
    pub fn generation() -> u64 {
        FORGOTTEN.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Drop every redactor [`Redactor::shared`] keeps (and with them the values they
    /// mask), and keep none that work begun before this builds: what a subject's erasure
    /// does, so that none of their values stays in this process's memory longer than the
    /// attempts that use them.
    pub fn forget_shared() {
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        FORGOTTEN.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        *recent = None;
    }

    /// A redactor for `values`, already [`normalized`].
    fn build(values: Vec<String>) -> Self {
        let known = if values.is_empty() {
            Known::None
        } else {
            AhoCorasick::builder()
                // Built for every attempt that logs, over a handful of values, and run over
                // short texts: the simplest automaton builds many times faster than a DFA
                // and scans these texts about as fast.
                .kind(Some(AhoCorasickKind::NoncontiguousNFA))
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&values)
                .map_or(Known::Unbuildable, |matcher| Known::Values {
                    matcher,
                    count: values.len(),
                })
        };
        Redactor {
            inner: Arc::new(known),
        }
    }

    /// A redactor with no known values (detectors only).
    pub fn detectors_only() -> Self {
        Redactor {
            inner: Arc::new(Known::None),
        }
    }

    /// Replaces every known value and every detector finding with `[REDACTED]` (adjacent or
    /// overlapping ones become one marker). `Cow::Borrowed` when nothing matched.
    pub fn redact_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if matches!(*self.inner, Known::Unbuildable) && !text.is_empty() {
            return Cow::Owned(REDACTED.to_owned());
        }
        let mut text = Cow::Borrowed(text);
        for _ in 0..MAX_PASSES {
            let spans = self.spans(&text);
            if spans.is_empty() {
                break;
            }
            let masked = mask(&text, &spans);
            text = Cow::Owned(masked);
        }
        text
    }

    /// Masks a JSON value: every string (object keys included) goes through
    /// [`redact_text`](Self::redact_text); the whole value of a key whose [`class_for_name`] is
    /// PII or a credential becomes `"[REDACTED]"`; a number or boolean is untouched unless its
    /// string form contains a known value. Keys that mask to the same text are kept apart as
    /// `[REDACTED]#2`, `[REDACTED]#3`….
    pub fn redact_json(&self, value: &Value) -> Value {
        self.redact_value(value, 0)
    }

    /// Whether [`redact_text`](Self::redact_text) would change `text`.
    pub fn contains_pii(&self, text: &str) -> bool {
        match &*self.inner {
            Known::Unbuildable => !text.is_empty(),
            Known::Values { matcher, .. } if matcher.is_match(text) => true,
            _ => !detect_all(text).is_empty(),
        }
    }

    fn redact_value(&self, value: &Value, depth: usize) -> Value {
        if depth >= MAX_DEPTH {
            return Value::String(REDACTED.to_owned());
        }
        match value {
            Value::Null => Value::Null,
            Value::Bool(_) | Value::Number(_) if self.has_known(&value.to_string()) => {
                Value::String(REDACTED.to_owned())
            }
            Value::Bool(_) | Value::Number(_) => value.clone(),
            Value::String(s) => Value::String(self.redact_text(s).into_owned()),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.redact_value(item, depth + 1))
                    .collect(),
            ),
            Value::Object(map) => {
                let mut out = Map::new();
                let mut next_suffix: HashMap<String, usize> = HashMap::new();
                for (key, item) in map {
                    let item = if sensitive_key(key) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        self.redact_value(item, depth + 1)
                    };
                    let key = unique_key(&out, &mut next_suffix, self.redact_text(key));
                    out.insert(key, item);
                }
                Value::Object(out)
            }
        }
    }

    fn has_known(&self, text: &str) -> bool {
        match &*self.inner {
            Known::None => false,
            Known::Values { matcher, .. } => matcher.is_match(text),
            Known::Unbuildable => true,
        }
    }

    /// The byte ranges to mask in `text`, sorted, with overlapping and touching ranges merged.
    fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        let mut spans: Vec<(usize, usize)> = detect_all(text)
            .into_iter()
            .map(|f| (f.start, f.end))
            .collect();
        if let Known::Values { matcher, .. } = &*self.inner {
            spans.extend(matcher.find_iter(text).map(|m| (m.start(), m.end())));
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = match &*self.inner {
            Known::None => 0,
            Known::Values { count, .. } => *count,
            Known::Unbuildable => usize::MAX,
        };
        f.debug_struct("Redactor")
            .field("known_values", &known)
            .finish()
    }
}

/// `text` with each of the sorted, disjoint `spans` replaced by the marker.
fn mask(text: &str, spans: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for &(start, end) in spans {
        out.push_str(&text[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Whether a key names personal data or a credential, so its whole value is masked.
fn sensitive_key(key: &str) -> bool {
    class_for_name(key).is_some_and(|class| class.is_pii() || class == DataClass::Credential)
}

/// Whether `value` could match across or inside a marker: it is part of `[redacted]`, contains
/// it, or begins with the marker's end or ends with its beginning (ASCII case-insensitively).
fn overlaps_marker(value: &str) -> bool {
    let value = value.to_ascii_lowercase();
    let marker = REDACTED.to_ascii_lowercase();
    marker.contains(&value)
        || value.contains(&marker)
        || (1..marker.len()).any(|k| {
            value.ends_with(&marker[..k]) || value.starts_with(&marker[marker.len() - k..])
        })
}

/// `key`, or `key#2`, `key#3`… if an earlier key of `out` already took it.
fn unique_key(
    out: &Map<String, Value>,
    next_suffix: &mut HashMap<String, usize>,
    key: Cow<'_, str>,
) -> String {
    if !out.contains_key(key.as_ref()) {
        return key.into_owned();
    }
    let suffix = next_suffix.entry(key.to_string()).or_insert(1);
    loop {
        *suffix += 1;
        let candidate = format!("{key}#{suffix}");
        if !out.contains_key(&candidate) {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn masks_detector_findings_and_borrows_clean_text() {
        let r = Redactor::detectors_only();
        assert_eq!(
            r.redact_text("mail jane@example.com or call +14155552671."),
            "mail [REDACTED] or call [REDACTED]."
        );
        let clean = "order ord_12345 total 150.00 on 2024-01-15";
        assert!(matches!(r.redact_text(clean), Cow::Borrowed(s) if s == clean));
        assert!(!r.contains_pii(clean));
        assert!(r.contains_pii("ssn 123-45-6789"));
    }

    #[test]
    fn masks_the_union_of_overlapping_findings() {
        // detect() reports only the card; the phone that overlaps it is masked as well.
        let r = Redactor::detectors_only();
        assert_eq!(r.redact_text("0 4111 1111 1111 1111 end"), "[REDACTED] end");
    }

    #[test]
    fn masks_known_values_ascii_case_insensitively() {
        let r = Redactor::new(["Jane Doe", "jane@example.com"]);
        assert_eq!(
            r.redact_text("Dear JANE DOE, we wrote to Jane@Example.COM"),
            "Dear [REDACTED], we wrote to [REDACTED]"
        );
        assert!(r.contains_pii("hello jane doe"));
        assert!(!r.contains_pii("hello john"));
    }

    #[test]
    fn the_longest_overlapping_known_value_wins() {
        let r = Redactor::new(["Jane", "Jane Doe", "Doe Street"]);
        assert_eq!(r.redact_text("to Jane Doe."), "to [REDACTED].");
        assert_eq!(r.redact_text("Janet"), "[REDACTED]t");
        // Leftmost first: "Jane Doe" starts before "Doe Street" and takes the shared "Doe".
        assert_eq!(r.redact_text("Jane Doe Street 5"), "[REDACTED] Street 5");
        assert_eq!(r.redact_text("at Doe Street 5"), "at [REDACTED] 5");
    }

    #[test]
    fn short_and_marker_like_known_values_are_ignored() {
        let r = Redactor::new(["Ann", "", "dact", "[REDACTED]", "x[re", "d]yz"]);
        assert_eq!(format!("{r:?}"), "Redactor { known_values: 0 }");
        assert_eq!(r.redact_text("Ann and dact"), "Ann and dact");
        let r = Redactor::new(["Anne", "Anne"]);
        assert_eq!(format!("{r:?}"), "Redactor { known_values: 1 }");
    }

    #[test]
    fn masking_does_not_unglue_a_neighbouring_number() {
        // Glued to the card, the digits after it are not a phone; masking the card keeps it so.
        let r = Redactor::detectors_only();
        let once = r.redact_text("4111111111111111-415-555-2671");
        assert_eq!(once, "[REDACTED]-415-555-2671");
        assert_eq!(r.redact_text(&once), once);
    }

    #[test]
    fn redacts_nested_json() {
        let r = Redactor::new(["Jane Doe"]);
        let value = json!([
            {"notes": ["met Jane Doe", {"cc": "4111 1111 1111 1111", "n": [1, 2]}]},
            {"customer_email": {"primary": "jane@example.com"}, "password": 1234},
            {"Jane Doe": true, "ok": false, "id": "ord_12345", "none": null}
        ]);
        assert_eq!(
            r.redact_json(&value),
            json!([
                {"notes": ["met [REDACTED]", {"cc": "[REDACTED]", "n": [1, 2]}]},
                {"customer_email": "[REDACTED]", "password": "[REDACTED]"},
                {"[REDACTED]": true, "ok": false, "id": "ord_12345", "none": null}
            ])
        );
    }

    #[test]
    fn numbers_and_bools_are_masked_only_when_they_hold_a_known_value() {
        let r = Redactor::new(["4155552671"]);
        let value = json!({"a": 4155552671_u64, "b": 14155552671_u64, "c": 42, "d": true});
        assert_eq!(
            r.redact_json(&value),
            json!({"a": "[REDACTED]", "b": "[REDACTED]", "c": 42, "d": true})
        );
    }

    #[test]
    fn keys_that_mask_alike_stay_distinct() {
        let r = Redactor::detectors_only();
        let value = json!({"a@example.com": 1, "b@example.com": 2, "[REDACTED]": 3});
        let masked = r.redact_json(&value);
        let map = masked.as_object().unwrap();
        assert_eq!(map.len(), 3);
        let mut values: Vec<i64> = map.values().filter_map(Value::as_i64).collect();
        values.sort();
        assert_eq!(values, [1, 2, 3]);
        assert!(map.keys().all(|k| k.starts_with("[REDACTED]")));
    }

    #[test]
    fn json_deeper_than_the_limit_is_masked_whole() {
        let r = Redactor::detectors_only();
        let mut deep = json!("jane@example.com");
        for _ in 0..MAX_DEPTH + 5 {
            deep = json!([deep]);
        }
        let masked = serde_json::to_string(&r.redact_json(&deep)).unwrap();
        assert!(!masked.contains("jane"));
        assert!(masked.contains(REDACTED));
    }

    #[test]
    fn is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Redactor>();
        let r = Redactor::new(["Jane Doe"]);
        let clone = r.clone();
        assert!(Arc::ptr_eq(&r.inner, &clone.inner));
    }

    /// Known values that can never be part of the marker: letters then digits.
    fn known_value() -> impl Strategy<Value = String> {
        "[a-z]{2,6}[0-9]{2,6}"
    }

    /// Random nested JSON where some strings, keys and numbers carry `known` (in any case).
    fn json_with(known: String) -> impl Strategy<Value = Value> {
        let k = known.clone();
        let text = ("[ -~]{0,12}", any::<bool>(), any::<bool>(), "[ -~]{0,12}").prop_map(
            move |(before, include, upper, after)| {
                let known = if upper {
                    k.to_ascii_uppercase()
                } else {
                    k.clone()
                };
                if include {
                    format!("{before}{known}{after}")
                } else {
                    before + &after
                }
            },
        );
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((text.clone(), inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_known_value_never_survives_redact_json(
            (known, value) in known_value().prop_flat_map(|k| (Just(k.clone()), json_with(k)))
        ) {
            let r = Redactor::new([known.as_str()]);
            let masked = serde_json::to_string(&r.redact_json(&value)).unwrap().to_ascii_lowercase();
            prop_assert!(!masked.contains(&known), "{masked}");
        }

        #[test]
        fn redact_text_never_panics_and_is_idempotent(text in "\\PC{0,120}") {
            for r in [Redactor::detectors_only(), Redactor::new(["jane doe", "4155552671"])] {
                let once = r.redact_text(&text).into_owned();
                prop_assert_eq!(r.redact_text(&once), once.as_str());
                prop_assert!(!r.contains_pii(&once));
            }
        }

        #[test]
        fn redact_text_is_idempotent_on_pii_heavy_text(
            parts in proptest::collection::vec(prop_oneof![
                Just("4111 1111 1111 1111"), Just("-"), Just(" "), Just("415-555-2671"),
                Just("jane@example.com"), Just("123-45-6789"), Just("GB82WEST12345698765432"),
                Just("Jane Doe"), Just("+44 20 7946 0958"), Just("."), Just("x"), Just("7"),
            ], 0..12)
        ) {
            let text = parts.concat();
            let r = Redactor::new(["jane doe"]);
            let once = r.redact_text(&text).into_owned();
            prop_assert_eq!(r.redact_text(&once), once.as_str());
        }
    }

    #[test]
    fn a_shared_redactor_is_reused_for_the_same_values_and_masks_as_a_new_one() {
        let text = "Mail Jane.Doe@Example.com about order ord_5521 for cus_4410";
        let values = ["jane.doe@example.com", "cus_4410"];
        let since = Redactor::generation();
        let shared = Redactor::shared(values, since);
        // The same values in another order and with a duplicate: the same matcher.
        let again = Redactor::shared(["cus_4410", "jane.doe@example.com", "cus_4410"], since);
        assert!(Arc::ptr_eq(&shared.inner, &again.inner));
        assert_eq!(
            shared.redact_text(text),
            Redactor::new(values).redact_text(text)
        );
        assert_eq!(
            shared.redact_text(text),
            "Mail [REDACTED] about order ord_5521 for [REDACTED]"
        );
        // After an erasure nothing is kept: the same values build a new matcher.
        Redactor::forget_shared();
        let rebuilt = Redactor::shared(values, Redactor::generation());
        assert!(!Arc::ptr_eq(&shared.inner, &rebuilt.inner));
        // Work begun before the erasure builds its own and keeps none.
        let late = Redactor::shared(values, since);
        assert!(!Arc::ptr_eq(&rebuilt.inner, &late.inner));
        assert!(Arc::ptr_eq(
            &rebuilt.inner,
            &Redactor::shared(values, Redactor::generation()).inner
        ));
        // Other values: another matcher, which masks only its own.
        let other = Redactor::shared(["ord_5521"], Redactor::generation());
        assert!(!Arc::ptr_eq(&shared.inner, &other.inner));
        assert_eq!(
            other.redact_text(text),
            "Mail [REDACTED] about order [REDACTED] for cus_4410"
        );
    }
}
