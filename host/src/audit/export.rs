//! Exports of the trail, streamed a page at a time (memory stays flat however long the
//! trail), and the offline verification of a JSON Lines export.

use std::io::BufRead;

use bytes::Bytes;
use futures_util::Stream;

use super::AuditError;
use super::chain::{Verification, Verifier};
use super::checkpoint::CheckpointKeys;
use super::present::{CSV_HEADER, ExportLine, csv_record, export_header};
use crate::store::{AuditFilter, Store};

/// Events read per page of an export.
const EXPORT_PAGE: i64 = 5_000;

/// The two export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line: a header, then events (and checkpoints), as stored.
    JsonLines,
    /// A header row, then one row per event; for spreadsheets, not for verification.
    Csv,
}

impl ExportFormat {
    /// The media type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::JsonLines => "application/jsonl",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }
}

struct Cursor {
    store: Store,
    filter: AuditFilter,
    format: ExportFormat,
    started: bool,
    done: bool,
}

/// The events `filter` selects, in `seq` order, as a stream of chunks of `format`. A
/// JSON Lines export of the whole trail carries the signed checkpoints, each right after
/// the event it signs. Set `filter.through_seq` to the tip when the export starts, so
/// that events sealed while it runs do not make its tail look inserted.
pub fn export(
    store: Store,
    filter: AuditFilter,
    format: ExportFormat,
) -> impl Stream<Item = Result<Bytes, AuditError>> + Send + 'static {
    let cursor = Cursor {
        store,
        filter,
        format,
        started: false,
        done: false,
    };
    futures_util::stream::try_unfold(cursor, |mut cursor| async move {
        if cursor.done {
            return Ok(None);
        }
        if !cursor.started {
            cursor.started = true;
            let head = match cursor.format {
                ExportFormat::JsonLines => {
                    let mut head = json_line(&export_header(cursor.filter.selects()));
                    if !cursor.filter.selects() {
                        // After a retention purge the chain resumes at a checkpoint: it
                        // comes first, so the export verifies from it.
                        let mut tx = cursor.store.begin_read().await?;
                        let anchor = super::trail::chain_anchor(&mut tx).await?;
                        tx.commit().await?;
                        if let Some(anchor) = anchor {
                            head.extend(json_line(&ExportLine::Checkpoint {
                                checkpoint: (&anchor).into(),
                            }));
                        }
                    }
                    head
                }
                ExportFormat::Csv => csv_rows(std::iter::once(CSV_HEADER.map(str::to_owned))),
            };
            return Ok(Some((Bytes::from(head), cursor)));
        }
        let mut tx = cursor.store.begin_read().await?;
        let rows = tx.query_audit(&cursor.filter, EXPORT_PAGE).await?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            tx.commit().await?;
            return Ok(None);
        };
        let checkpoints = match cursor.format {
            ExportFormat::JsonLines if !cursor.filter.selects() => {
                tx.checkpoints_between(first.seq, last.seq).await?
            }
            _ => Vec::new(),
        };
        tx.commit().await?;
        cursor.done = (rows.len() as i64) < EXPORT_PAGE;
        cursor.filter.after_seq = Some(last.seq);
        let chunk = match cursor.format {
            ExportFormat::JsonLines => {
                let mut out = Vec::with_capacity(rows.len() * 400);
                let mut signed = checkpoints.iter().peekable();
                for row in &rows {
                    out.extend(json_line(&ExportLine::Event(Box::new(row.into()))));
                    while let Some(checkpoint) = signed.next_if(|c| c.seq <= row.seq) {
                        out.extend(json_line(&ExportLine::Checkpoint {
                            checkpoint: checkpoint.into(),
                        }));
                    }
                }
                out
            }
            ExportFormat::Csv => csv_rows(rows.iter().map(csv_record)),
        };
        Ok(Some((Bytes::from(chunk), cursor)))
    })
}

fn json_line(line: &ExportLine) -> Vec<u8> {
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    out
}

fn csv_rows(rows: impl IntoIterator<Item = [String; 18]>) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        // Writing to memory cannot fail.
        let _ = writer.write_record(&row);
    }
    writer.into_inner().unwrap_or_default()
}

/// Why an export file could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file could not be read.
    #[error("reading the export failed: {0}")]
    Io(std::io::ErrorKind),
    /// A line is not an export line (the first must be the header).
    #[error("line {0} is not a line of a stepbox audit export")]
    Malformed(usize),
}

/// Verify a JSON Lines export offline: the events link up (or, in a filtered export, each
/// matches its own hash) and every checkpoint verifies under `keys` and signs the event
/// it follows. Without keys, checkpoints cannot be trusted and any present is a bad
/// signature.
pub fn verify_export(
    reader: impl BufRead,
    keys: &CheckpointKeys,
) -> Result<Verification, ExportError> {
    let mut verifier: Option<Verifier> = None;
    let mut events_seen = false;
    for (n, line) in reader.lines().enumerate() {
        let number = n + 1;
        let line = line.map_err(|e| ExportError::Io(e.kind()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine =
            serde_json::from_str(&line).map_err(|_| ExportError::Malformed(number))?;
        match (parsed, &mut verifier) {
            (
                ExportLine::Header {
                    format, filtered, ..
                },
                None,
            ) if format == "stepbox-audit-export" => {
                let fresh = if filtered {
                    Verifier::unlinked()
                } else {
                    Verifier::default()
                };
                verifier = Some(fresh.with_keys(keys.clone()));
            }
            (ExportLine::Event(event), Some(verifier)) => {
                events_seen = true;
                verifier.push(&event.row())
            }
            // A checkpoint before any event anchors a chain whose start was purged.
            (ExportLine::Checkpoint { checkpoint }, Some(verifier)) if !events_seen => {
                verifier.anchor(&checkpoint.row())
            }
            (ExportLine::Checkpoint { checkpoint }, Some(verifier)) => {
                verifier.expect(checkpoint.row())
            }
            _ => return Err(ExportError::Malformed(number)),
        }
    }
    verifier
        .map(Verifier::finish)
        .ok_or(ExportError::Malformed(1))
}
