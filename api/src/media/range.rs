//! The `Range` header of a download: one range of bytes (`bytes=a-b`, `bytes=a-`, `bytes=-n`) is
//! served on its own; anything else the header may say (several ranges, other units, a header
//! that does not parse) is ignored and the whole file served, as HTTP allows.

use std::ops::Range;

use axum::http::HeaderValue;

/// What a download asks for, within a file of a known size.
#[derive(Debug, PartialEq, Eq)]
pub enum Requested {
    Whole,
    /// A part of the file: `start..end`, end exclusive, never empty.
    Part(Range<u64>),
    /// A range that lies wholly past the end of the file.
    Unsatisfiable,
}

pub fn requested(header: Option<&HeaderValue>, size: u64) -> Requested {
    let Some(spec) = header.and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("bytes="))
    else {
        return Requested::Whole;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Requested::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
    };
    match (first, last) {
        // The last n bytes.
        ("", suffix) => match number(suffix) {
            Some(0) => Requested::Unsatisfiable,
            Some(_) if size == 0 => Requested::Unsatisfiable,
            Some(n) => Requested::Part(size.saturating_sub(n)..size),
            None => Requested::Whole,
        },
        (start, "") => match number(start) {
            Some(start) if start >= size => Requested::Unsatisfiable,
            Some(start) => Requested::Part(start..size),
            None => Requested::Whole,
        },
        (start, end) => match (number(start), number(end)) {
            (Some(start), Some(end)) if start > end => Requested::Whole,
            (Some(start), Some(_)) if start >= size => Requested::Unsatisfiable,
            (Some(start), Some(end)) => Requested::Part(start..end.min(size - 1) + 1),
            _ => Requested::Whole,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(header: &str, size: u64) -> Requested {
        requested(Some(&HeaderValue::from_str(header).unwrap()), size)
    }

    #[test]
    fn single_ranges_are_served_and_the_rest_ignored() {
        assert_eq!(requested(None, 10), Requested::Whole);
        assert_eq!(of("bytes=0-0", 10), Requested::Part(0..1));
        assert_eq!(of("bytes=2-5", 10), Requested::Part(2..6));
        assert_eq!(of("bytes=8-100", 10), Requested::Part(8..10), "an end past the file is cut");
        assert_eq!(of("bytes=7-", 10), Requested::Part(7..10));
        assert_eq!(of("bytes=-3", 10), Requested::Part(7..10));
        assert_eq!(of("bytes=-30", 10), Requested::Part(0..10));
        assert_eq!(of("bytes=10-", 10), Requested::Unsatisfiable);
        assert_eq!(of("bytes=10-20", 10), Requested::Unsatisfiable);
        assert_eq!(of("bytes=-0", 10), Requested::Unsatisfiable);
        assert_eq!(of("bytes=0-", 0), Requested::Unsatisfiable);
        assert_eq!(of("bytes=-5", 0), Requested::Unsatisfiable);
        for ignored in
            ["bytes=5-2", "bytes=0-1,4-5", "items=0-1", "bytes=x-1", "bytes=-", "bytes=1"]
        {
            assert_eq!(of(ignored, 10), Requested::Whole, "{ignored}");
        }
    }
}
