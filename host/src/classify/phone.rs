//! The phone number detector: E.164, and national formats with separators.

use std::ops::RangeInclusive;
use std::sync::LazyLock;

use regex::Regex;

use super::detect::{Finding, PiiKind, SSN, isolated, pieces};

/// An E.164 number has at most 15 digits; fewer than 8 after the `+` is a short code, not a phone.
const E164_DIGITS: RangeInclusive<usize> = 8..=15;
/// A national number written with separators: fewer than 9 digits is too easily a date or a count.
const NATIONAL_DIGITS: RangeInclusive<usize> = 9..=15;
/// Space-separated groups in one phone number; `+33 1 23 45 67 89` has six.
const MAX_GROUPS: usize = 6;
/// Space-separated chunks of digits, dots, dashes and parentheses; phone windows are cut from these.
static PHONE_RUN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\+?[0-9(][0-9().-]*(?: \+?[0-9(][0-9().-]*)*").expect("phone regex is valid")
});
/// The North American shape: `(415) 555-2671`, `1-415-555-2671`, `415.555.2671`.
static NANP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:1[ .-]?)?(?:\([0-9]{3}\) ?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}$")
        .expect("nanp regex is valid")
});

/// Adds every phone number in `text` to `out`: from each run of space-separated chunks, the
/// longest valid window of at most [`MAX_GROUPS`] chunks, left to right.
pub(super) fn find_phones(text: &str, out: &mut Vec<Finding>) {
    for run in PHONE_RUN.find_iter(text) {
        let chunks = pieces(run.start(), run.as_str(), &[' ']);
        let mut i = 0;
        while i < chunks.len() {
            let last = chunks.len().min(i + MAX_GROUPS);
            let found = (i + 1..=last).rev().find_map(|j| {
                let (start, end) = trim_phone(text, chunks[i].start, chunks[j - 1].end);
                phone_valid(text, start, end).then_some((start, end, j))
            });
            match found {
                Some((start, end, j)) => {
                    out.push(Finding {
                        kind: PiiKind::Phone,
                        start,
                        end,
                    });
                    i = j;
                }
                None => i += 1,
            }
        }
    }
}

/// Drops trailing punctuation a sentence may put after a number: `call 555-123-4567.` or
/// `(tel 555-123-4567)`.
fn trim_phone(text: &str, start: usize, mut end: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let count = |b: u8| bytes[start..end].iter().filter(|&&c| c == b).count();
    let (mut opens, mut closes) = (count(b'('), count(b')'));
    while end > start {
        match bytes[end - 1] {
            b'.' | b'-' => {}
            b'(' => opens -= 1,
            b')' if closes > opens => closes -= 1,
            _ => break,
        }
        end -= 1;
    }
    (start, end)
}

fn phone_valid(text: &str, start: usize, end: usize) -> bool {
    let s = &text[start..end];
    let (plus, body) = match s.strip_prefix('+') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    let well_formed = !body.contains('+') && separators_ok(body) && parens_ok(body);
    if !well_formed || !isolated(text, start, end) {
        return false;
    }
    if plus {
        return E164_DIGITS.contains(&digits) && body.starts_with(|c: char| c.is_ascii_digit());
    }
    let has_separator = body
        .bytes()
        .any(|b| matches!(b, b' ' | b'.' | b'-' | b'(' | b')'));
    // A national number either dials a trunk prefix (`020 7946 0958`, `(0)30 …`) or has the
    // North American 3-3-4 shape; other digit groups are more often references than phones.
    let national_shape = body.starts_with('0') || body.starts_with("(0") || NANP.is_match(body);
    NATIONAL_DIGITS.contains(&digits)
        && has_separator
        && national_shape
        && !(body.contains('.') && body.contains(' '))
        && !looks_like_ssn(body)
        && !looks_like_ipv4(body)
        && !body
            .split(' ')
            .any(|chunk| looks_like_date(chunk) || looks_like_decimal(chunk))
}

/// No two separators in a row (`555--1234`, `555 .1234`).
fn separators_ok(body: &str) -> bool {
    let is_sep = |b: &u8| matches!(b, b' ' | b'.' | b'-');
    !body
        .as_bytes()
        .windows(2)
        .any(|w| is_sep(&w[0]) && is_sep(&w[1]))
}

/// At most one `(…)`, opened before it is closed, around 1 to 5 digits: `(555)`, `(0)`.
fn parens_ok(body: &str) -> bool {
    match (body.find('('), body.find(')')) {
        (None, None) => true,
        (Some(open), Some(close)) if open < close => {
            let inner = &body[open + 1..close];
            body.matches('(').count() == 1
                && body.matches(')').count() == 1
                && (1..=5).contains(&inner.len())
                && inner.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// `ddd-dd-dddd` is the SSN detector's to judge, not a phone.
fn looks_like_ssn(body: &str) -> bool {
    SSN.find(body)
        .is_some_and(|m| m.start() == 0 && m.end() == body.len())
}

fn looks_like_ipv4(body: &str) -> bool {
    let parts: Vec<&str> = body.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `2024-01-15`, `15.01.2024`: a date's parts with `-` or `.` between them.
fn looks_like_date(chunk: &str) -> bool {
    let parts: Vec<&str> = chunk.split(['-', '.']).collect();
    let digits = |p: &str, len: RangeInclusive<usize>| {
        len.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    };
    match parts.as_slice() {
        [a, b, c] => {
            (digits(a, 4..=4) && digits(b, 1..=2) && digits(c, 1..=2))
                || (digits(a, 1..=2) && digits(b, 1..=2) && digits(c, 4..=4))
        }
        _ => false,
    }
}

/// `150.00`, `12.5`: one dot followed by one or two digits is an amount.
fn looks_like_decimal(chunk: &str) -> bool {
    match chunk.split_once('.') {
        Some((_, fraction)) => {
            !fraction.contains(['.', '-'])
                && (1..=2).contains(&fraction.len())
                && fraction.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::detect::tests::kinds;
    use super::*;

    #[test]
    fn finds_phones_in_common_formats() {
        for phone in [
            "+14155552671",
            "+44 20 7946 0958",
            "+33 1 23 45 67 89",
            "+49 (0)30 1234567",
            "(415) 555-2671",
            "415-555-2671",
            "415.555.2671",
            "020 7946 0958",
            "07700 900123",
            "01.23.45.67.89",
        ] {
            let text = format!("call {phone} now");
            assert_eq!(kinds(&text), [(PiiKind::Phone, phone)], "{phone}");
        }
        assert_eq!(
            kinds("(tel 415-555-2671)."),
            [(PiiKind::Phone, "415-555-2671")]
        );
        assert_eq!(
            kinds("on 2024-01-15 415-555-2671"),
            [(PiiKind::Phone, "415-555-2671")]
        );
    }

    #[test]
    fn rejects_short_or_glued_phone_like_numbers() {
        for text in [
            "+1234567",
            "555-1234",
            "4155552671",
            "x415-555-2671",
            "415-555-2671.5",
            "4155552671-415-555-2671",
            "1234 5678 9012",
            "100 200 300 400",
            "tel: 415-555-2671:9",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", kinds(text));
        }
    }
}
