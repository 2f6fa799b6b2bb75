//! `Display` for [`Value`] in CBOR diagnostic notation (RFC 8949 §8).

use std::fmt::{self, Display, Formatter, Write as _};

use super::value::Value;

fn write_text(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

fn write_float(f: &mut Formatter<'_>, x: f64) -> fmt::Result {
    if x.is_nan() {
        f.write_str("NaN")
    } else if x.is_infinite() {
        f.write_str(if x > 0.0 { "Infinity" } else { "-Infinity" })
    } else if x == x.trunc() && x.abs() < 1e16 {
        write!(f, "{x:.1}")
    } else {
        write!(f, "{x:?}")
    }
}

/// Writes the value in diagnostic notation, e.g. `{"a": [1, h'ff', 1(1.5)], 2: simple(16)}`.
/// Map entries are shown in memory order.
impl Display for Value {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => {
                f.write_str("h'")?;
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                f.write_char('\'')
            }
            Value::Text(s) => write_text(f, s),
            Value::Array(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    item.fmt(f)?;
                }
                f.write_char(']')
            }
            Value::Map(entries) => {
                f.write_char('{')?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_char('}')
            }
            Value::Tag(tag, inner) => write!(f, "{tag}({inner})"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => f.write_str("null"),
            Value::Undefined => f.write_str("undefined"),
            Value::Simple(s) => write!(f, "simple({})", s.value()),
            Value::Float(x) => write_float(f, *x),
        }
    }
}
