//! One-pass readers for the messages that carry bulk data: pull and bootstrap pages, push
//! requests and push answers.
//!
//! The serde path ([`Format::decode`](super::Format::decode) for other messages) validates a
//! whole CBOR body, then lets `ciborium` walk it again into the struct, and each document's
//! bytes are checked once per walk. These readers walk the body once, take each document's
//! bytes as they go and check them once ([`Canonical::from_cbor`], as the serde path does).
//!
//! # Contract
//!
//! A reader returns `None` for anything but the plain shape the serde path gives these
//! messages: definite lengths, text keys naming known fields, each at most once, documents as
//! tag 24 over a byte string, `null` for an absent optional field. The caller then decodes
//! the body through serde, which accepts every valid form (indefinite lengths, unknown
//! fields, documents in place) and names what is wrong with an invalid one. So the readers
//! never change what a body means: when one returns `Some(message)`, the serde path returns
//! the same message. The property tests below hold them to that, on valid and on damaged
//! bodies.
//!
//! A body with a field these readers do not know (from a newer peer) is read twice: the
//! reader gets as far as that field, then serde reads it all. Teach the reader the field
//! when the protocol grows one.

use entidb::EntityId;
use entidb::cbor::Canonical;

use super::{
    BootstrapEntity, BootstrapPosition, BootstrapResponse, EntityState, Hlc, Op, OpKind, OpResult,
    OpStatus, PullResponse, PushRequest, PushResponse, WireChange,
};

/// A cursor over a CBOR body. Every method returns `None` for what it does not take.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

const UINT: u8 = 0;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;
/// Tag 24: "encoded CBOR data item", the wrapper of documents.
const TAG_ENCODED: u64 = 24;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;
/// The most elements an array reserves room for before reading them.
const MAX_PREALLOC: usize = 1024;

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N as u64)?.try_into().ok()
    }

    /// A head with a definite argument: `(major type, argument)`. Non-shortest arguments are
    /// taken (the serde path takes them too); indefinite lengths and the reserved additional
    /// information values are not.
    fn head(&mut self) -> Option<(u8, u64)> {
        let b = self.byte()?;
        let arg = match b & 0x1f {
            info @ 0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.take_array()?)),
            26 => u64::from(u32::from_be_bytes(self.take_array()?)),
            27 => u64::from_be_bytes(self.take_array()?),
            _ => return None,
        };
        Some((b >> 5, arg))
    }

    fn expect(&mut self, major: u8) -> Option<u64> {
        match self.head()? {
            (m, arg) if m == major => Some(arg),
            _ => None,
        }
    }

    fn uint(&mut self) -> Option<u64> {
        self.expect(UINT)
    }

    fn text(&mut self) -> Option<&'a str> {
        let n = self.expect(TEXT)?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn string(&mut self) -> Option<String> {
        self.text().map(str::to_owned)
    }

    fn id(&mut self) -> Option<EntityId> {
        let n = self.expect(BYTES)?;
        EntityId::from_slice(self.take(n)?)
    }

    /// A document: tag 24 over a byte string that holds one valid item.
    fn doc(&mut self) -> Option<Canonical> {
        if self.expect(TAG)? != TAG_ENCODED {
            return None;
        }
        let n = self.expect(BYTES)?;
        Canonical::from_cbor(self.take(n)?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            FALSE => Some(false),
            TRUE => Some(true),
            _ => None,
        }
    }

    /// `null` (consumed: `Some(None)`) or what `f` reads.
    fn nullable<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.bytes.get(self.pos) == Some(&NULL) {
            self.pos += 1;
            Some(None)
        } else {
            f(self).map(Some)
        }
    }

    /// The element count of an array or map. A count larger than the bytes left cannot be
    /// there (every element takes a byte at least), so it is refused before anything is
    /// allocated for it.
    fn count(&mut self, major: u8) -> Option<usize> {
        let n = usize::try_from(self.expect(major)?).ok()?;
        (n <= self.bytes.len() - self.pos).then_some(n)
    }

    /// Reads an array, each element with `f`. At most [`MAX_PREALLOC`] elements are
    /// reserved ahead: a count near the body's size would otherwise reserve that many whole
    /// structs (an `Op` is over a hundred bytes) before the first one is read.
    fn array<T>(&mut self, mut f: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let n = self.count(ARRAY)?;
        let mut out = Vec::with_capacity(n.min(MAX_PREALLOC));
        for _ in 0..n {
            out.push(f(self)?);
        }
        Some(out)
    }

    /// Reads a map with text keys: `field` reads the value of each key (at most once each, by
    /// the index it names, below 64) and returns `None` for an unknown one.
    fn fields(&mut self, mut field: impl FnMut(&mut Self, &str) -> Option<u32>) -> Option<()> {
        let n = self.count(MAP)?;
        let mut seen = 0u64;
        for _ in 0..n {
            let key = self.text()?;
            let index = field(self, key)?;
            debug_assert!(index < 64, "field indexes are below 64");
            let bit = 1u64 << index;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
        }
        Some(())
    }

    /// The end of the body: nothing may follow the message.
    fn finish<T>(&self, message: T) -> Option<T> {
        (self.pos == self.bytes.len()).then_some(message)
    }
}

fn op_kind(r: &mut Reader<'_>) -> Option<OpKind> {
    match r.text()? {
        "put" => Some(OpKind::Put),
        "delete" => Some(OpKind::Delete),
        _ => None,
    }
}

fn op_status(r: &mut Reader<'_>) -> Option<OpStatus> {
    match r.text()? {
        "applied" => Some(OpStatus::Applied),
        "merged" => Some(OpStatus::Merged),
        "duplicate" => Some(OpStatus::Duplicate),
        "rejected" => Some(OpStatus::Rejected),
        _ => None,
    }
}

/// Reads a map of text keys into a struct. Each field is `name: required reader` (a value
/// that must be there) or `name: optional reader` (absent or `null` is `None`, as serde reads
/// an `Option`); keys are the field names, each at most once, and an unknown one makes the
/// map unreadable here (see [`Reader::fields`]).
macro_rules! read_struct {
    ($r:expr, $ty:ident { $($field:ident: $kind:ident $read:expr),* $(,)? }) => {{
        $(let mut $field = None;)*
        $r.fields(|r, key| {
            let mut index = 0u32;
            $(
                if key == stringify!($field) {
                    $field = Some(read_struct!(@$kind r, $read)?);
                    return Some(index);
                }
                index += 1;
            )*
            let _ = index;
            None
        })?;
        $ty { $($field: read_struct!(@finish $kind $field),)* }
    }};
    (@required $r:ident, $read:expr) => { $read($r) };
    (@optional $r:ident, $read:expr) => { $r.nullable($read) };
    (@finish required $field:ident) => { $field? };
    (@finish optional $field:ident) => { $field.flatten() };
}

/// Reads a [`PullResponse`].
pub fn pull_response(bytes: &[u8]) -> Option<PullResponse> {
    let mut r = Reader::new(bytes);
    let page = pull_page(&mut r)?;
    r.finish(page)
}

fn pull_page(r: &mut Reader<'_>) -> Option<PullResponse> {
    Some(read_struct!(r, PullResponse {
        cursor: required Reader::uint,
        changes: required |r: &mut Reader<'_>| r.array(wire_change),
        has_more: required Reader::bool,
    }))
}

fn wire_change(r: &mut Reader<'_>) -> Option<WireChange> {
    Some(read_struct!(r, WireChange {
        id: required Reader::id,
        doc: optional Reader::doc,
        kind: required op_kind,
        cursor: required Reader::uint,
        origin: optional Reader::string,
        collection: required Reader::string,
    }))
}

/// Reads a [`BootstrapResponse`].
pub fn bootstrap_response(bytes: &[u8]) -> Option<BootstrapResponse> {
    let mut r = Reader::new(bytes);
    let page = read_struct!(r, BootstrapResponse {
        next: optional bootstrap_position,
        total: optional Reader::uint,
        cursor: required Reader::uint,
        entities: required |r: &mut Reader<'_>| r.array(bootstrap_entity),
    });
    r.finish(page)
}

fn bootstrap_position(r: &mut Reader<'_>) -> Option<BootstrapPosition> {
    Some(read_struct!(r, BootstrapPosition {
        after: optional Reader::id,
        collection: required Reader::string,
    }))
}

fn bootstrap_entity(r: &mut Reader<'_>) -> Option<BootstrapEntity> {
    Some(read_struct!(r, BootstrapEntity {
        id: required Reader::id,
        doc: required Reader::doc,
        version: required Reader::uint,
        collection: required Reader::string,
    }))
}

/// Reads a [`PushRequest`].
pub fn push_request(bytes: &[u8]) -> Option<PushRequest> {
    let mut r = Reader::new(bytes);
    let request = read_struct!(r, PushRequest {
        ops: required |r: &mut Reader<'_>| r.array(op),
        instance: optional Reader::string,
        client_id: required Reader::string,
    });
    r.finish(request)
}

fn op(r: &mut Reader<'_>) -> Option<Op> {
    Some(read_struct!(r, Op {
        id: required Reader::id,
        doc: optional Reader::doc,
        hlc: required hlc_stamp,
        kind: required op_kind,
        op_id: required Reader::uint,
        collection: required Reader::string,
        base_version: optional Reader::uint,
    }))
}

fn hlc_stamp(r: &mut Reader<'_>) -> Option<Hlc> {
    Some(read_struct!(r, Hlc {
        node: required Reader::string,
        millis: required Reader::uint,
        counter: required |r: &mut Reader<'_>| u32::try_from(r.uint()?).ok(),
    }))
}

/// Reads a [`PushResponse`].
pub fn push_response(bytes: &[u8]) -> Option<PushResponse> {
    let mut r = Reader::new(bytes);
    let answer = read_struct!(r, PushResponse {
        pull: optional pull_page,
        cursor: required Reader::uint,
        results: required |r: &mut Reader<'_>| r.array(op_result),
    });
    r.finish(answer)
}

fn op_result(r: &mut Reader<'_>) -> Option<OpResult> {
    Some(read_struct!(r, OpResult {
        op_id: required Reader::uint,
        state: required entity_state,
        status: required op_status,
    }))
}

fn entity_state(r: &mut Reader<'_>) -> Option<EntityState> {
    Some(read_struct!(r, EntityState {
        doc: optional Reader::doc,
        version: optional Reader::uint,
    }))
}

#[cfg(test)]
mod tests {
    use entidb::cbor::{Value, encode};
    use proptest::prelude::*;

    use super::super::{Format, Message};
    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4).prop_map(Value::map),
            ]
        })
    }

    fn doc() -> impl Strategy<Value = Canonical> {
        value().prop_map(|v| Canonical::from_value(&v).unwrap())
    }

    fn id() -> impl Strategy<Value = EntityId> {
        any::<[u8; 16]>().prop_map(EntityId::from_bytes)
    }

    fn kind() -> impl Strategy<Value = OpKind> {
        prop_oneof![Just(OpKind::Put), Just(OpKind::Delete)]
    }

    fn name() -> impl Strategy<Value = String> {
        // Multi-byte characters too: text is checked as UTF-8 on both paths.
        "[a-zé_]{0,8}"
    }

    fn pull() -> impl Strategy<Value = PullResponse> {
        let change = (
            id(),
            prop::option::of(doc()),
            kind(),
            any::<u64>(),
            prop::option::of(name()),
            name(),
        )
            .prop_map(|(id, doc, kind, cursor, origin, collection)| WireChange {
                id,
                doc,
                kind,
                cursor,
                origin,
                collection,
            });
        (
            any::<u64>(),
            prop::collection::vec(change, 0..5),
            any::<bool>(),
        )
            .prop_map(|(cursor, changes, has_more)| PullResponse {
                cursor,
                changes,
                has_more,
            })
    }

    fn bootstrap() -> impl Strategy<Value = BootstrapResponse> {
        let entity =
            (id(), doc(), any::<u64>(), name()).prop_map(|(id, doc, version, collection)| {
                BootstrapEntity {
                    id,
                    doc,
                    version,
                    collection,
                }
            });
        let next = (prop::option::of(id()), name())
            .prop_map(|(after, collection)| BootstrapPosition { after, collection });
        (
            prop::option::of(next),
            prop::option::of(any::<u64>()),
            any::<u64>(),
            prop::collection::vec(entity, 0..5),
        )
            .prop_map(|(next, total, cursor, entities)| BootstrapResponse {
                next,
                total,
                cursor,
                entities,
            })
    }

    fn push_req() -> impl Strategy<Value = PushRequest> {
        let hlc = (name(), any::<u64>(), any::<u32>()).prop_map(|(node, millis, counter)| Hlc {
            node,
            millis,
            counter,
        });
        let op = (
            id(),
            prop::option::of(doc()),
            hlc,
            kind(),
            any::<u64>(),
            name(),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(id, doc, hlc, kind, op_id, collection, base_version)| Op {
                id,
                doc,
                hlc,
                kind,
                op_id,
                collection,
                base_version,
            });
        (
            prop::collection::vec(op, 0..5),
            prop::option::of(name()),
            name(),
        )
            .prop_map(|(ops, instance, client_id)| PushRequest {
                ops,
                instance,
                client_id,
            })
    }

    fn push_resp() -> impl Strategy<Value = PushResponse> {
        let status = prop_oneof![
            Just(OpStatus::Applied),
            Just(OpStatus::Merged),
            Just(OpStatus::Duplicate),
            Just(OpStatus::Rejected),
        ];
        let result = (
            any::<u64>(),
            prop::option::of(doc()),
            prop::option::of(any::<u64>()),
            status,
        )
            .prop_map(|(op_id, doc, version, status)| OpResult {
                op_id,
                state: EntityState { doc, version },
                status,
            });
        (
            prop::option::of(pull()),
            any::<u64>(),
            prop::collection::vec(result, 0..5),
        )
            .prop_map(|(pull, cursor, results)| PushResponse {
                pull,
                cursor,
                results,
            })
    }

    /// A body damaged in one of a few ways: cut short, a byte changed, a byte inserted.
    fn damaged(bytes: &[u8], how: u8, at: usize, byte: u8) -> Vec<u8> {
        let mut b = bytes.to_vec();
        if b.is_empty() {
            return b;
        }
        let at = at % b.len();
        match how % 3 {
            0 => b.truncate(at),
            1 => b[at] = byte,
            _ => b.insert(at, byte),
        }
        b
    }

    /// The contract, for one message type: the reader takes what `Format::encode` writes and
    /// reads the same message; on any body, when it reads a message, serde reads the same.
    fn check<T: Message + serde::Serialize + PartialEq + std::fmt::Debug>(
        message: &T,
        reader: fn(&[u8]) -> Option<T>,
        how: u8,
        at: usize,
        byte: u8,
    ) -> Result<(), TestCaseError> {
        let bytes = Format::Cbor.encode(message).unwrap();
        let read = reader(&bytes);
        prop_assert_eq!(read.as_ref(), Some(message));
        prop_assert_eq!(&entidb::cbor::from_slice::<T>(&bytes).unwrap(), message);
        agree(&damaged(&bytes, how, at, byte), reader)?;
        // The same at the level of fields: one dropped, nulled, made long or given twice.
        let mut value = entidb::cbor::decode(&bytes).unwrap();
        if rewrite(&mut value, &mut (at % 64), how) {
            agree(&encode(&value), reader)?;
        }
        Ok(())
    }

    /// When `reader` takes `bytes`, serde reads the same message.
    fn agree<T: Message + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
        reader: fn(&[u8]) -> Option<T>,
    ) -> Result<(), TestCaseError> {
        if let Some(read) = reader(bytes) {
            prop_assert_eq!(Some(read), entidb::cbor::from_slice::<T>(bytes).ok());
        }
        Ok(())
    }

    /// Rewrites the `k`-th map entry of `v` (counting every map's entries in preorder):
    /// drops it, sets its value to null, puts a long string in its place (longer than the
    /// chunks serde reads strings in), or gives its key twice. Returns whether there was one.
    fn rewrite(v: &mut Value, k: &mut usize, how: u8) -> bool {
        match v {
            Value::Map(entries) => {
                for i in 0..entries.len() {
                    if *k == 0 {
                        match how % 4 {
                            0 => drop(entries.remove(i)),
                            1 => entries[i].1 = Value::Null,
                            2 => entries[i].1 = Value::from("é".repeat(3000)),
                            _ => {
                                let twice = entries[i].clone();
                                entries.push(twice);
                            }
                        }
                        return true;
                    }
                    *k -= 1;
                    if rewrite(&mut entries[i].1, k, how) {
                        return true;
                    }
                }
                false
            }
            Value::Array(items) => items.iter_mut().any(|item| rewrite(item, k, how)),
            Value::Tag(_, inner) => rewrite(inner, k, how),
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn pull_pages_read_as_serde_reads_them(m in pull(), how: u8, at: usize, byte: u8) {
            check(&m, pull_response, how, at, byte)?;
        }

        #[test]
        fn bootstrap_pages_read_as_serde_reads_them(
            m in bootstrap(), how: u8, at: usize, byte: u8,
        ) {
            check(&m, bootstrap_response, how, at, byte)?;
        }

        #[test]
        fn push_requests_read_as_serde_reads_them(
            m in push_req(), how: u8, at: usize, byte: u8,
        ) {
            check(&m, push_request, how, at, byte)?;
        }

        #[test]
        fn arbitrary_bytes_read_as_serde_reads_them(
            head in 0xa1u8..0xa5,
            key in prop::sample::select(vec![
                "cursor", "changes", "has_more", "next", "total", "entities", "ops",
                "client_id", "results",
            ]),
            tail in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            // Behind a small map head and a key one of the messages has, so that the
            // readers get past the first entry's key and read arbitrary bytes as its value.
            let mut bytes = vec![head, 0x60 + key.len() as u8];
            bytes.extend(key.as_bytes());
            bytes.extend(tail);
            agree::<PullResponse>(&bytes, pull_response)?;
            agree::<BootstrapResponse>(&bytes, bootstrap_response)?;
            agree::<PushRequest>(&bytes, push_request)?;
            agree::<PushResponse>(&bytes, push_response)?;
        }

        #[test]
        fn push_answers_read_as_serde_reads_them(
            m in push_resp(), how: u8, at: usize, byte: u8,
        ) {
            check(&m, push_response, how, at, byte)?;
        }
    }

    fn page_value(changes: Value) -> Value {
        Value::map([
            ("cursor", Value::from(7)),
            ("changes", changes),
            ("has_more", Value::from(false)),
        ])
    }

    fn change_value(extra: Option<(&str, Value)>) -> Value {
        let doc = encode(&Value::map([("a", 1)]));
        let mut fields = vec![
            ("id", Value::Bytes(vec![1; 16])),
            ("doc", Value::Tag(24, Box::new(Value::Bytes(doc)))),
            ("kind", Value::from("put")),
            ("cursor", Value::from(7)),
            ("origin", Value::Null),
            ("collection", Value::from("notes")),
        ];
        fields.extend(extra);
        Value::map(fields)
    }

    #[test]
    fn other_valid_forms_fall_back_to_serde_and_read_the_same() {
        // An unknown field (a newer server's), a document in place, a padded integer head,
        // an indefinite-length array: the reader leaves them to serde, which takes them.
        let unknown = encode(&page_value(Value::array([change_value(Some((
            "later",
            Value::from(1),
        )))])));
        let in_place = encode(&page_value(Value::array([Value::map([
            ("id", Value::Bytes(vec![1; 16])),
            ("doc", Value::map([("a", 1)])),
            ("kind", Value::from("put")),
            ("cursor", Value::from(7)),
            ("collection", Value::from("notes")),
        ])])));
        for bytes in [unknown, in_place] {
            assert!(pull_response(&bytes).is_none());
            let page = PullResponse::from_cbor(&bytes).unwrap();
            assert_eq!(page.changes.len(), 1);
            assert_eq!(
                page.changes[0].doc.as_ref().unwrap().as_bytes(),
                b"\xa1\x61a\x01"
            );
        }
        let plain = encode(&page_value(Value::array([change_value(None)])));
        let expected = pull_response(&plain).unwrap();
        // "cursor": 7 with a one-byte argument (0x18 0x07) instead of 0x07. The reader takes
        // it, as serde does.
        let at = plain.windows(7).position(|w| w == b"\x66cursor").unwrap() + 7;
        let mut padded = plain.clone();
        padded.splice(at..=at, [0x18, 0x07]);
        assert_eq!(pull_response(&padded).as_ref(), Some(&expected));
        assert_eq!(PullResponse::from_cbor(&padded).unwrap(), expected);
        // The changes as an indefinite-length array (9f ... ff).
        let at = plain.windows(8).position(|w| w == b"\x67changes").unwrap() + 8;
        let mut indefinite = plain.clone();
        indefinite[at] = 0x9f;
        let end = indefinite.len() - b"\x68has_more\xf4".len();
        indefinite.insert(end, 0xff);
        assert!(pull_response(&indefinite).is_none());
        assert_eq!(PullResponse::from_cbor(&indefinite).unwrap(), expected);
    }

    #[test]
    fn invalid_bodies_get_serdes_error() {
        // A field twice, a bad document, bytes after the message, a wrong type.
        let Value::Map(mut fields) = change_value(None) else {
            unreachable!()
        };
        fields.push((Value::from("kind"), Value::from("delete")));
        let twice = encode(&page_value(Value::array([Value::Map(fields)])));
        let bad_doc = encode(&page_value(Value::array([change_value(Some((
            "doc",
            Value::Tag(24, Box::new(Value::Bytes(vec![0x82, 0x01]))),
        )))])));
        let mut trailing = encode(&page_value(Value::Array(Vec::new())));
        trailing.push(0x00);
        let wrong = encode(&Value::map([
            ("cursor", Value::from("7")),
            ("changes", Value::array(Vec::<Value>::new())),
            ("has_more", Value::from(false)),
        ]));
        for bytes in [twice, bad_doc, trailing, wrong] {
            assert!(pull_response(&bytes).is_none(), "{bytes:02x?}");
            assert!(matches!(
                PullResponse::from_cbor(&bytes),
                Err(super::super::CodecError::Cbor(_))
            ));
        }
    }

    #[test]
    fn a_count_larger_than_the_body_allocates_nothing() {
        // "changes": an array that claims 2^32 elements in a few bytes.
        let mut bytes = vec![0xa1, 0x67];
        bytes.extend_from_slice(b"changes");
        bytes.extend_from_slice(&[0x9b, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(pull_response(&bytes).is_none());
        assert!(PullResponse::from_cbor(&bytes).is_err());
    }
}
