//! Canonical-form validation and canonicalization of untrusted bytes.

use std::borrow::Cow;

use super::decode::{CheckSink, Sink, walk_exact};
use super::encode::{MapState, Writer, insert_head, write_head, write_simple};
use super::error::CborError;
use super::float::write_f64;

/// A sink that writes the canonical encoding of what it is fed. Each item becomes the
/// position where its canonical encoding starts in the output.
#[derive(Debug)]
struct CanonSink {
    w: Writer,
}

impl Sink for CanonSink {
    type Out = usize;
    /// (start, major type).
    type Str = (usize, u8);
    /// (start, element count if the head is inserted at the end).
    type Seq = (usize, Option<u64>);
    type Map = MapState;
    type Tag = usize;
    const STRICT: bool = false;

    fn int(&mut self, major: u8, arg: u64) -> usize {
        let start = self.w.out.len();
        write_head(&mut self.w.out, major, arg);
        start
    }
    fn float(&mut self, x: f64) -> usize {
        let start = self.w.out.len();
        write_f64(&mut self.w.out, x);
        start
    }
    fn simple(&mut self, v: u8) -> usize {
        let start = self.w.out.len();
        write_simple(&mut self.w.out, v);
        start
    }
    fn bytes(&mut self, data: &[u8]) -> usize {
        let start = self.w.out.len();
        write_head(&mut self.w.out, 2, data.len() as u64);
        self.w.out.extend_from_slice(data);
        start
    }
    fn text(&mut self, data: &[u8]) -> usize {
        let start = self.w.out.len();
        write_head(&mut self.w.out, 3, data.len() as u64);
        self.w.out.extend_from_slice(data);
        start
    }
    fn str_begin(&mut self, text: bool) -> (usize, u8) {
        (self.w.out.len(), if text { 3 } else { 2 })
    }
    fn str_chunk(&mut self, _: &mut (usize, u8), data: &[u8]) {
        self.w.out.extend_from_slice(data);
    }
    fn str_end(&mut self, (start, major): (usize, u8), _: usize) -> Result<usize, CborError> {
        let len = self.w.out.len() - start;
        insert_head(&mut self.w.out, start, major, len as u64);
        Ok(start)
    }
    fn seq_begin(&mut self, len: Option<u64>) -> (usize, Option<u64>) {
        let start = self.w.out.len();
        match len {
            Some(n) => {
                write_head(&mut self.w.out, 4, n);
                (start, None)
            }
            None => (start, Some(0)),
        }
    }
    fn seq_item(&mut self, acc: &mut (usize, Option<u64>), _: usize) {
        if let Some(count) = acc.1.as_mut() {
            *count += 1;
        }
    }
    fn seq_end(&mut self, (start, deferred): (usize, Option<u64>)) -> usize {
        if let Some(count) = deferred {
            insert_head(&mut self.w.out, start, 4, count);
        }
        start
    }
    fn map_begin(&mut self, len: Option<u64>) -> MapState {
        self.w.map_begin(len)
    }
    fn map_entry(&mut self, acc: &mut MapState, key: usize, value: usize, offset: usize) {
        self.w.map_entry(acc, key, value, offset);
    }
    fn map_end(&mut self, acc: MapState) -> Result<usize, CborError> {
        let start = acc.start;
        self.w.map_end(acc, false)?;
        Ok(start)
    }
    fn tag_begin(&mut self, tag: u64) -> usize {
        let start = self.w.out.len();
        write_head(&mut self.w.out, 6, tag);
        start
    }
    fn tag_end(&mut self, start: usize, _: usize) -> usize {
        start
    }
}

/// Re-encodes valid CBOR canonically without building a value.
fn canonicalize_slow(bytes: &[u8]) -> Result<Vec<u8>, CborError> {
    let sink = CanonSink {
        w: Writer::new(Vec::with_capacity(bytes.len())),
    };
    walk_exact(bytes, sink).map(|(_, sink)| sink.w.out)
}

/// Whether `bytes` is exactly one data item in canonical form (see [`validate_canonical`]).
#[must_use]
pub fn is_canonical(bytes: &[u8]) -> bool {
    walk_exact(bytes, CheckSink::<true>).is_ok()
}

/// Checks that `bytes` is exactly one valid data item in canonical form, without allocating.
///
/// Canonical here means: integers, lengths and tags in the shortest head; definite lengths
/// only; map keys in strictly increasing bytewise order of their encodings (so no
/// duplicates); floats in the shortest of half, single and double precision that holds the
/// value exactly, with NaN only as `f9 7e00`. Well-formedness and validity are checked too
/// (UTF-8, simple values, nesting depth, no trailing bytes).
///
/// On failure the error describes the first problem; [`CborError::NotCanonical`] is returned
/// only when the input is otherwise valid, so [`canonicalize`] would succeed.
pub fn validate_canonical(bytes: &[u8]) -> Result<(), CborError> {
    match walk_exact(bytes, CheckSink::<true>) {
        Ok(_) => Ok(()),
        Err(not_canonical @ CborError::NotCanonical { .. }) => {
            // Prefer reporting a real defect further on over a style violation.
            canonicalize_slow(bytes)?;
            Err(not_canonical)
        }
        Err(e) => Err(e),
    }
}

/// Validates `bytes` like [`decode`](super::decode) and returns its canonical encoding,
/// borrowing the input when it is already canonical.
pub fn canonicalize_cow(bytes: &[u8]) -> Result<Cow<'_, [u8]>, CborError> {
    match walk_exact(bytes, CheckSink::<true>) {
        Ok(_) => Ok(Cow::Borrowed(bytes)),
        Err(CborError::NotCanonical { .. }) => canonicalize_slow(bytes).map(Cow::Owned),
        Err(e) => Err(e),
    }
}

/// Validates untrusted `bytes` like [`decode`](super::decode) and returns the canonical
/// encoding of the item: the input itself when it is already canonical, otherwise the
/// re-encoding, computed without building a [`Value`](super::Value).
pub fn canonicalize(bytes: &[u8]) -> Result<Vec<u8>, CborError> {
    canonicalize_cow(bytes).map(Cow::into_owned)
}

/// Checks that `bytes` is exactly one valid data item, accepting exactly what
/// [`decode`](super::decode) accepts, without building a value. Allocates only when the
/// input is not canonical.
pub fn validate(bytes: &[u8]) -> Result<(), CborError> {
    canonicalize_cow(bytes).map(drop)
}
