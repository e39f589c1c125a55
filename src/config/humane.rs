//! Strict parsers for the human-friendly durations and sizes of the configuration file.
//!
//! Called by `config::validate` on the raw strings of the file; pure functions, no I/O. A value
//! always carries its unit (`30s`, `64KiB`); a bare number is refused so that nobody has to guess
//! whether `30` meant seconds or milliseconds. The one exception is `0`, which means the same in
//! every unit.

use std::time::Duration;

/// Duration units from largest to smallest, with their length.
const DURATION_UNITS: [(&str, Duration); 5] = [
    ("d", Duration::from_secs(86_400)),
    ("h", Duration::from_secs(3_600)),
    ("m", Duration::from_secs(60)),
    ("s", Duration::from_secs(1)),
    ("ms", Duration::from_millis(1)),
];

/// Size units and their number of bytes (binary and decimal multiples are both common).
const SIZE_UNITS: [(&str, u64); 7] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

/// What a duration looks like, appended to every duration error.
const DURATION_HINT: &str =
    "expected a duration such as 500ms, 30s or 1h30m (units: ms, s, m, h, d)";

/// What a size looks like, appended to every size error.
const SIZE_HINT: &str = "expected a size such as 64KiB (units: B, KiB, MiB, GiB, KB, MB, GB)";

/// Parses a duration: `0`, or one or more `<digits><unit>` parts with units `d`, `h`, `m`, `s`,
/// `ms`, largest first and each at most once (`1h30m`, `500ms`, `2d`).
///
/// # Errors
/// Returns the reason, for the validator to attach a file position to.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` has no unit: write {text}s or {text}ms"));
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    // Index into DURATION_UNITS of the last unit used: the next must be strictly smaller.
    let mut previous: Option<usize> = None;
    while !rest.is_empty() {
        let (number, after) = split_number(rest).ok_or_else(|| DURATION_HINT.to_string())?;
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DURATION_HINT.to_string());
        }
        let Some(index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(format!("unknown unit `{unit}`; {DURATION_HINT}"));
        };
        if previous.is_some_and(|p| index <= p) {
            return Err(format!(
                "units must go from largest to smallest, each once, as in 1h30m; {DURATION_HINT}"
            ));
        }
        previous = Some(index);
        let part = u32::try_from(number)
            .ok()
            .and_then(|n| DURATION_UNITS[index].1.checked_mul(n))
            .ok_or_else(|| format!("`{text}` is too long"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("`{text}` is too long"))?;
        rest = after;
    }
    if previous.is_none() {
        return Err(DURATION_HINT.to_string());
    }
    Ok(total)
}

/// Parses a size in bytes: `0`, or `<digits><unit>` with a unit among `B`, `KiB`, `MiB`, `GiB`
/// (powers of 1024) and `KB`, `MB`, `GB` (powers of 1000). Units are case-sensitive.
///
/// # Errors
/// Returns the reason, for the validator to attach a file position to.
pub fn parse_size(text: &str) -> Result<u64, String> {
    if text == "0" {
        return Ok(0);
    }
    let (number, unit) = split_number(text).ok_or_else(|| SIZE_HINT.to_string())?;
    if unit.is_empty() {
        return Err(format!(
            "`{text}` has no unit: write {text}B, or use KiB or MiB"
        ));
    }
    let Some((_, scale)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!("unknown unit `{unit}`; {SIZE_HINT}"));
    };
    number
        .checked_mul(*scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Splits leading ASCII digits off `text` as a number; `None` when there are none or they
/// overflow. Signs, spaces and decimal points are deliberately not accepted.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let (number, rest) = text.split_at(digits);
    Some((number.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_except_zero() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1m1s1ms"), Ok(Duration::from_millis(61_001)));
        let bare = parse_duration("30").unwrap_err();
        assert!(bare.contains("no unit"), "{bare}");
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for bad in [
            "",
            " 30s",
            "30s ",
            "30 s",
            "-1s",
            "+1s",
            "1.5s",
            "s",
            "30S",
            "30sec",
            "1m1h",
            "1s1s",
            "1h 30m",
            "00x",
            "99999999999999999999s",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            parse_duration("1m1h")
                .unwrap_err()
                .contains("largest to smallest")
        );
        assert!(
            parse_duration("5sec")
                .unwrap_err()
                .contains("unknown unit `sec`")
        );
    }

    #[test]
    fn sizes_need_a_unit_except_zero() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("0B"), Ok(0));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert!(parse_size("30").unwrap_err().contains("no unit"));
    }

    #[test]
    fn malformed_sizes_are_rejected() {
        for bad in [
            "",
            "KiB",
            "64 KiB",
            "64kib",
            "64K",
            "64k",
            "1.5MiB",
            "-1B",
            "64KiBs",
            "18446744073709551615GiB",
            "99999999999999999999B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            parse_size("64kb")
                .unwrap_err()
                .contains("unknown unit `kb`")
        );
    }
}
