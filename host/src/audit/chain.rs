//! The hash chain: canonical encoding of an event, the link hash, and a streaming
//! verifier that names the first bad sequence number and what is wrong with it.
//!
//! Each sealed event carries `prev_hash` (the hash of the event sealed before it, zeros
//! for the first) and `hash = SHA-256(DOMAIN ‖ prev_hash ‖ seq ‖ canonical(event))`.
//! The sequence number is inside the hash, so moving a row to another position breaks
//! it; the previous hash is inside, so removing or inserting a row breaks the next link.

use std::collections::VecDeque;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::checkpoint::CheckpointKeys;
use crate::store::{AuditRow, CheckpointRow};

/// Separates our hashes from any other SHA-256 use of the same bytes.
const DOMAIN: &[u8] = b"stepbox-audit-v1\0";
/// The `prev_hash` of the first event of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// Append `bytes` with a length prefix, so field boundaries are unambiguous.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn opt_field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(text) => {
            out.push(1);
            field(out, text.as_bytes());
        }
        None => out.push(0),
    }
}

/// The bytes the hash covers: every column but the links.
pub fn canonical(event: &AuditRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    field(&mut out, event.id.as_bytes());
    out.extend_from_slice(&event.ts.to_be_bytes());
    field(&mut out, event.actor.as_bytes());
    field(&mut out, event.action.as_bytes());
    field(&mut out, event.resource.as_bytes());
    opt_field(&mut out, event.namespace.as_deref());
    field(&mut out, event.outcome.as_bytes());
    opt_field(&mut out, event.classification.as_deref());
    out.push(u8::from(event.contains_pii));
    opt_field(&mut out, event.correlation_id.as_deref());
    field(&mut out, event.details.as_bytes());
    out
}

/// The hash `event` gets when sealed after `prev`.
pub fn link_hash(event: &AuditRow, prev: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update(prev);
    hasher.update(event.seq.to_be_bytes());
    hasher.update(canonical(event));
    hasher.finalize().into()
}

/// A stored hash, if it is one: a wrong length can only be tampering, and becomes a
/// value no hash will match.
pub(crate) fn stored_hash(bytes: Option<&[u8]>) -> Option<[u8; 32]> {
    bytes.map(|b| b.try_into().unwrap_or([0xff; 32]))
}

/// What is wrong at the first bad sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The row's content no longer matches its hash, or the previous row was rewritten.
    Edited,
    /// Rows before this one were removed.
    Missing,
    /// This row was added after the chain was sealed past it.
    Inserted,
    /// Rows were moved out of their sealed order.
    Reordered,
    /// A checkpoint's signature does not verify under the trusted keys.
    BadSignature,
}

/// The first failure found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The first bad sequence number.
    pub seq: i64,
    /// What is wrong there.
    pub problem: Problem,
}

/// The result of walking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Sealed events checked.
    pub checked: u64,
    /// Events not sealed yet (only allowed at the end).
    pub unsealed: u64,
    /// Sequence number and hash of the last good sealed event.
    pub head: Option<(i64, String)>,
    /// Signed checkpoints checked.
    pub checkpoints: u64,
    /// The last event a good checkpoint signed: everything up to it is as it was signed.
    pub signed_through: Option<i64>,
    /// Whether events were checked as one chain (a whole trail) or each against its own
    /// hash only (a filtered export, whose events do not link to each other).
    pub linked: bool,
    /// When retention purged the chain's start: the last purged event's seq, whose signed
    /// checkpoint the first kept event links to.
    pub resumed_after: Option<i64>,
    /// The first failure, if any.
    pub broken: Option<Break>,
}

impl Verification {
    /// True when nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Walks events in sequence order, one at a time, in constant memory.
#[derive(Debug)]
pub struct Verifier {
    prev_hash: [u8; 32],
    prev_prev_hash: Option<[u8; 32]>,
    prev_seq: Option<i64>,
    /// A sequence number of an unsealed event seen before the current one.
    first_unsealed: Option<i64>,
    checked: u64,
    unsealed: u64,
    broken: Option<Break>,
    /// After a failure, the failing row's `prev_hash` and how many more rows to read
    /// looking for it: found *later* in the chain, the rows were reordered.
    lookahead: Option<([u8; 32], usize)>,
    /// The last sealed event that checked out.
    head_seq: Option<i64>,
    /// False for a filtered export: each event is checked against its own hash only.
    links: bool,
    /// Checkpoints given but not checked yet, in `seq` order.
    pending: VecDeque<CheckpointRow>,
    keys: CheckpointKeys,
    checkpoints: u64,
    signed_through: Option<i64>,
    /// The seq of the purged prefix's last event, when the chain resumes after one.
    anchored: Option<i64>,
}

/// Rows read past a failure to tell a reordering from an edit.
const REORDER_WINDOW: usize = 1024;

impl Default for Verifier {
    fn default() -> Self {
        Self::starting_at(GENESIS)
    }
}

impl Verifier {
    /// A verifier for a chain whose first event links to `prev` (zeros for a whole chain,
    /// a checkpoint's hash for a chain resumed from one).
    pub fn starting_at(prev: [u8; 32]) -> Self {
        Self {
            prev_hash: prev,
            prev_prev_hash: None,
            prev_seq: None,
            first_unsealed: None,
            checked: 0,
            unsealed: 0,
            broken: None,
            lookahead: None,
            head_seq: None,
            links: true,
            pending: VecDeque::new(),
            keys: CheckpointKeys::default(),
            checkpoints: 0,
            signed_through: None,
            anchored: None,
        }
    }

    /// A verifier for events that need not link to each other (a filtered export): each
    /// must match its own hash and come in increasing `seq` order.
    pub fn unlinked() -> Self {
        Self {
            links: false,
            ..Self::default()
        }
    }

    /// The same verifier checking signed checkpoints against `keys`.
    pub fn with_keys(mut self, keys: CheckpointKeys) -> Self {
        self.keys = keys;
        self
    }

    /// Resume the chain after a purged prefix: the first event kept must link to the
    /// hash `anchor` (the checkpoint of the last purged event) signs. With keys, the
    /// anchor's signature is checked first; a bad one is named.
    pub fn anchor(&mut self, anchor: &CheckpointRow) {
        if !self.keys.is_empty() && !self.keys.check(anchor) {
            return self.fail(anchor.seq, Problem::BadSignature);
        }
        self.prev_hash = stored_hash(Some(&anchor.hash)).unwrap_or([0xff; 32]);
        self.prev_seq = Some(anchor.seq);
        self.anchored = Some(anchor.seq);
    }

    /// A checkpoint to check once the events up to its `seq` are in; give checkpoints in
    /// `seq` order, each before any event after it.
    pub fn expect(&mut self, checkpoint: CheckpointRow) {
        self.pending.push_back(checkpoint);
    }

    /// Check every given checkpoint below `seq`: the events it covers are all in.
    fn settle_below(&mut self, seq: i64) {
        while self.pending.front().is_some_and(|c| c.seq < seq) {
            let Some(checkpoint) = self.pending.pop_front() else {
                break;
            };
            if self.broken.is_some() {
                continue;
            }
            if !self.keys.check(&checkpoint) {
                return self.fail(checkpoint.seq, Problem::BadSignature);
            }
            let here = self.head_seq == Some(checkpoint.seq);
            if here && checkpoint.hash[..] != self.prev_hash[..] {
                // The chain links, yet not to what was signed: rewritten and re-hashed.
                return self.fail(checkpoint.seq, Problem::Edited);
            }
            if !here && self.links {
                // The signed event is gone: removed, or the tail was cut off.
                return self.fail(checkpoint.seq, Problem::Missing);
            }
            self.checkpoints += 1;
            self.signed_through = Some(checkpoint.seq);
        }
    }

    /// Check the next event. After the first break, further events are ignored.
    pub fn push(&mut self, event: &AuditRow) {
        self.settle_below(event.seq);
        if let Some((target, left)) = &mut self.lookahead {
            if stored_hash(event.hash.as_deref()) == Some(*target) {
                if let Some(broken) = &mut self.broken {
                    broken.problem = Problem::Reordered;
                }
                self.lookahead = None;
            } else if *left <= 1 {
                self.lookahead = None;
            } else {
                *left -= 1;
            }
            return;
        }
        if self.broken.is_some() {
            return;
        }
        if self.prev_seq.is_some_and(|prev| event.seq <= prev) {
            return self.fail(event.seq, Problem::Reordered);
        }
        let (Some(prev_hash), Some(hash)) = (
            stored_hash(event.prev_hash.as_deref()),
            stored_hash(event.hash.as_deref()),
        ) else {
            self.unsealed += 1;
            self.first_unsealed.get_or_insert(event.seq);
            self.prev_seq = Some(event.seq);
            return;
        };
        if let Some(unsealed) = self.first_unsealed {
            // The sealer seals in order: an unsealed row behind a sealed one was put there
            // after the chain had moved past its position.
            return self.fail(unsealed, Problem::Inserted);
        }
        if !self.links {
            if link_hash(event, &prev_hash) != hash {
                return self.fail(event.seq, Problem::Edited);
            }
            self.prev_hash = hash;
            self.prev_seq = Some(event.seq);
            self.head_seq = Some(event.seq);
            self.checked += 1;
            return;
        }
        if link_hash(event, &prev_hash) != hash {
            // Content or position changed. If the row it links to turns up later, rows
            // were moved; otherwise this one was edited.
            self.lookahead = Some((prev_hash, REORDER_WINDOW));
            return self.fail(event.seq, Problem::Edited);
        }
        if prev_hash != self.prev_hash {
            if Some(prev_hash) == self.prev_prev_hash {
                // This row links past its predecessor: the predecessor was slipped in.
                return self.fail(self.prev_seq.unwrap_or(event.seq), Problem::Inserted);
            }
            let problem =
                if self.checked > 0 && self.prev_seq.is_some_and(|prev| event.seq > prev + 1) {
                    Problem::Missing
                } else {
                    Problem::Edited
                };
            self.lookahead = Some((prev_hash, REORDER_WINDOW));
            return self.fail(event.seq, problem);
        }
        self.prev_prev_hash = Some(self.prev_hash);
        self.prev_hash = hash;
        self.prev_seq = Some(event.seq);
        self.head_seq = Some(event.seq);
        self.checked += 1;
    }

    fn fail(&mut self, seq: i64, problem: Problem) {
        self.broken = Some(Break { seq, problem });
    }

    /// The verdict, once every event and checkpoint is in.
    pub fn finish(mut self) -> Verification {
        self.settle_below(i64::MAX);
        Verification {
            checked: self.checked,
            unsealed: self.unsealed,
            head: (self.checked > 0).then(|| {
                (
                    self.head_seq.unwrap_or_default(),
                    hex::encode(self.prev_hash),
                )
            }),
            checkpoints: self.checkpoints,
            signed_through: self.signed_through,
            linked: self.links,
            resumed_after: self.anchored,
            broken: self.broken.clone(),
        }
    }
}

/// Seal `events` (in sequence order, unsealed) after `prev`, in place; returns the new head.
pub fn seal_in_order(events: &mut [AuditRow], mut prev: [u8; 32]) -> [u8; 32] {
    for event in events {
        let hash = link_hash(event, &prev);
        event.prev_hash = Some(prev.to_vec());
        event.hash = Some(hash.to_vec());
        prev = hash;
    }
    prev
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::AuditSigner;

    fn event(seq: i64) -> AuditRow {
        AuditRow {
            seq,
            id: format!("evt_{seq}"),
            ts: 1_764_000_000_000 + seq,
            actor: "user:user_123".into(),
            action: "task.created".into(),
            resource: format!("task/task_{seq}"),
            namespace: Some("customer_success".into()),
            outcome: "success".into(),
            classification: Some("confidential".into()),
            contains_pii: true,
            correlation_id: None,
            details: json!({ "b": 1, "a": [true, null, "x"] }).to_string(),
            prev_hash: None,
            hash: None,
        }
    }

    fn sealed(n: i64) -> Vec<AuditRow> {
        let mut events: Vec<AuditRow> = (1..=n).map(event).collect();
        seal_in_order(&mut events, GENESIS);
        events
    }

    fn verify(events: &[AuditRow]) -> Verification {
        let mut verifier = Verifier::default();
        events.iter().for_each(|e| verifier.push(e));
        verifier.finish()
    }

    fn signer() -> AuditSigner {
        AuditSigner::from_pem(
            "-----BEGIN PRIVATE KEY-----\n\
             MC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH\n\
             -----END PRIVATE KEY-----\n",
        )
        .unwrap()
    }

    /// `events` checked with a checkpoint of each seq in `at`, signed by `signer()`.
    fn verify_signed(events: &[AuditRow], checkpoints: &[CheckpointRow]) -> Verification {
        let mut verifier = Verifier::default().with_keys(signer().verifying());
        checkpoints.iter().for_each(|c| verifier.expect(c.clone()));
        events.iter().for_each(|e| verifier.push(e));
        verifier.finish()
    }

    fn checkpoint_of(event: &AuditRow) -> CheckpointRow {
        signer().sign(event.seq, event.hash.as_deref().unwrap(), 0)
    }

    #[test]
    fn checkpoints_sign_the_chain_and_a_cut_off_tail_is_missing() {
        let events = sealed(10);
        let checkpoints = [checkpoint_of(&events[4]), checkpoint_of(&events[9])];
        let report = verify_signed(&events, &checkpoints);
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.checkpoints, report.signed_through), (2, Some(10)));

        // The last three rows deleted: the chain that is left links, the checkpoint says no.
        assert_eq!(
            verify_signed(&events[..7], &checkpoints).broken,
            Some(Break {
                seq: 10,
                problem: Problem::Missing
            })
        );
    }

    #[test]
    fn a_rehashed_chain_disagrees_with_its_checkpoint() {
        let mut events = sealed(10);
        let checkpoints = [checkpoint_of(&events[9])];
        // Edit row 3 and recompute every hash from there: the chain links again.
        events[2].outcome = "denied".into();
        let prev = stored_hash(events[1].hash.as_deref()).unwrap();
        seal_in_order(&mut events[2..], prev);
        assert!(verify(&events).is_intact());
        assert_eq!(
            verify_signed(&events, &checkpoints).broken,
            Some(Break {
                seq: 10,
                problem: Problem::Edited
            })
        );
    }

    #[test]
    fn a_chain_resumes_after_a_purged_prefix_only_at_a_signed_anchor() {
        let events = sealed(10);
        let anchor = checkpoint_of(&events[3]);
        let mut verifier = Verifier::default().with_keys(signer().verifying());
        verifier.anchor(&anchor);
        events[4..].iter().for_each(|e| verifier.push(e));
        let report = verifier.finish();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.resumed_after, report.checked), (Some(4), 6));

        // Rows cut after the anchor, or an anchor whose signature was forged: named.
        let mut verifier = Verifier::default().with_keys(signer().verifying());
        verifier.anchor(&anchor);
        events[6..].iter().for_each(|e| verifier.push(e));
        assert_eq!(verifier.finish().broken.map(|b| b.seq), Some(7));
        let mut forged = anchor.clone();
        forged.signature[1] ^= 1;
        let mut verifier = Verifier::default().with_keys(signer().verifying());
        verifier.anchor(&forged);
        events[4..].iter().for_each(|e| verifier.push(e));
        assert_eq!(
            verifier.finish().broken,
            Some(Break {
                seq: 4,
                problem: Problem::BadSignature
            })
        );
    }

    #[test]
    fn a_forged_checkpoint_signature_is_named() {
        let events = sealed(5);
        let mut checkpoint = checkpoint_of(&events[2]);
        checkpoint.signature[0] ^= 0x40;
        assert_eq!(
            verify_signed(&events, &[checkpoint]).broken,
            Some(Break {
                seq: 3,
                problem: Problem::BadSignature
            })
        );
    }

    #[test]
    fn a_filtered_trail_checks_each_event_against_its_own_hash() {
        let mut events = sealed(10);
        events.retain(|e| e.seq % 3 == 0);
        let mut verifier = Verifier::unlinked();
        events.iter().for_each(|e| verifier.push(e));
        let report = verifier.finish();
        assert!(report.is_intact() && !report.linked, "{report:?}");
        assert_eq!(report.checked, 3);

        events[1].actor = "user:mallory".into();
        let mut verifier = Verifier::unlinked();
        events.iter().for_each(|e| verifier.push(e));
        assert_eq!(
            verifier.finish().broken,
            Some(Break {
                seq: 6,
                problem: Problem::Edited
            })
        );
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let report = verify(&sealed(10));
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.checked, 10);
        assert_eq!(report.head.unwrap().0, 10);
    }

    #[test]
    fn canonical_bytes_cover_every_field_with_unambiguous_boundaries() {
        let a = event(1);
        let mut b = event(1);
        b.details = json!({ "b": 2, "a": [true, null, "x"] }).to_string();
        assert_ne!(canonical(&a), canonical(&b));
        let mut b = event(1);
        b.contains_pii = false;
        assert_ne!(canonical(&a), canonical(&b));
        let mut b = event(1);
        b.namespace = None;
        assert_ne!(canonical(&a), canonical(&b));
        let (mut c, mut d) = (event(1), event(1));
        c.actor = "ab".into();
        c.action = "c".into();
        d.actor = "a".into();
        d.action = "bc".into();
        assert_ne!(canonical(&c), canonical(&d));
    }

    #[test]
    fn an_edited_row_is_named() {
        let mut events = sealed(10);
        events[4].outcome = "denied".into();
        assert_eq!(
            verify(&events).broken,
            Some(Break {
                seq: 5,
                problem: Problem::Edited
            })
        );
    }

    #[test]
    fn an_edited_row_with_a_recomputed_hash_breaks_the_next_link() {
        let mut events = sealed(10);
        events[4].actor = "user:someone_else".into();
        let prev = stored_hash(events[4].prev_hash.as_deref()).unwrap();
        events[4].hash = Some(link_hash(&events[4], &prev).to_vec());
        assert_eq!(
            verify(&events).broken,
            Some(Break {
                seq: 6,
                problem: Problem::Edited
            })
        );
    }

    #[test]
    fn a_deleted_row_is_missing() {
        let mut events = sealed(10);
        events.remove(6);
        assert_eq!(
            verify(&events).broken,
            Some(Break {
                seq: 8,
                problem: Problem::Missing
            })
        );
    }

    #[test]
    fn a_row_slipped_into_a_gap_is_inserted() {
        // Sealed with a gap at 5 (a rolled-back sequence value), then a row forged into it.
        let mut events: Vec<AuditRow> = [1, 2, 3, 4, 6, 7].into_iter().map(event).collect();
        seal_in_order(&mut events, GENESIS);
        let mut forged = event(5);
        forged.action = "task.deleted".into();
        events.insert(4, forged.clone());
        assert_eq!(
            verify(&events).broken,
            Some(Break {
                seq: 5,
                problem: Problem::Inserted
            })
        );
        // Even with a hash computed to link after row 4.
        forged.prev_hash = events[3].hash.clone();
        let prev = stored_hash(events[3].hash.as_deref()).unwrap();
        forged.hash = Some(link_hash(&forged, &prev).to_vec());
        events[4] = forged;
        assert_eq!(
            verify(&events).broken,
            Some(Break {
                seq: 5,
                problem: Problem::Inserted
            })
        );
    }

    #[test]
    fn rows_moved_to_other_positions_are_reordered() {
        // Read back in sequence order after two rows' sequence numbers were swapped.
        let mut events = sealed(10);
        let (a, b) = (events[3].seq, events[6].seq);
        events[3].seq = b;
        events[6].seq = a;
        events.sort_by_key(|e| e.seq);
        assert_eq!(
            verify(&events).broken,
            Some(Break {
                seq: 4,
                problem: Problem::Reordered
            })
        );
    }

    #[test]
    fn unsealed_events_are_allowed_only_at_the_end() {
        let mut events = sealed(5);
        events.push(event(6));
        events.push(event(7));
        let report = verify(&events);
        assert!(report.is_intact());
        assert_eq!((report.checked, report.unsealed), (5, 2));
    }
}
