//! PII detectors for free text: emails, phone numbers, US social security numbers, payment
//! card numbers (Luhn-checked) and IBANs (mod-97-checked).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::LazyLock;

use regex::Regex;

use super::{DataClass, phone};

/// A payment card number (PAN) has 13 to 19 digits (ISO/IEC 7812).
const CARD_DIGITS: RangeInclusive<usize> = 13..=19;
/// An IBAN is 15 (Norway) to 34 characters long (ISO 13616).
const IBAN_CHARS: RangeInclusive<usize> = 15..=34;

/// A practical email address: a local part, `@`, dot-separated labels and a 2–24 letter TLD.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    let label = r"[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?";
    Regex::new(&format!(
        r"[\p{{L}}\p{{N}}._%+-]+@{label}(?:\.{label})*\.\p{{L}}{{2,24}}\b"
    ))
    .expect("email regex is valid")
});
/// The shape of a US social security number; the detector checks its parts.
pub(super) static SSN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]{3}-[0-9]{2}-[0-9]{4}").expect("ssn regex is valid"));
/// Digit groups joined by single spaces or dashes; card windows are cut from these runs.
static DIGIT_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]+(?:[ -][0-9]+)*").expect("digit run regex is valid"));
/// A country code, check digits, then space-separated alphanumeric groups.
static IBAN_RUN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)[A-Z]{2}[0-9]{2}[A-Z0-9]*(?: [A-Z0-9]+)*").expect("iban regex is valid")
});

/// The kind of personal or financial data a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiKind {
    /// An email address.
    Email,
    /// A phone number, international (`+…`) or national with separators.
    Phone,
    /// A US social security number, `ddd-dd-dddd`.
    Ssn,
    /// A Luhn-valid payment card number.
    Card,
    /// An IBAN whose mod-97 check passes.
    Iban,
}

impl PiiKind {
    /// The data class of a value of this kind: email and phone are `pii-contact`, an SSN is
    /// `pii-identifier`, cards and IBANs are `financial`.
    pub fn class(self) -> DataClass {
        match self {
            PiiKind::Email | PiiKind::Phone => DataClass::PiiContact,
            PiiKind::Ssn => DataClass::PiiIdentifier,
            PiiKind::Card | PiiKind::Iban => DataClass::Financial,
        }
    }

    /// Which kind wins when two detectors' findings overlap (lower wins): the checksummed ones
    /// first (an IBAN holds digit groups that may pass Luhn), the loosest (phone) last.
    fn rank(self) -> u8 {
        match self {
            PiiKind::Iban => 0,
            PiiKind::Card => 1,
            PiiKind::Ssn => 2,
            PiiKind::Email => 3,
            PiiKind::Phone => 4,
        }
    }
}

/// One detector hit: its kind and its byte range in the input (`&text[start..end]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: PiiKind,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
}

/// All non-overlapping findings in `text`, in order of position.
///
/// Card numbers (13–19 digits, spaces or dashes allowed) only when Luhn-valid; IBANs only when
/// the ISO 13616 mod-97 check passes; SSNs as `ddd-dd-dddd` (not area 000, 666 or 9xx, group 00
/// or serial 0000); phones in E.164 (`+` and 8–15 digits) or national formats with separators
/// and at least 9 digits; emails per a practical regex. Numbers glued to letters or to a longer
/// digit run (`ord_12345`, `2024-01-15`, a UUID) are not findings. Where findings of different
/// detectors overlap, IBAN wins over card, card over SSN, then email, then phone.
pub fn detect(text: &str) -> Vec<Finding> {
    let mut all = detect_all(text);
    all.sort_by_key(|f| (f.kind.rank(), f.start));
    // Each detector's own findings are disjoint, so kept findings sorted by start are sorted by
    // end too, and the last one starting before `f` ends is the only one `f` can overlap.
    let mut kept: BTreeMap<usize, Finding> = BTreeMap::new();
    for f in all {
        let clashes = kept
            .range(..f.end)
            .next_back()
            .is_some_and(|(_, k)| k.end > f.start);
        if !clashes {
            kept.insert(f.start, f);
        }
    }
    kept.into_values().collect()
}

/// Every detector's findings, overlaps included, in no particular order. The redactor masks
/// their union, so a loser of an overlap is masked too.
pub(super) fn detect_all(text: &str) -> Vec<Finding> {
    let mut all = Vec::new();
    find_cards(text, &mut all);
    find_ibans(text, &mut all);
    find_ssns(text, &mut all);
    find_emails(text, &mut all);
    phone::find_phones(text, &mut all);
    all
}

/// Whether `digits` passes the Luhn check. Spaces and dashes are ignored; any other non-digit,
/// or fewer than two digits, fails.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for b in digits.bytes().rev() {
        match b {
            b' ' | b'-' => continue,
            b'0'..=b'9' => {
                let mut d = u32::from(b - b'0');
                if !count.is_multiple_of(2) {
                    d *= 2;
                    if d > 9 {
                        d -= 9;
                    }
                }
                sum = (sum + d) % 10;
                count += 1;
            }
            _ => return false,
        }
    }
    count >= 2 && sum == 0
}

/// Whether `iban` is a well-formed IBAN whose ISO 13616 mod-97 check passes. Spaces are ignored
/// and letters may be of either case.
pub fn iban_valid(iban: &str) -> bool {
    let chars: Vec<u8> = iban
        .bytes()
        .filter(|&b| b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    let shaped = IBAN_CHARS.contains(&chars.len())
        && chars[..2].iter().all(u8::is_ascii_uppercase)
        && chars[2..4].iter().all(u8::is_ascii_digit)
        && chars[4..].iter().all(u8::is_ascii_alphanumeric);
    // Check digits 00, 01 and 99 are never issued.
    if !shaped || matches!(&chars[2..4], b"00" | b"01" | b"99") {
        return false;
    }
    let rearranged = chars[4..].iter().chain(&chars[..4]);
    let remainder = rearranged.fold(0u32, |rem, &c| {
        if c.is_ascii_digit() {
            (rem * 10 + u32::from(c - b'0')) % 97
        } else {
            (rem * 100 + u32::from(c - b'A') + 10) % 97
        }
    });
    remainder == 1
}

fn find_cards(text: &str, out: &mut Vec<Finding>) {
    for run in DIGIT_RUN.find_iter(text) {
        let groups = pieces(run.start(), run.as_str(), &[' ', '-']);
        // Inside the run the groups are split by our own separators; only the run's edges
        // must stand apart from their surroundings.
        let valid = |window: &[Piece]| {
            let (start, end) = (window[0].start, window[window.len() - 1].end);
            (start != run.start() || isolated_before(text, start))
                && (end != run.end() || isolated_after(text, end))
                && luhn_valid(&text[start..end])
        };
        // Card-shaped windows first, so that a stray number before a grouped card does not
        // take its first groups; then any window among the groups left over.
        let shaped = greedy_windows(&groups, |w| card_shaped(w) && valid(w));
        let mut next = 0;
        let mut windows = Vec::new();
        for &(first, used) in &shaped {
            windows.extend(
                greedy_windows(&groups[next..first], valid)
                    .into_iter()
                    .map(|(f, u)| (next + f, u)),
            );
            windows.push((first, used));
            next = first + used;
        }
        windows.extend(
            greedy_windows(&groups[next..], valid)
                .into_iter()
                .map(|(f, u)| (next + f, u)),
        );
        out.extend(windows.into_iter().map(|(first, used)| Finding {
            kind: PiiKind::Card,
            start: groups[first].start,
            end: groups[first + used - 1].end,
        }));
    }
}

/// How card numbers are printed: one block, blocks of four (the last may be shorter), or the
/// 4-6-4 and 4-6-5 blocks of Diners and Amex.
fn card_shaped(window: &[Piece]) -> bool {
    let lens: Vec<usize> = window.iter().map(|p| p.len).collect();
    match lens.as_slice() {
        [] => false,
        [_] | [4, 6, 4 | 5] => true,
        [blocks @ .., last] => blocks.iter().all(|&len| len == 4) && (1..=4).contains(last),
    }
}

/// Card windows chosen left to right, longest first, as (first group, groups used).
fn greedy_windows(groups: &[Piece], accept: impl Fn(&[Piece]) -> bool) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        match longest_window(&groups[i..], CARD_DIGITS, &accept) {
            Some(used) => {
                found.push((i, used));
                i += used;
            }
            None => i += 1,
        }
    }
    found
}

/// How many of `groups`, taken from the first, make the longest window whose total length is in
/// `lengths` and which `accept`s.
fn longest_window(
    groups: &[Piece],
    lengths: RangeInclusive<usize>,
    accept: impl Fn(&[Piece]) -> bool,
) -> Option<usize> {
    let mut total = 0;
    let mut fits = Vec::new();
    for (i, piece) in groups.iter().enumerate() {
        total += piece.len;
        if total > *lengths.end() {
            break;
        }
        if lengths.contains(&total) {
            fits.push(i + 1);
        }
    }
    fits.into_iter().rev().find(|&used| accept(&groups[..used]))
}

fn find_ibans(text: &str, out: &mut Vec<Finding>) {
    for run in IBAN_RUN.find_iter(text) {
        let groups = pieces(run.start(), run.as_str(), &[' ']);
        let mut i = 0;
        while i < groups.len() {
            let head = &text.as_bytes()[groups[i].start..groups[i].end];
            let starts_iban = head.len() >= 4
                && head[..2].iter().all(u8::is_ascii_uppercase)
                && head[2..4].iter().all(u8::is_ascii_digit);
            let valid = |window: &[Piece]| {
                let (start, end) = (window[0].start, window[window.len() - 1].end);
                isolated_after(text, end) && iban_valid(&text[start..end])
            };
            match starts_iban
                .then(|| longest_window(&groups[i..], IBAN_CHARS, valid))
                .flatten()
            {
                Some(used) => {
                    let (start, end) = (groups[i].start, groups[i + used - 1].end);
                    out.push(Finding {
                        kind: PiiKind::Iban,
                        start,
                        end,
                    });
                    i += used;
                }
                None => i += 1,
            }
        }
    }
}

/// One piece of a run between single separators: its byte range in the text and its length.
#[derive(Clone, Copy)]
pub(super) struct Piece {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) len: usize,
}

/// The pieces of `run` (found at byte `offset` of the text) between single `separators`.
pub(super) fn pieces(offset: usize, run: &str, separators: &[char]) -> Vec<Piece> {
    run.split(separators)
        .scan(offset, |at, piece| {
            let span = Piece {
                start: *at,
                end: *at + piece.len(),
                len: piece.len(),
            };
            *at += piece.len() + 1;
            Some(span)
        })
        .collect()
}

fn find_ssns(text: &str, out: &mut Vec<Finding>) {
    for m in SSN.find_iter(text) {
        let s = m.as_str();
        let (area, group, serial) = (&s[..3], &s[4..6], &s[7..]);
        let plausible = area != "000"
            && area != "666"
            && !area.starts_with('9')
            && group != "00"
            && serial != "0000";
        if plausible && isolated(text, m.start(), m.end()) {
            out.push(Finding {
                kind: PiiKind::Ssn,
                start: m.start(),
                end: m.end(),
            });
        }
    }
}

fn find_emails(text: &str, out: &mut Vec<Finding>) {
    out.extend(EMAIL.find_iter(text).map(|m| Finding {
        kind: PiiKind::Email,
        start: m.start(),
        end: m.end(),
    }));
}

/// Whether `text[start..end]` stands on its own rather than being part of a word, an
/// identifier (`ord_4111…`) or a longer number (`…-555-123-4567`, `…4567:30`).
pub(super) fn isolated(text: &str, start: usize, end: usize) -> bool {
    isolated_before(text, start) && isolated_after(text, end)
}

/// Nothing glues onto the text before `start`: no letter, digit or `_`, and no `.`, `-`, `/`
/// or `:` after a digit. A `]` glues too, so that `[REDACTED]-555…` is judged as the original
/// number was.
fn isolated_before(text: &str, start: usize) -> bool {
    let bytes = text.as_bytes();
    let before = start.checked_sub(1).and_then(|i| bytes.get(i).copied());
    let before2 = start.checked_sub(2).and_then(|i| bytes.get(i).copied());
    !(glues(before)
        || before == Some(b']')
        || (joins(before) && (digit(before2) || before2 == Some(b']'))))
}

/// The mirror of [`isolated_before`] for the text after `end`, with `[` for `]`.
fn isolated_after(text: &str, end: usize) -> bool {
    let bytes = text.as_bytes();
    let after = bytes.get(end).copied();
    let after2 = end.checked_add(1).and_then(|i| bytes.get(i).copied());
    !(glues(after)
        || after == Some(b'[')
        || (joins(after) && (digit(after2) || after2 == Some(b'['))))
}

fn glues(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn joins(b: Option<u8>) -> bool {
    matches!(b, Some(b'.' | b'-' | b'/' | b':'))
}

fn digit(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_digit())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Each finding's kind and the text it covers.
    pub(in crate::classify) fn kinds(text: &str) -> Vec<(PiiKind, &str)> {
        detect(text)
            .into_iter()
            .map(|f| (f.kind, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn luhn_accepts_known_test_cards_and_rejects_a_changed_digit() {
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "79927398713",
        ] {
            assert!(luhn_valid(card), "{card}");
        }
        for bad in [
            "4111 1111 1111 1112",
            "5555555555554445",
            "79927398710",
            "0",
            "",
            "4111x1111",
            "４１",
        ] {
            assert!(!luhn_valid(bad), "{bad}");
        }
        assert!(luhn_valid("00"), "two zeros pass the arithmetic");
    }

    #[test]
    fn iban_check_accepts_valid_and_rejects_a_changed_digit() {
        for iban in [
            "GB82 WEST 1234 5698 7654 32",
            "GB82WEST12345698765432",
            "gb82 west 1234 5698 7654 32",
            "DE89 3704 0044 0532 0130 00",
            "NO93 8601 1117 947",
            "FR14 2004 1010 0505 0001 3M02 606",
        ] {
            assert!(iban_valid(iban), "{iban}");
        }
        for bad in [
            "GB82 WEST 1234 5698 7654 33",
            "GB83 WEST 1234 5698 7654 32",
            "DE89 3704 0044 0532 0130 01",
            "GB82",
            "",
            "1282 WEST 1234 5698 7654 32",
            "GB82-WEST-1234-5698-7654-32",
            "GB82 WEST 1234 5698 7654 3É",
        ] {
            assert!(!iban_valid(bad), "{bad}");
        }
    }

    #[test]
    fn finds_cards_only_when_luhn_valid() {
        assert_eq!(
            kinds("paid with 4111 1111 1111 1111 today"),
            [(PiiKind::Card, "4111 1111 1111 1111")]
        );
        assert_eq!(
            kinds("card=4111-1111-1111-1111."),
            [(PiiKind::Card, "4111-1111-1111-1111")]
        );
        assert_eq!(
            kinds("amex 378282246310005"),
            [(PiiKind::Card, "378282246310005")]
        );
        assert!(kinds("paid with 4111 1111 1111 1112 today").is_empty());
        assert!(
            kinds("ord_4111111111111111").is_empty(),
            "glued to an identifier"
        );
    }

    #[test]
    fn finds_a_grouped_card_after_a_stray_number() {
        // "6 9638 1807 5445" is Luhn-valid too, but not printed like a card.
        assert_eq!(
            kinds("6 9638 1807 5445 0006 A"),
            [(PiiKind::Card, "9638 1807 5445 0006")]
        );
        assert_eq!(
            kinds("12-4111111111111111"),
            [(PiiKind::Card, "4111111111111111")]
        );
    }

    #[test]
    fn finds_a_card_between_other_numbers() {
        assert_eq!(
            kinds("qty 12 4111111111111111 3"),
            [(PiiKind::Card, "4111111111111111")]
        );
    }

    #[test]
    fn finds_ibans_only_when_mod97_passes() {
        assert_eq!(
            kinds("to GB82 WEST 1234 5698 7654 32 please"),
            [(PiiKind::Iban, "GB82 WEST 1234 5698 7654 32")]
        );
        assert_eq!(
            kinds("iban:DE89370400440532013000"),
            [(PiiKind::Iban, "DE89370400440532013000")]
        );
        assert!(kinds("to GB82 WEST 1234 5698 7654 33 please").is_empty());
        assert!(
            kinds("GB82WEST12345698765432x").is_empty(),
            "glued to a word"
        );
    }

    #[test]
    fn finds_ssns_but_not_invalid_areas() {
        assert_eq!(kinds("ssn 123-45-6789."), [(PiiKind::Ssn, "123-45-6789")]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-34-5678",
            "123-00-4567",
            "123-45-0000",
            "1123-45-6789",
            "123-45-67890",
            "123-45-6789-1",
        ] {
            assert!(kinds(bad).is_empty(), "{bad}: {:?}", kinds(bad));
        }
    }

    #[test]
    fn finds_emails() {
        assert_eq!(
            kinds("mail jane.doe+shop@example.co.uk, thanks"),
            [(PiiKind::Email, "jane.doe+shop@example.co.uk")]
        );
        assert_eq!(kinds("<a_b@x-y.io>"), [(PiiKind::Email, "a_b@x-y.io")]);
        assert_eq!(
            kinds("josé@correo.es"),
            [(PiiKind::Email, "josé@correo.es")]
        );
        assert!(kinds("user@localhost").is_empty());
        assert!(kinds("@example.com").is_empty());
        assert!(kinds("a@b.c").is_empty());
    }

    #[test]
    fn no_false_positives_on_everyday_values() {
        for text in [
            "2024-01-15",
            "2024-01-15T10:30:00Z",
            "2024-01-15 10:30:00",
            "on 15.01.2024 at 10:30",
            "550e8400-e29b-41d4-a716-446655440000",
            "total 150.00 EUR",
            "amounts 150.00 200.00 300.00 400.00",
            "ord_12345",
            "order ord_12345 of 3 items",
            "ip 192.168.100.200",
            "version 1.2.3",
            "1700000000",
            "",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", kinds(text));
        }
    }

    #[test]
    fn overlapping_detections_keep_the_strongest() {
        // The digits after the country code pass Luhn, but they belong to the IBAN.
        assert!(luhn_valid("3704 0044 1000 0000 09"));
        assert_eq!(
            kinds("DE71 3704 0044 1000 0000 09"),
            [(PiiKind::Iban, "DE71 3704 0044 1000 0000 09")]
        );
        // "0 4111 1111 1111" would be a phone with a trunk 0; the card wins.
        assert_eq!(
            kinds("0 4111 1111 1111 1111"),
            [(PiiKind::Card, "4111 1111 1111 1111")]
        );
        // The digits inside an email are not also a phone.
        assert_eq!(
            kinds("x.4155552671@example.com"),
            [(PiiKind::Email, "x.4155552671@example.com")]
        );
        // An SSN is also a 9-digit number with dashes; it stays an SSN.
        assert_eq!(kinds("123-45-6789"), [(PiiKind::Ssn, "123-45-6789")]);
        let text = "a@b.io 123-45-6789 +14155552671 4111111111111111 GB82WEST12345698765432";
        let found: Vec<PiiKind> = detect(text).into_iter().map(|f| f.kind).collect();
        assert_eq!(
            found,
            [
                PiiKind::Email,
                PiiKind::Ssn,
                PiiKind::Phone,
                PiiKind::Card,
                PiiKind::Iban
            ]
        );
    }

    #[test]
    fn classes_follow_the_kind() {
        assert_eq!(PiiKind::Email.class(), DataClass::PiiContact);
        assert_eq!(PiiKind::Phone.class(), DataClass::PiiContact);
        assert_eq!(PiiKind::Ssn.class(), DataClass::PiiIdentifier);
        assert_eq!(PiiKind::Card.class(), DataClass::Financial);
        assert_eq!(PiiKind::Iban.class(), DataClass::Financial);
    }

    /// A 16-digit number with a valid Luhn check digit appended to 15 random digits.
    fn luhn_card() -> impl Strategy<Value = String> {
        proptest::collection::vec(0u8..10, 15).prop_map(|digits| {
            let body: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            (0..10)
                .map(|check| format!("{body}{check}"))
                .find(|card| luhn_valid(card))
                .expect("one check digit in ten completes a Luhn-valid number")
        })
    }

    proptest! {
        #[test]
        fn any_luhn_valid_card_in_ascii_text_is_found(
            prefix in "[ -~]{0,40}",
            card in luhn_card(),
            grouped in any::<bool>(),
            suffix in "[ -~]{0,40}",
        ) {
            let card = if grouped {
                card.as_bytes()
                    .chunks(4)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                card
            };
            // A four-digit block right before a grouped card could be its first block, and
            // then which sixteen digits are the card is genuinely ambiguous.
            let tail: Vec<bool> = prefix.bytes().rev().take(5).map(|b| b.is_ascii_digit()).collect();
            prop_assume!(!grouped || !tail.starts_with(&[true; 4]) || tail == [true; 5]);
            let text = format!("{prefix} {card} {suffix}");
            let (start, end) = (prefix.len() + 1, prefix.len() + 1 + card.len());
            let findings = detect(&text);
            prop_assert!(
                findings.iter().any(|f| f.kind == PiiKind::Card && f.start <= start && f.end >= end),
                "{text:?}: {findings:?}"
            );
        }

        #[test]
        fn detect_never_panics_and_returns_ordered_char_boundaries(text in "\\PC{0,80}") {
            let findings = detect(&text);
            for pair in findings.windows(2) {
                prop_assert!(pair[0].end <= pair[1].start);
            }
            for f in &findings {
                prop_assert!(f.start < f.end);
                prop_assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
            }
        }
    }
}
