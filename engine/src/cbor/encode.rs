//! The canonical encoder, and the map-sorting writer shared with [`canonicalize`].
//!
//! [`canonicalize`]: super::canonicalize

use super::MAX_DEPTH;
use super::error::CborError;
use super::float::write_f64;
use super::value::Value;

/// Writes the shortest (canonical) head of an item of major type `major` (0-7) with argument
/// `arg` into `buf`; returns its length (1, 2, 3, 5 or 9). For major type 0 this is the whole
/// encoding of the unsigned integer `arg`.
///
/// ```
/// let mut buf = [0u8; 9];
/// let n = entidb::cbor::encode_head(0, 500, &mut buf);
/// assert_eq!(buf[..n], [0x19, 0x01, 0xf4]);
/// ```
pub fn encode_head(major: u8, arg: u64, buf: &mut [u8; 9]) -> usize {
    let m = major << 5;
    if arg < 24 {
        buf[0] = m | arg as u8;
        1
    } else if arg <= 0xff {
        buf[0] = m | 24;
        buf[1] = arg as u8;
        2
    } else if arg <= 0xffff {
        buf[0] = m | 25;
        buf[1..3].copy_from_slice(&(arg as u16).to_be_bytes());
        3
    } else if arg <= 0xffff_ffff {
        buf[0] = m | 26;
        buf[1..5].copy_from_slice(&(arg as u32).to_be_bytes());
        5
    } else {
        buf[0] = m | 27;
        buf[1..9].copy_from_slice(&arg.to_be_bytes());
        9
    }
}

/// Appends the shortest head for `major` and `arg`.
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let mut buf = [0u8; 9];
    let n = encode_head(major, arg, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Inserts the shortest head for `major` and `arg` at position `at` of `out`.
pub(crate) fn insert_head(out: &mut Vec<u8>, at: usize, major: u8, arg: u64) {
    let mut buf = [0u8; 9];
    let n = encode_head(major, arg, &mut buf);
    out.splice(at..at, buf[..n].iter().copied());
}

/// Appends the canonical encoding of simple value `v` (any of 0..=23 and 32..=255).
pub(crate) fn write_simple(out: &mut Vec<u8>, v: u8) {
    if v < 24 {
        out.push(0xe0 | v);
    } else {
        out.extend_from_slice(&[0xf8, v]);
    }
}

/// One map entry already written to the output: key at `key_start..key_end`, value at
/// `key_end..end`.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key_start: usize,
    key_end: usize,
    end: usize,
    /// Offset reported if this key is a duplicate.
    report_offset: usize,
}

/// A canonical CBOR writer. Map entries are written in the order they come; when a map ends
/// its entries are checked and, only if they are out of order, rewritten in canonical order.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// The output.
    pub(crate) out: Vec<u8>,
    /// A stack of the entries of the maps being written (nested maps push above their parent).
    entries: Vec<Entry>,
    /// Scratch space for rewriting an unsorted map.
    tmp: Vec<u8>,
}

/// The state of a map being written; see [`Writer::map_begin`].
#[derive(Debug)]
pub(crate) struct MapState {
    /// Where the map's encoding starts (the head, or where it will be inserted).
    pub(crate) start: usize,
    /// `None` if the head is already written; `Some(count)` for a map whose head is inserted
    /// at the end.
    deferred_count: Option<u64>,
    /// Index of this map's first entry in [`Writer::entries`].
    base: usize,
}

impl Writer {
    pub(crate) fn new(out: Vec<u8>) -> Writer {
        Writer {
            out,
            entries: Vec::new(),
            tmp: Vec::new(),
        }
    }

    /// Starts a map; with `None` the head is inserted by [`Writer::map_end`] once the number
    /// of entries is known.
    pub(crate) fn map_begin(&mut self, len: Option<u64>) -> MapState {
        let start = self.out.len();
        if let Some(n) = len {
            write_head(&mut self.out, 5, n);
        }
        MapState {
            start,
            deferred_count: len.is_none().then_some(0),
            base: self.entries.len(),
        }
    }

    /// Records an entry whose key was written at `key_start..key_end` and whose value follows
    /// up to the current end of the output.
    pub(crate) fn map_entry(
        &mut self,
        state: &mut MapState,
        key_start: usize,
        key_end: usize,
        report_offset: usize,
    ) {
        self.entries.push(Entry {
            key_start,
            key_end,
            end: self.out.len(),
            report_offset,
        });
        if let Some(count) = state.deferred_count.as_mut() {
            *count += 1;
        }
    }

    /// Finishes a map: sorts its entries if needed and writes a deferred head.
    ///
    /// With `allow_duplicates`, equal keys are kept (in their original relative order);
    /// otherwise the second occurrence of an equal key (the smallest such `report_offset`)
    /// is reported.
    pub(crate) fn map_end(
        &mut self,
        state: MapState,
        allow_duplicates: bool,
    ) -> Result<(), CborError> {
        let Writer { out, entries, tmp } = self;
        let mine = entries.get_mut(state.base..).unwrap_or_default();
        let key = |e: &Entry| out.get(e.key_start..e.key_end).unwrap_or_default();
        let mut sorted = true;
        for w in mine.windows(2) {
            match key(&w[0]).cmp(key(&w[1])) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal if !allow_duplicates => {
                    // Every earlier pair is strictly increasing, so this is the first repeat.
                    return Err(CborError::DuplicateMapKey {
                        offset: w[1].report_offset,
                    });
                }
                _ => {
                    sorted = false;
                    break;
                }
            }
        }
        if !sorted {
            // Stable: equal keys stay in input order.
            mine.sort_by(|a, b| key(a).cmp(key(b)));
            if !allow_duplicates {
                let dup = mine
                    .windows(2)
                    .filter(|w| key(&w[0]) == key(&w[1]))
                    .map(|w| w[1].report_offset)
                    .min();
                if let Some(offset) = dup {
                    return Err(CborError::DuplicateMapKey { offset });
                }
            }
            let body_start = mine.iter().map(|e| e.key_start).min().unwrap_or(out.len());
            tmp.clear();
            tmp.extend_from_slice(out.get(body_start..).unwrap_or_default());
            out.truncate(body_start);
            for e in mine.iter() {
                out.extend_from_slice(
                    tmp.get(e.key_start - body_start..e.end - body_start)
                        .unwrap_or_default(),
                );
            }
        }
        entries.truncate(state.base);
        if let Some(count) = state.deferred_count {
            insert_head(out, state.start, 5, count);
        }
        Ok(())
    }

    /// Appends the canonical encoding of `value`. With `CHECKED`, fails on nesting deeper than
    /// [`MAX_DEPTH`] and on duplicate map keys; without, never fails.
    fn value<const CHECKED: bool>(
        &mut self,
        value: &Value,
        depth: usize,
        origin: usize,
    ) -> Result<(), CborError> {
        if CHECKED
            && depth >= MAX_DEPTH
            && matches!(value, Value::Array(_) | Value::Map(_) | Value::Tag(..))
        {
            return Err(CborError::TooDeep {
                offset: self.out.len() - origin,
                limit: MAX_DEPTH,
            });
        }
        match value {
            Value::Int(i) => {
                let (major, arg) = i.major_and_arg();
                write_head(&mut self.out, major, arg);
            }
            Value::Bytes(b) => {
                write_head(&mut self.out, 2, b.len() as u64);
                self.out.extend_from_slice(b);
            }
            Value::Text(s) => {
                write_head(&mut self.out, 3, s.len() as u64);
                self.out.extend_from_slice(s.as_bytes());
            }
            Value::Array(items) => {
                write_head(&mut self.out, 4, items.len() as u64);
                for item in items {
                    self.value::<CHECKED>(item, depth + 1, origin)?;
                }
            }
            Value::Map(map) => {
                let mut state = self.map_begin(Some(map.len() as u64));
                for (k, v) in map {
                    let key_start = self.out.len();
                    self.value::<CHECKED>(k, depth + 1, origin)?;
                    let key_end = self.out.len();
                    self.value::<CHECKED>(v, depth + 1, origin)?;
                    self.map_entry(&mut state, key_start, key_end, key_start - origin);
                }
                self.map_end(state, !CHECKED)?;
            }
            Value::Tag(tag, inner) => {
                write_head(&mut self.out, 6, *tag);
                self.value::<CHECKED>(inner, depth + 1, origin)?;
            }
            Value::Bool(b) => self.out.push(if *b { 0xf5 } else { 0xf4 }),
            Value::Null => self.out.push(0xf6),
            Value::Undefined => self.out.push(0xf7),
            Value::Simple(s) => write_simple(&mut self.out, s.value()),
            Value::Float(f) => write_f64(&mut self.out, *f),
        }
        Ok(())
    }
}

/// Encodes `value` in canonical form (RFC 8949 §4.2.1).
///
/// Never fails. A map holding equal keys is emitted with every entry (equal keys in their
/// in-memory order), which no decoder in this module accepts; values are not depth-checked
/// and a pathologically deep value can exhaust the stack. Use [`try_encode`] for values built
/// from untrusted input.
#[must_use]
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the canonical encoding of `value` to `out`; see [`encode`].
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    let mut writer = Writer::new(std::mem::take(out));
    let origin = writer.out.len();
    let result = writer.value::<false>(value, 0, origin);
    debug_assert!(result.is_ok(), "unchecked encoding cannot fail");
    *out = writer.out;
}

/// Encodes `value` in canonical form, failing with [`CborError::DuplicateMapKey`] if a map
/// holds two equal keys and with [`CborError::TooDeep`] if arrays, maps and tags nest deeper
/// than 256 levels. The output is then always accepted by [`decode`](super::decode) and
/// [`validate_canonical`](super::validate_canonical). Error offsets refer to the output.
pub fn try_encode(value: &Value) -> Result<Vec<u8>, CborError> {
    let mut writer = Writer::new(Vec::new());
    writer.value::<true>(value, 0, 0)?;
    Ok(writer.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::{Int, Simple};

    fn hex(v: &Value) -> String {
        encode(v).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn integer_heads_are_shortest() {
        let cases: [(i128, &str); 16] = [
            (0, "00"),
            (23, "17"),
            (24, "1818"),
            (255, "18ff"),
            (256, "190100"),
            (65535, "19ffff"),
            (65536, "1a00010000"),
            (4294967295, "1affffffff"),
            (4294967296, "1b0000000100000000"),
            ((1 << 64) - 1, "1bffffffffffffffff"),
            (-1, "20"),
            (-24, "37"),
            (-25, "3818"),
            (-256, "38ff"),
            (-257, "390100"),
            (-(1 << 64), "3bffffffffffffffff"),
        ];
        for (n, expect) in cases {
            let v = Value::Int(Int::try_from(n).expect("in range"));
            assert_eq!(hex(&v), expect, "{n}");
        }
    }

    #[test]
    fn map_keys_sorted_bytewise() {
        // Keys 10, 100, -1, "z", "aa", [100], false encode to 0a, 1864, 20, 617a, 626161,
        // 811864, f4: canonical order is the bytewise order of those encodings.
        let keys = [
            Value::from(false),
            Value::array([100]),
            Value::from("aa"),
            Value::from("z"),
            Value::from(-1),
            Value::from(100),
            Value::from(10),
        ];
        let map = Value::Map(keys.iter().cloned().zip((0..7).map(Value::from)).collect());
        assert_eq!(
            hex(&map),
            "a7\
             0a06\
             186405\
             2004\
             617a03\
             62616102\
             81186401\
             f400"
        );
        // The same map in sorted memory order encodes identically.
        let mut entries = map.as_map().expect("map").to_vec();
        entries.reverse();
        assert_eq!(hex(&Value::Map(entries)), hex(&map));
    }

    #[test]
    fn nested_unsorted_maps() {
        let inner = Value::map([("b", 1), ("a", 2)]);
        let outer = Value::map([(Value::from("y"), inner.clone()), (Value::from("x"), inner)]);
        assert_eq!(hex(&outer), "a26178a26161026162016179a2616102616201");
    }

    #[test]
    fn duplicate_keys() {
        let dup = Value::map([("a", 1), ("b", 2), ("a", 3)]);
        assert_eq!(hex(&dup), "a3616101616103616202");
        assert_eq!(
            try_encode(&dup),
            Err(CborError::DuplicateMapKey { offset: 7 })
        );
        let sorted_dup = Value::map([("a", 1), ("a", 2)]);
        assert_eq!(
            try_encode(&sorted_dup),
            Err(CborError::DuplicateMapKey { offset: 4 })
        );
        // 1.0 as a float and NaNs with different payloads are the same key.
        let nan = Value::Map(vec![
            (Value::Float(f64::NAN), Value::Null),
            (
                Value::Float(f64::from_bits(0x7ff0_0000_0000_0001)),
                Value::Null,
            ),
        ]);
        assert!(matches!(
            try_encode(&nan),
            Err(CborError::DuplicateMapKey { .. })
        ));
    }

    #[test]
    fn depth_limit_on_encode() {
        let mut v = Value::Null;
        for _ in 0..MAX_DEPTH {
            v = Value::Array(vec![v]);
        }
        assert_eq!(try_encode(&v).map(|b| b.len()), Ok(MAX_DEPTH + 1));
        let deeper = Value::Tag(1, Box::new(v));
        assert_eq!(
            try_encode(&deeper),
            Err(CborError::TooDeep {
                offset: MAX_DEPTH,
                limit: MAX_DEPTH
            })
        );
        assert_eq!(encode(&deeper).len(), MAX_DEPTH + 2);
    }

    #[test]
    fn other_items() {
        assert_eq!(hex(&Value::Simple(Simple::new(16).expect("valid"))), "f0");
        assert_eq!(
            hex(&Value::Simple(Simple::new(255).expect("valid"))),
            "f8ff"
        );
        assert_eq!(hex(&Value::Undefined), "f7");
        assert_eq!(
            hex(&Value::Tag(2, Box::new(Value::Bytes(vec![1, 0])))),
            "c2420100"
        );
        assert_eq!(hex(&Value::Bytes(vec![0; 24]))[..4], *"5818");
        assert_eq!(hex(&Value::from("ü")), "62c3bc");
    }
}
