//! Parsers for the human-friendly durations and sizes used in flags and policy files.

use std::time::Duration;

/// Parses a duration such as `30s`, `5m`, `1h30m`, `250ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        if seconds == 0 {
            return Err("duration must be greater than zero".into());
        }
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number in '{text}', such as 30s or 5m, or \"unlimited\""));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| format!("number too large in '{text}'"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "" => return Err(format!("missing unit after {value} in '{text}' (use ms, s, m or h)")),
            unit if unit.starts_with('.') => {
                return Err(format!("fractions are not supported in '{text}'; use a smaller unit, such as 1500ms for 1.5s"));
            }
            other => return Err(format!("unknown unit '{other}' in '{text}' (use ms, s, m or h)")),
        };
        total = total.saturating_add(part);
    }
    if total.is_zero() {
        return Err("duration must be greater than zero".into());
    }
    Ok(total)
}

/// Parses a size in bytes such as `512M`, `2G`, `64k` or a bare number of bytes. Suffixes are
/// binary (K = 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if split == 0 {
        return Err(format!("expected a number in '{text}'"));
    }
    let value: u64 = text[..split].parse().map_err(|_| format!("number too large in '{text}'"))?;
    let shift = match text[split..].trim_end_matches(['B', 'b', 'i']) {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        other if other.starts_with('.') => {
            return Err(format!("fractions are not supported in '{text}'; use a smaller unit, such as 1536M for 1.5G"));
        }
        other => return Err(format!("unknown size suffix '{other}' in '{text}' (use K, M, G or T)")),
    };
    let bytes = value.checked_mul(1 << shift).ok_or_else(|| format!("size too large: '{text}'"))?;
    if bytes == 0 {
        return Err("size must be greater than zero".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_combinations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn durations_reject_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 m").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration(" 5s").is_err());
        assert!(parse_duration("5s ").is_err());
        assert!(parse_duration("1.5s").unwrap_err().contains("1500ms"));
    }

    #[test]
    fn sizes_use_binary_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("0").is_err());
    }
}
