//! How pasta reads the values of its options: numbers the way C's
//! `strtoul` reads them, addresses the way its address parser and
//! `inet_pton` do, MAC addresses as six `xx:` pairs. Shared by
//! [`super::cli`] and [`super::ports`] so both accept the same spellings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A number at the start of `text` as `strtoul(text, &end, base)` reads
/// it: leading white space, an optional sign (a `-` negates modulo 2^64),
/// `0x` for hex and a leading `0` for octal when `base` is 0. `None` when
/// no digit was read or the value overflowed (pasta refuses both).
pub fn take_ulong(text: &str, base: u32) -> Option<(u64, &str)> {
    let trimmed = text.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let hex_prefix = |s: &str| {
        let b = s.as_bytes();
        b.len() > 2 && b[0] == b'0' && (b[1] | 0x20) == b'x' && b[2].is_ascii_hexdigit()
    };
    let (radix, digits) = match base {
        0 if hex_prefix(unsigned) => (16, &unsigned[2..]),
        0 if unsigned.starts_with('0') => (8, unsigned),
        0 => (10, unsigned),
        16 if hex_prefix(unsigned) => (16, &unsigned[2..]),
        other => (other, unsigned),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let value = u64::from_str_radix(&digits[..end], radix).ok()?;
    let value = if negative {
        value.wrapping_neg()
    } else {
        value
    };
    Some((value, &digits[end..]))
}

/// The whole of `text` as a number (see [`take_ulong`]).
pub fn ulong(text: &str, base: u32) -> Option<u64> {
    match take_ulong(text, base)? {
        (value, "") => Some(value),
        _ => None,
    }
}

/// An IPv6 or IPv4 address at the start of `text`, bracketed or not, as
/// pasta's address parser reads one: the longest run of address
/// characters must be the whole address, IPv6 is tried first.
/// IPv4-mapped IPv6 addresses come back as IPv4, as pasta treats them.
pub fn take_addr(text: &str) -> Option<(IpAddr, &str)> {
    if let Some((a, rest)) = run(text, |c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        && let Ok(a) = a.parse::<Ipv6Addr>()
    {
        return Some((IpAddr::V6(a).to_canonical(), rest));
    }
    let (a, rest) = take_ipv4(text)?;
    Some((IpAddr::V4(a), rest))
}

/// An IPv4 address at the start of `text`, bracketed or not.
pub fn take_ipv4(text: &str) -> Option<(Ipv4Addr, &str)> {
    let (a, rest) = run(text, |c| c.is_ascii_digit() || c == '.')?;
    Some((a.parse().ok()?, rest))
}

/// The address text at the start of `text`: inside brackets, or the
/// longest run of `allowed` characters; and what follows.
fn run(text: &str, allowed: fn(char) -> bool) -> Option<(&str, &str)> {
    if let Some(inner) = text.strip_prefix('[') {
        let end = inner.find(']')?;
        return Some((&inner[..end], &inner[end + 1..]));
    }
    let end = text.find(|c: char| !allowed(c)).unwrap_or(text.len());
    Some((&text[..end], &text[end..]))
}

/// `text` as `inet_pton` reads it: IPv6 first, then IPv4, no brackets.
/// (Rust's parsers and glibc's agree, leading zeros in IPv4 refused.)
pub fn inet_pton(text: &str) -> Option<IpAddr> {
    if let Ok(a) = text.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(a));
    }
    text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `aa:bb:cc:dd:ee:ff`, hex digits in either case.
pub fn mac(text: &str) -> Option<[u8; 6]> {
    let bytes = text.as_bytes();
    if bytes.len() != 17 || !text.is_ascii() {
        return None;
    }
    let mut mac = [0; 6];
    for (i, octet) in mac.iter_mut().enumerate() {
        let pair = &text[3 * i..3 * i + 2];
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *octet = u8::from_str_radix(pair, 16).ok()?;
        if i < 5 && bytes[3 * i + 2] != b':' {
            return None;
        }
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_strtoul_does() {
        assert_eq!(ulong("1500", 0), Some(1500));
        assert_eq!(ulong("0x5dc", 0), Some(1500));
        assert_eq!(ulong("030", 0), Some(24));
        assert_eq!(ulong("030", 10), Some(30));
        assert_eq!(ulong(" +24", 10), Some(24));
        assert_eq!(ulong("-1", 10), Some(u64::MAX));
        assert_eq!(ulong("0", 0), Some(0));
        for bad in ["", "x", "24x", "0x", "99999999999999999999", "08"] {
            assert_eq!(ulong(bad, 0), None, "{bad:?}");
        }
        assert_eq!(take_ulong("80-90", 10), Some((80, "-90")));
    }

    #[test]
    fn addresses_read_as_pasta_does() {
        assert_eq!(take_addr("::1/80"), Some(("::1".parse().unwrap(), "/80")));
        assert_eq!(take_addr("[::1]/80"), Some(("::1".parse().unwrap(), "/80")));
        assert_eq!(
            take_addr("127.0.0.1%lo/80"),
            Some(("127.0.0.1".parse().unwrap(), "%lo/80"))
        );
        assert_eq!(
            take_addr("::ffff:10.0.0.1/8"),
            Some(("10.0.0.1".parse().unwrap(), "/8"))
        );
        assert_eq!(take_addr("8080-8080:80-80"), None);
        assert_eq!(take_addr("[::1/80"), None);
        assert_eq!(inet_pton("10.0.2.2"), Some("10.0.2.2".parse().unwrap()));
        assert_eq!(inet_pton("[::1]"), None);
        assert_eq!(inet_pton("010.0.2.2"), None);
    }

    #[test]
    fn macs_are_six_colon_separated_hex_pairs() {
        assert_eq!(
            mac("9a:55:9a:55:9a:Ff"),
            Some([0x9a, 0x55, 0x9a, 0x55, 0x9a, 0xff])
        );
        for bad in [
            "9a:55:9a:55:9a",
            "9a:55:9a:55:9a:5",
            "9a-55-9a-55-9a-55",
            "9a:55:9a:55:9a:5g",
            "+a:55:9a:55:9a:55",
        ] {
            assert_eq!(mac(bad), None, "{bad:?}");
        }
    }
}
