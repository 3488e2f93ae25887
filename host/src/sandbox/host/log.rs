//! `log`: every line is redacted (detectors and the task's known PII and secret values)
//! before it is kept or reaches `tracing`; volume is capped per attempt.

use std::collections::BTreeMap;

use crate::sandbox::bindings::log::{Host, Level};
use crate::sandbox::record::LogLine;
use crate::sandbox::state::View;

/// The log capability's budget.
pub(crate) struct LogCap {
    bytes_left: usize,
}

impl LogCap {
    pub(crate) fn new(log_bytes: usize) -> Self {
        Self {
            bytes_left: log_bytes,
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl Host for View<'_, LogCap> {
    fn write(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.shared.charge()?;
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if size > self.cap.bytes_left {
            self.cap.bytes_left = 0;
            self.shared.record.logs_dropped += 1;
            return Ok(());
        }
        self.cap.bytes_left -= size;

        let redactor = self.shared.redactor().clone();
        let message = redactor.redact_text(&message).into_owned();
        let fields: BTreeMap<String, String> = fields
            .into_iter()
            .map(|(k, v)| {
                let v = redactor.redact_json(&serde_json::json!({ &k: v }));
                let v = v[&k]
                    .as_str()
                    .unwrap_or(crate::classify::REDACTED)
                    .to_owned();
                (redactor.redact_text(&k).into_owned(), v)
            })
            .collect();
        let level = level_name(level);
        let fields_text = serde_json::to_string(&fields).unwrap_or_default();
        let (task, step) = (&self.shared.task_id, &self.shared.step_name);
        match level {
            "error" => {
                tracing::error!(target: "stepbox::step", task, step, fields = %fields_text, "{message}")
            }
            "warn" => {
                tracing::warn!(target: "stepbox::step", task, step, fields = %fields_text, "{message}")
            }
            "info" => {
                tracing::info!(target: "stepbox::step", task, step, fields = %fields_text, "{message}")
            }
            _ => {
                tracing::debug!(target: "stepbox::step", task, step, fields = %fields_text, "{message}")
            }
        }
        self.shared.record.logs.push(LogLine {
            level,
            message,
            fields,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::host::testing;

    #[test]
    fn known_values_and_detected_pii_are_masked_in_message_and_fields() {
        let mut cap = LogCap::new(1 << 10);
        let mut shared = testing::shared_with_known(vec!["jane@example.com".into()]);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        view.write(
            Level::Info,
            "mailing JANE@example.com, card 4111 1111 1111 1111".into(),
            vec![
                ("email".into(), "jane@example.com".into()),
                ("refund_id".into(), "rf_1".into()),
            ],
        )
        .unwrap();
        let text = shared.record.all_text();
        assert!(!text.to_lowercase().contains("jane@example.com"), "{text}");
        assert!(!text.contains("4111 1111 1111 1111"), "{text}");
        assert_eq!(shared.record.logs[0].fields["refund_id"], "rf_1");
    }

    #[test]
    fn volume_past_the_cap_is_dropped_and_counted() {
        let mut cap = LogCap::new(10);
        let mut shared = testing::shared(100);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        view.write(Level::Info, "12345".into(), vec![]).unwrap();
        view.write(Level::Info, "1234567".into(), vec![]).unwrap();
        view.write(Level::Info, "1".into(), vec![]).unwrap();
        assert_eq!(shared.record.logs.len(), 1);
        assert_eq!(shared.record.logs_dropped, 2);
    }
}
