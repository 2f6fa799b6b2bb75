//! The decoder: one generic walker over CBOR bytes that checks well-formedness (and, in strict
//! mode, canonical form) and feeds a [`Sink`] that builds a [`Value`], writes canonical bytes,
//! or does nothing.

use super::MAX_DEPTH;
use super::canonical::canonicalize_cow;
use super::error::CborError;
use super::float::{CANONICAL_NAN_F16, f16_is_nan, f16_to_f64, f64_to_f16_exact, fits_f32};
use super::value::{Int, Simple, Value};

/// The initial byte and argument of a data item.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    /// Major type, 0..=7.
    pub(crate) major: u8,
    /// Additional information, 0..=27 or 31 (28..=30 are rejected).
    pub(crate) ai: u8,
    /// The argument (0 for additional information 31).
    pub(crate) arg: u64,
}

/// Reads the head at `*pos` and advances `*pos` past it.
#[inline]
pub(crate) fn read_head(bytes: &[u8], pos: &mut usize) -> Result<Head, CborError> {
    let start = *pos;
    let Some(&initial) = bytes.get(start) else {
        return Err(CborError::UnexpectedEnd { offset: start });
    };
    let major = initial >> 5;
    let ai = initial & 0x1f;
    let rest = bytes.get(start + 1..).unwrap_or_default();
    let end = CborError::UnexpectedEnd { offset: start };
    let (arg, extra) = match ai {
        0..=23 => (u64::from(ai), 0),
        24 => (u64::from(*rest.first().ok_or(end)?), 1),
        25 => (
            u64::from(u16::from_be_bytes(*rest.first_chunk().ok_or(end)?)),
            2,
        ),
        26 => (
            u64::from(u32::from_be_bytes(*rest.first_chunk().ok_or(end)?)),
            4,
        ),
        27 => (u64::from_be_bytes(*rest.first_chunk().ok_or(end)?), 8),
        31 => (0, 0),
        _ => {
            return Err(CborError::ReservedAdditionalInfo {
                offset: start,
                byte: initial,
            });
        }
    };
    *pos = start + 1 + extra;
    Ok(Head { major, ai, arg })
}

/// Whether the head uses the shortest form for its argument.
#[inline]
fn is_shortest(head: Head) -> bool {
    match head.ai {
        24 => head.arg >= 24,
        25 => head.arg > 0xff,
        26 => head.arg > 0xffff,
        27 => head.arg > 0xffff_ffff,
        _ => true,
    }
}

/// Checks that the text string data at `offset` is valid UTF-8 (ASCII, the common case,
/// without calling the general validator: most text in documents is short field names and
/// values, where the call cost more than the check).
#[inline]
fn check_utf8(data: &[u8], offset: usize) -> Result<(), CborError> {
    if data.is_ascii() {
        return Ok(());
    }
    std::str::from_utf8(data)
        .map(drop)
        .map_err(|e| CborError::InvalidUtf8 {
            offset: offset + e.valid_up_to(),
        })
}

/// Bytewise lexicographic order of two encoded map keys. Keys are mostly a few bytes long
/// and usually differ in their first (head) byte: a loop beats a call to `memcmp` there.
#[inline]
pub(super) fn cmp_short(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    if a.len() > 16 && b.len() > 16 {
        return a.cmp(b);
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

fn not_canonical(offset: usize, reason: &'static str) -> CborError {
    CborError::NotCanonical { offset, reason }
}

/// What the walker produces as it goes. Each method receives one well-formed (and, for
/// `STRICT` sinks, canonical) piece, in input order.
pub(crate) trait Sink {
    /// What a data item becomes.
    type Out;
    /// Accumulator of an indefinite-length string.
    type Str;
    /// Accumulator of an array.
    type Seq;
    /// Accumulator of a map.
    type Map;
    /// What a tag needs to remember until its item is done.
    type Tag;
    /// Whether the walker rejects everything that is not in canonical form.
    const STRICT: bool;

    fn int(&mut self, major: u8, arg: u64) -> Self::Out;
    fn float(&mut self, x: f64) -> Self::Out;
    /// A valid simple value: 0..=23 or 32..=255.
    fn simple(&mut self, v: u8) -> Self::Out;
    fn bytes(&mut self, data: &[u8]) -> Self::Out;
    /// A definite-length text string; `data` is valid UTF-8 (checked by the walker).
    fn text(&mut self, data: &[u8]) -> Self::Out;
    fn str_begin(&mut self, text: bool) -> Self::Str;
    /// A chunk; for text it is valid UTF-8 on its own.
    fn str_chunk(&mut self, acc: &mut Self::Str, data: &[u8]);
    fn str_end(&mut self, acc: Self::Str, offset: usize) -> Result<Self::Out, CborError>;
    fn seq_begin(&mut self, len: Option<u64>) -> Self::Seq;
    fn seq_item(&mut self, acc: &mut Self::Seq, item: Self::Out);
    fn seq_end(&mut self, acc: Self::Seq) -> Self::Out;
    fn map_begin(&mut self, len: Option<u64>) -> Self::Map;
    fn map_entry(&mut self, acc: &mut Self::Map, key: Self::Out, value: Self::Out, offset: usize);
    fn map_end(&mut self, acc: Self::Map) -> Result<Self::Out, CborError>;
    fn tag_begin(&mut self, tag: u64) -> Self::Tag;
    fn tag_end(&mut self, acc: Self::Tag, inner: Self::Out) -> Self::Out;
}

/// Walks CBOR bytes, checking them, and feeds a [`Sink`].
#[derive(Debug)]
pub(crate) struct Walker<'a, S> {
    bytes: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) sink: S,
}

impl<'a, S: Sink> Walker<'a, S> {
    pub(crate) fn new(bytes: &'a [u8], sink: S) -> Self {
        Walker {
            bytes,
            pos: 0,
            sink,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// If the next byte is a break, consumes it and returns true.
    fn at_break(&mut self) -> Result<bool, CborError> {
        match self.bytes.get(self.pos) {
            None => Err(CborError::UnexpectedEnd { offset: self.pos }),
            Some(0xff) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    /// Takes `len` bytes of string data declared by the head at `head_offset`.
    fn take(&mut self, len: u64, head_offset: usize) -> Result<&'a [u8], CborError> {
        let too_large = CborError::LengthTooLarge {
            offset: head_offset,
            len,
        };
        let n = usize::try_from(len).map_err(|_| too_large.clone())?;
        if n > self.remaining() {
            return Err(too_large);
        }
        let data = self.bytes.get(self.pos..self.pos + n).ok_or(too_large)?;
        self.pos += n;
        Ok(data)
    }

    fn check_depth(depth: usize, offset: usize) -> Result<(), CborError> {
        if depth >= MAX_DEPTH {
            Err(CborError::TooDeep {
                offset,
                limit: MAX_DEPTH,
            })
        } else {
            Ok(())
        }
    }

    /// Walks one data item that is nested inside `depth` arrays, maps and tags.
    pub(crate) fn item(&mut self, depth: usize) -> Result<S::Out, CborError> {
        let start = self.pos;
        let head = read_head(self.bytes, &mut self.pos)?;
        if S::STRICT && head.major != 7 && !is_shortest(head) {
            return Err(not_canonical(
                start,
                "integer, length or tag not in the shortest form",
            ));
        }
        match head.major {
            0 | 1 | 6 if head.ai == 31 => Err(CborError::InvalidIndefiniteLength {
                offset: start,
                major: head.major,
            }),
            0 | 1 => Ok(self.sink.int(head.major, head.arg)),
            2 | 3 => self.string(head, start),
            4 => self.array(head, start, depth),
            5 => self.map(head, start, depth),
            6 => {
                Self::check_depth(depth, start)?;
                let acc = self.sink.tag_begin(head.arg);
                let inner = self.item(depth + 1)?;
                Ok(self.sink.tag_end(acc, inner))
            }
            _ => self.simple_or_float(head, start),
        }
    }

    fn string(&mut self, head: Head, start: usize) -> Result<S::Out, CborError> {
        let text = head.major == 3;
        if head.ai != 31 {
            let data_offset = self.pos;
            let data = self.take(head.arg, start)?;
            return if text {
                check_utf8(data, data_offset)?;
                Ok(self.sink.text(data))
            } else {
                Ok(self.sink.bytes(data))
            };
        }
        if S::STRICT {
            return Err(not_canonical(start, "indefinite-length string"));
        }
        let mut acc = self.sink.str_begin(text);
        while !self.at_break()? {
            let chunk_start = self.pos;
            let chunk = read_head(self.bytes, &mut self.pos)?;
            if chunk.major != head.major || chunk.ai == 31 {
                return Err(CborError::InvalidIndefiniteChunk {
                    offset: chunk_start,
                });
            }
            let data_offset = self.pos;
            let data = self.take(chunk.arg, chunk_start)?;
            if text {
                check_utf8(data, data_offset)?;
            }
            self.sink.str_chunk(&mut acc, data);
        }
        self.sink.str_end(acc, start)
    }

    fn array(&mut self, head: Head, start: usize, depth: usize) -> Result<S::Out, CborError> {
        Self::check_depth(depth, start)?;
        if head.ai == 31 {
            if S::STRICT {
                return Err(not_canonical(start, "indefinite-length array"));
            }
            let mut acc = self.sink.seq_begin(None);
            while !self.at_break()? {
                let item = self.item(depth + 1)?;
                self.sink.seq_item(&mut acc, item);
            }
            return Ok(self.sink.seq_end(acc));
        }
        // Every element takes at least one byte: fail before trusting the count.
        if head.arg > self.remaining() as u64 {
            return Err(CborError::LengthTooLarge {
                offset: start,
                len: head.arg,
            });
        }
        let mut acc = self.sink.seq_begin(Some(head.arg));
        for _ in 0..head.arg {
            let item = self.item(depth + 1)?;
            self.sink.seq_item(&mut acc, item);
        }
        Ok(self.sink.seq_end(acc))
    }

    fn map(&mut self, head: Head, start: usize, depth: usize) -> Result<S::Out, CborError> {
        Self::check_depth(depth, start)?;
        let indefinite = head.ai == 31;
        if indefinite && S::STRICT {
            return Err(not_canonical(start, "indefinite-length map"));
        }
        // Every entry takes at least two bytes: fail before trusting the count.
        if !indefinite && head.arg.saturating_mul(2) > self.remaining() as u64 {
            return Err(CborError::LengthTooLarge {
                offset: start,
                len: head.arg,
            });
        }
        let mut acc = self.sink.map_begin((!indefinite).then_some(head.arg));
        let mut prev_key: Option<(usize, usize)> = None;
        let mut count = 0u64;
        loop {
            if indefinite {
                if self.at_break()? {
                    break;
                }
            } else if count == head.arg {
                break;
            }
            let key_offset = self.pos;
            let key = self.item(depth + 1)?;
            if S::STRICT {
                let bytes = self.bytes;
                let raw = |r: (usize, usize)| bytes.get(r.0..r.1).unwrap_or_default();
                let cur = (key_offset, self.pos);
                if let Some(prev) = prev_key {
                    match cmp_short(raw(prev), raw(cur)) {
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => {
                            return Err(CborError::DuplicateMapKey { offset: key_offset });
                        }
                        std::cmp::Ordering::Greater => {
                            return Err(not_canonical(
                                key_offset,
                                "map keys not in bytewise lexicographic order",
                            ));
                        }
                    }
                }
                prev_key = Some(cur);
            }
            let value = self.item(depth + 1)?;
            self.sink.map_entry(&mut acc, key, value, key_offset);
            count += 1;
        }
        self.sink.map_end(acc)
    }

    fn simple_or_float(&mut self, head: Head, start: usize) -> Result<S::Out, CborError> {
        const NAN: &str = "NaN not encoded as f97e00";
        const LONG_FLOAT: &str = "float not in the shortest form that represents it exactly";
        match head.ai {
            0..=23 => Ok(self.sink.simple(head.ai)),
            24 => {
                let v = head.arg as u8;
                if v < 32 {
                    return Err(CborError::InvalidSimple {
                        offset: start,
                        value: v,
                    });
                }
                Ok(self.sink.simple(v))
            }
            25 => {
                let half = head.arg as u16;
                if S::STRICT && f16_is_nan(half) && half != CANONICAL_NAN_F16 {
                    return Err(not_canonical(start, NAN));
                }
                Ok(self.sink.float(f16_to_f64(half)))
            }
            26 => {
                let x = f64::from(f32::from_bits(head.arg as u32));
                if S::STRICT {
                    if x.is_nan() {
                        return Err(not_canonical(start, NAN));
                    }
                    if f64_to_f16_exact(x).is_some() {
                        return Err(not_canonical(start, LONG_FLOAT));
                    }
                }
                Ok(self.sink.float(x))
            }
            27 => {
                let x = f64::from_bits(head.arg);
                if S::STRICT {
                    if x.is_nan() {
                        return Err(not_canonical(start, NAN));
                    }
                    if fits_f32(x) {
                        return Err(not_canonical(start, LONG_FLOAT));
                    }
                }
                Ok(self.sink.float(x))
            }
            31 => Err(CborError::UnexpectedBreak { offset: start }),
            _ => Err(CborError::ReservedAdditionalInfo {
                offset: start,
                byte: 0xe0 | head.ai,
            }),
        }
    }
}

/// Walks exactly one data item covering all of `bytes`.
pub(crate) fn walk_exact<S: Sink>(bytes: &[u8], sink: S) -> Result<(S::Out, S), CborError> {
    let mut walker = Walker::new(bytes, sink);
    let out = walker.item(0)?;
    if walker.pos != bytes.len() {
        return Err(CborError::TrailingBytes { offset: walker.pos });
    }
    Ok((out, walker.sink))
}

/// A sink that builds nothing: the walk only checks. With `STRICT`, it checks canonical form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckSink<const STRICT: bool>;

impl<const STRICT: bool> Sink for CheckSink<STRICT> {
    type Out = ();
    type Str = ();
    type Seq = ();
    type Map = ();
    type Tag = ();
    const STRICT: bool = STRICT;

    fn int(&mut self, _: u8, _: u64) {}
    fn float(&mut self, _: f64) {}
    fn simple(&mut self, _: u8) {}
    fn bytes(&mut self, _: &[u8]) {}
    fn text(&mut self, _: &[u8]) {}
    fn str_begin(&mut self, _: bool) {}
    fn str_chunk(&mut self, _: &mut (), _: &[u8]) {}
    fn str_end(&mut self, _: (), _: usize) -> Result<(), CborError> {
        Ok(())
    }
    fn seq_begin(&mut self, _: Option<u64>) {}
    fn seq_item(&mut self, _: &mut (), _: ()) {}
    fn seq_end(&mut self, _: ()) {}
    fn map_begin(&mut self, _: Option<u64>) {}
    fn map_entry(&mut self, _: &mut (), _: (), _: (), _: usize) {}
    fn map_end(&mut self, _: ()) -> Result<(), CborError> {
        Ok(())
    }
    fn tag_begin(&mut self, _: u64) {}
    fn tag_end(&mut self, _: (), _: ()) {}
}

/// Preallocate at most this many elements for a declared length (the rest grows as the data
/// actually arrives).
const MAX_PREALLOC: u64 = 1024;

fn capacity(len: Option<u64>) -> usize {
    len.map_or(0, |n| n.min(MAX_PREALLOC) as usize)
}

/// A sink that builds a [`Value`]. It does not check map keys for duplicates: it is only run
/// on input that [`canonicalize_cow`] has validated.
#[derive(Debug, Clone, Copy)]
struct ValueSink;

impl Sink for ValueSink {
    type Out = Value;
    type Str = (Vec<u8>, bool);
    type Seq = Vec<Value>;
    type Map = Vec<(Value, Value)>;
    type Tag = u64;
    const STRICT: bool = false;

    fn int(&mut self, major: u8, arg: u64) -> Value {
        Value::Int(if major == 0 {
            Int::from(arg)
        } else {
            Int::from_negative_arg(arg)
        })
    }
    fn float(&mut self, x: f64) -> Value {
        Value::Float(if x.is_nan() { f64::NAN } else { x })
    }
    fn simple(&mut self, v: u8) -> Value {
        match v {
            20 => Value::Bool(false),
            21 => Value::Bool(true),
            22 => Value::Null,
            23 => Value::Undefined,
            _ => Simple::new(v).map_or(Value::Undefined, Value::Simple),
        }
    }
    fn bytes(&mut self, data: &[u8]) -> Value {
        Value::Bytes(data.to_vec())
    }
    fn text(&mut self, data: &[u8]) -> Value {
        // Valid UTF-8 (the walker checked it), so this copies without replacing anything.
        Value::Text(String::from_utf8_lossy(data).into_owned())
    }
    fn str_begin(&mut self, text: bool) -> (Vec<u8>, bool) {
        (Vec::new(), text)
    }
    fn str_chunk(&mut self, acc: &mut (Vec<u8>, bool), data: &[u8]) {
        acc.0.extend_from_slice(data);
    }
    fn str_end(&mut self, acc: (Vec<u8>, bool), offset: usize) -> Result<Value, CborError> {
        let (data, text) = acc;
        if text {
            String::from_utf8(data)
                .map(Value::Text)
                .map_err(|_| CborError::InvalidUtf8 { offset })
        } else {
            Ok(Value::Bytes(data))
        }
    }
    fn seq_begin(&mut self, len: Option<u64>) -> Vec<Value> {
        Vec::with_capacity(capacity(len))
    }
    fn seq_item(&mut self, acc: &mut Vec<Value>, item: Value) {
        acc.push(item);
    }
    fn seq_end(&mut self, acc: Vec<Value>) -> Value {
        Value::Array(acc)
    }
    fn map_begin(&mut self, len: Option<u64>) -> Vec<(Value, Value)> {
        Vec::with_capacity(capacity(len))
    }
    fn map_entry(&mut self, acc: &mut Vec<(Value, Value)>, key: Value, value: Value, _: usize) {
        acc.push((key, value));
    }
    fn map_end(&mut self, acc: Vec<(Value, Value)>) -> Result<Value, CborError> {
        Ok(Value::Map(acc))
    }
    fn tag_begin(&mut self, tag: u64) -> u64 {
        tag
    }
    fn tag_end(&mut self, tag: u64, inner: Value) -> Value {
        Value::Tag(tag, Box::new(inner))
    }
}

/// Decodes exactly one CBOR data item from `bytes`.
///
/// Accepts any well-formed CBOR (non-shortest heads, indefinite lengths, any float width) as
/// long as it is also valid in the sense of this module: text is UTF-8, map keys are unique
/// (compared by canonical encoding), nesting is at most 256 levels, and no bytes follow the
/// item. Maps in the result are in canonical key order and every NaN is `f64::NAN`.
/// `decode(x)` succeeds exactly when [`canonicalize`](super::canonicalize)`(x)` does.
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    let canonical = canonicalize_cow(bytes)?;
    walk_exact(&canonical, ValueSink).map(|(value, _)| value)
}

/// The length of the first data item in `bytes`, which may be followed by anything.
///
/// The item is checked like [`decode`] does, except for duplicate map keys; nothing is
/// allocated. Useful to step through a sequence of concatenated items.
pub fn item_len(bytes: &[u8]) -> Result<usize, CborError> {
    let mut walker = Walker::new(bytes, CheckSink::<false>);
    walker.item(0)?;
    Ok(walker.pos)
}
