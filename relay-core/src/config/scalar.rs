//! TOML's scalar values (booleans, integers, floats, one-line strings) read without the TOML
//! parser, for the override variables of a build without it (the Worker's): the same values
//! `toml` reads from `v = <text>`, or `None` where the text is not such a value.

use toml::Value;

/// The TOML scalar `text` spells, space and tabs around it ignored.
pub(super) fn parse(text: &str) -> Option<Value> {
    let text = text.trim_matches([' ', '\t']);
    match text {
        "true" => return Some(Value::Boolean(true)),
        "false" => return Some(Value::Boolean(false)),
        _ => {}
    }
    if let Some(body) = text.strip_prefix('"') {
        return basic_string(body.strip_suffix('"')?).map(Value::String);
    }
    if let Some(body) = text.strip_prefix('\'') {
        let body = body.strip_suffix('\'')?;
        let plain = !body.contains('\'') && !body.chars().any(is_forbidden_control);
        return plain.then(|| Value::String(body.to_owned()));
    }
    integer(text)
        .map(Value::Integer)
        .or_else(|| float(text).map(Value::Float))
}

/// Control characters a one-line TOML string may not hold (tab is allowed).
fn is_forbidden_control(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{7f}'
}

/// The inside of a `"..."` string, its escapes decoded.
fn basic_string(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => out.push(match chars.next()? {
                'b' => '\u{8}',
                't' => '\t',
                'n' => '\n',
                'f' => '\u{c}',
                'r' => '\r',
                'e' => '\u{1b}',
                '"' => '"',
                '\\' => '\\',
                'x' => hex_char(&mut chars, 2)?,
                'u' => hex_char(&mut chars, 4)?,
                'U' => hex_char(&mut chars, 8)?,
                _ => return None,
            }),
            c if is_forbidden_control(c) => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// The character whose code is the next `digits` hex digits.
fn hex_char(chars: &mut std::str::Chars<'_>, digits: usize) -> Option<char> {
    let hex: String = chars.by_ref().take(digits).collect();
    if hex.len() != digits || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)
}

/// Digits in `radix`, single underscores only between two digits; the digits without them.
fn digits(text: &str, radix: u32) -> Option<String> {
    let ok = !text.is_empty()
        && !text.starts_with('_')
        && !text.ends_with('_')
        && !text.contains("__")
        && text.chars().all(|c| c == '_' || c.is_digit(radix));
    ok.then(|| text.replace('_', ""))
}

fn integer(text: &str) -> Option<i64> {
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return i64::from_str_radix(&digits(rest, radix)?, radix).ok();
        }
    }
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let plain = digits(unsigned, 10)?;
    if plain.len() > 1 && plain.starts_with('0') {
        return None;
    }
    let sign = if text.starts_with('-') { "-" } else { "" };
    format!("{sign}{plain}").parse().ok()
}

fn float(text: &str) -> Option<f64> {
    let (sign, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    match unsigned {
        "inf" => return Some(sign * f64::INFINITY),
        "nan" => return Some(f64::NAN.copysign(sign)),
        _ => {}
    }
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    if fraction.is_none() && exponent.is_none() {
        return None;
    }
    let whole = digits(whole, 10)?;
    if whole.len() > 1 && whole.starts_with('0') {
        return None;
    }
    let mut plain = whole;
    if let Some(fraction) = fraction {
        plain = format!("{plain}.{}", digits(fraction, 10)?);
    }
    if let Some(exponent) = exponent {
        let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        let sign = if exponent.starts_with('-') { "-" } else { "" };
        plain = format!("{plain}e{sign}{}", digits(unsigned, 10)?);
    }
    Some(sign * plain.parse::<f64>().ok()?)
}

#[cfg(all(test, feature = "parse-toml"))]
mod tests {
    use super::*;

    /// What the TOML parser makes of `text` as an override's value.
    fn toml_reads(text: &str) -> Option<Value> {
        super::super::override_value(text)
    }

    /// Every value is read alike with and without the TOML parser: the Worker's overrides are
    /// the native relay's. NaN is compared by its bits' class (NaN != NaN).
    #[test]
    fn scalars_read_as_toml_reads_them() {
        let values = [
            // Booleans, and words that are not.
            "true",
            "false",
            "True",
            "yes",
            "echo",
            "broadcast",
            // Integers.
            "0",
            "1",
            "4096",
            "+17",
            "-1",
            "1_000_000",
            "1__0",
            "_1",
            "1_",
            "007",
            "-0",
            "+0",
            "0x10",
            "0xdead_BEEF",
            "0o17",
            "0b101",
            "0x",
            "0x_1",
            "-0x10",
            "0b2",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "99999999999999999999",
            // Floats.
            "1.5",
            "-0.25",
            "+3.0",
            "1e3",
            "1E-3",
            "6.02e+23",
            "1_0.5_0",
            "1.",
            ".5",
            "1.e3",
            "01.5",
            "1e",
            "1e_3",
            "inf",
            "+inf",
            "-inf",
            "nan",
            "+nan",
            "-nan",
            "Infinity",
            "NaN",
            // Strings.
            "\"echo\"",
            "\"\"",
            "\"a b\"",
            "\"tab\\there\"",
            "\"q\\\"q\"",
            "\"\\u00e9\"",
            "\"\\U0001F600\"",
            "\"\\x41\"",
            "\"\\e\"",
            "\"bad \\q\"",
            "\"open",
            "\"a\"b\"",
            "'literal'",
            "'C:\\path'",
            "''",
            "'it's'",
            // Space around a value.
            " 8192",
            "8192 ",
            "\t true\t",
            " \"x\" ",
            // Text.
            "127.0.0.1:9",
            "localhost",
            "",
            " ",
            "a\tb",
            "1.2.3",
        ];
        for text in values {
            let (ours, toml) = (parse(text), toml_reads(text));
            let same = match (&ours, &toml) {
                (Some(Value::Float(a)), Some(Value::Float(b))) if a.is_nan() => {
                    b.is_nan() && a.is_sign_negative() == b.is_sign_negative()
                }
                _ => ours == toml,
            };
            assert!(
                same,
                "{text:?}: read as {ours:?} without the parser, {toml:?} by toml"
            );
        }
    }
}
