//! The write-ahead log.
//!
//! ## File layout (`wal-NNNNNNNNNNNNNNNN.log`, NNN = file number, 16 hex digits)
//!
//! ```text
//! file header (16 bytes): magic "ENTIWAL\0" | format version u32 LE | crc32c(bytes 0..12) u32 LE
//! record*:
//!   header (32 bytes, little endian):
//!     0  magic           u32  = 0x4C41_5745 ("EWAL")
//!     4  payload_len     u32
//!     8  seq             u64  sequence number of the transaction
//!     16 durable_before  u64  file offset up to which this file was known durable when the
//!                             record was written (every byte before it had been synced)
//!     24 payload_crc     u32  crc32c(payload)
//!     28 header_crc      u32  crc32c(bytes 0..28)
//!   payload (payload_len bytes): a [`Batch`]
//! ```
//!
//! One record holds one committed transaction; the records of one commit group are appended
//! back to back and covered by a single `sync_data`.
//!
//! ## Preallocation
//!
//! The file is kept written with zeros a little ahead of the last record: a `sync_data` that
//! only overwrites allocated blocks does not have to persist a new file size and costs less
//! (measured about 1.45x more syncs per second here). A new file starts with
//! [`FIRST_STRETCH`] of zeros (or `Options::wal_preallocate`, default 1 MiB, if less); when an
//! append leaves less than a quarter of the current stretch, the next one, twice as long up to
//! `wal_preallocate`, is written after the record. A run of zeros to the end of the file is
//! therefore the normal end of the log, in any WAL file.
//!
//! ## Recovery rule (torn tail versus corruption)
//!
//! Records are read in order while they are valid and their sequence numbers are consecutive.
//! At the first invalid position `X` the rest of the file is searched for any valid record `R`.
//! If some `R` claims `durable_before > X`, the bytes at `X` had been synced before `R` was
//! written, so the damage is real: [`Error::Corruption`](crate::Error::Corruption). Otherwise
//! everything from `X` on was never acknowledged (it was written after the last completed sync)
//! and is a torn tail: the file is cut at `X` and appending continues there.

use std::sync::Arc;

use entidb_io::File;

use crate::error::{Error, Result};

/// Magic at the start of every WAL file.
pub(crate) const FILE_MAGIC: [u8; 8] = *b"ENTIWAL\0";
/// WAL format version.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Length of the file header.
pub(crate) const FILE_HEADER_LEN: u64 = 16;
/// Magic of a record header.
pub(crate) const RECORD_MAGIC: u32 = 0x4C41_5745;
/// Length of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 32;
/// Largest payload accepted (a transaction's encoded size).
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

const _: () = assert!(RECORD_HEADER_LEN == 4 + 4 + 8 + 8 + 4 + 4);

pub(crate) fn file_name(no: u64) -> String {
    format!("wal-{no:016x}.log")
}

pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub(crate) fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..12]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One write of a transaction: a put or a delete of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchOp {
    pub key: Arc<[u8]>,
    /// `None` is a delete.
    pub value: Option<Arc<[u8]>>,
}

/// The payload of a record: the ordered writes of one transaction.
///
/// Invariant: a transaction's ops are in strictly increasing key order (its pending writes
/// come sorted and deduplicated, `Overlay::into_sorted`, and its feed key comes last: `TAG_FEED` sorts after every other tag).
/// An ingested batch ([`Inner::ingest`](crate::db::Inner)) is written to a segment as is.
///
/// ```text
/// count u32 LE, then per op: kind u8 (1 = put, 2 = delete) | key_len u32 LE | key |
///                            (put only) value_len u32 LE | value
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    pub ops: Vec<BatchOp>,
}

impl Batch {
    pub(crate) fn encoded_len(&self) -> usize {
        4 + self
            .ops
            .iter()
            .map(|o| 1 + 4 + o.key.len() + o.value.as_ref().map_or(0, |v| 4 + v.len()))
            .sum::<usize>()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            out.push(if op.value.is_some() { 1 } else { 2 });
            out.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
            out.extend_from_slice(&op.key);
            if let Some(v) = &op.value {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    /// Decode a payload whose checksum has already been verified. A payload that is
    /// inconsistent despite a good checksum is corruption (or a bug), never a torn write.
    pub(crate) fn decode(p: &[u8]) -> std::result::Result<Batch, &'static str> {
        let mut r = Reader { p, pos: 0 };
        let n = r.u32()? as usize;
        let mut ops = Vec::with_capacity(n.min(p.len() / 6));
        for _ in 0..n {
            let kind = r.u8()?;
            let klen = r.u32()? as usize;
            let key = Arc::from(r.bytes(klen)?);
            let value = match kind {
                1 => {
                    let vlen = r.u32()? as usize;
                    Some(Arc::from(r.bytes(vlen)?))
                }
                2 => None,
                _ => return Err("unknown op kind"),
            };
            ops.push(BatchOp { key, value });
        }
        if r.pos != p.len() {
            return Err("trailing bytes after the last op");
        }
        Ok(Batch { ops })
    }
}

struct Reader<'a> {
    p: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> std::result::Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self
            .p
            .get(self.pos..end)
            .ok_or("op runs past the payload")?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, &'static str> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Encode a full record (header and payload).
pub(crate) fn encode_record(seq: u64, durable_before: u64, batch: &Batch) -> Result<Vec<u8>> {
    let len = batch.encoded_len();
    if len > MAX_PAYLOAD {
        return Err(Error::TooLarge {
            what: "transaction",
            size: len as u64,
            limit: MAX_PAYLOAD as u64,
        });
    }
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + len);
    out.resize(RECORD_HEADER_LEN, 0);
    batch.encode_into(&mut out);
    assert_eq!(out.len(), RECORD_HEADER_LEN + len, "batch length mismatch");
    let payload_crc = crc32c::crc32c(&out[RECORD_HEADER_LEN..]);
    out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&durable_before.to_le_bytes());
    out[24..28].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[0..28]);
    out[28..32].copy_from_slice(&header_crc.to_le_bytes());
    Ok(out)
}

/// A valid record found in a WAL image.
#[derive(Debug)]
pub(crate) struct Record {
    pub offset: u64,
    pub seq: u64,
    pub batch: Batch,
}

struct Header {
    len: usize,
    seq: u64,
    durable_before: u64,
    payload_crc: u32,
}

fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < RECORD_HEADER_LEN {
        return None;
    }
    let u32at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    if u32at(0) != RECORD_MAGIC || crc32c::crc32c(&b[0..28]) != u32at(28) {
        return None;
    }
    let len = u32at(4) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    Some(Header {
        len,
        seq: u64at(8),
        durable_before: u64at(16),
        payload_crc: u32at(24),
    })
}

/// Try to read a complete valid record at `pos` of `image`.
fn record_at(image: &[u8], pos: usize) -> Option<(Header, usize)> {
    let h = parse_header(image.get(pos..)?)?;
    let start = pos + RECORD_HEADER_LEN;
    let end = start.checked_add(h.len)?;
    let payload = image.get(start..end)?;
    if crc32c::crc32c(payload) != h.payload_crc {
        return None;
    }
    Some((h, end))
}

/// The result of scanning one WAL file image.
#[derive(Debug)]
pub(crate) struct Scan {
    pub records: Vec<Record>,
    /// Where valid data ends: the file is cut here if it is longer.
    pub valid_end: u64,
    /// Whether a torn tail was found (and must be cut).
    pub torn: bool,
}

/// Scan a whole WAL file image. `expect_seq` is the sequence the first record must have if it
/// is to be replayed (records with a lower sequence are returned too; the caller skips them).
/// `last_file` says whether a torn tail is acceptable here (only the newest file may have one:
/// older files were synced in full before the next one was started).
pub(crate) fn scan(name: &str, image: &[u8], last_file: bool) -> Result<Scan> {
    let header_ok = image.len() >= FILE_HEADER_LEN as usize
        && image[0..8] == FILE_MAGIC
        && crc32c::crc32c(&image[0..12]).to_le_bytes() == image[12..16];
    if !header_ok {
        // A new WAL file's header is synced before any record is appended to it, so a bad
        // header on the newest file with no valid record after it is a crash during
        // creation (torn), not damage.
        let any_record = (0..image.len()).any(|p| record_at(image, p).is_some());
        if last_file && !any_record {
            return Ok(Scan {
                records: Vec::new(),
                valid_end: 0,
                torn: true,
            });
        }
        return Err(Error::corruption(name, 0, "bad WAL file header"));
    }
    let h = &image[0..FILE_HEADER_LEN as usize];
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            file: name.to_owned(),
            detail: format!("WAL format version {version}, this build reads {FORMAT_VERSION}"),
        });
    }
    let mut pos = FILE_HEADER_LEN as usize;
    let mut records: Vec<Record> = Vec::new();
    loop {
        if pos == image.len() {
            return Ok(Scan {
                records,
                valid_end: pos as u64,
                torn: false,
            });
        }
        let next_ok = record_at(image, pos).filter(|(h, _)| match records.last() {
            Some(prev) => h.seq == prev.seq + 1,
            None => true,
        });
        match next_ok {
            Some((h, end)) => {
                let batch = Batch::decode(&image[pos + RECORD_HEADER_LEN..end]).map_err(|d| {
                    Error::corruption(
                        name,
                        pos as u64,
                        format!("record passed its checksum but does not decode: {d}"),
                    )
                })?;
                records.push(Record {
                    offset: pos as u64,
                    seq: h.seq,
                    batch,
                });
                pos = end;
            }
            None => {
                // Zeros to the end: the preallocated, never written part of the file. The log
                // ends here cleanly (appending continues at `pos`).
                if image[pos..].iter().all(|&b| b == 0) {
                    return Ok(Scan {
                        records,
                        valid_end: pos as u64,
                        torn: false,
                    });
                }
                // First invalid position: torn tail or corruption?
                for probe in pos + 1..image.len().saturating_sub(RECORD_HEADER_LEN - 1) {
                    if let Some((h, _)) = record_at(image, probe)
                        && h.durable_before > pos as u64
                    {
                        return Err(Error::corruption(
                            name,
                            pos as u64,
                            format!(
                                "invalid WAL record, but a later valid record (seq {}) at \
                                     offset {probe} shows this region had been synced",
                                h.seq
                            ),
                        ));
                    }
                }
                if !last_file {
                    return Err(Error::corruption(
                        name,
                        pos as u64,
                        "invalid WAL record in a WAL file that was sealed (synced in full)",
                    ));
                }
                return Ok(Scan {
                    records,
                    valid_end: pos as u64,
                    torn: true,
                });
            }
        }
    }
}

/// The zeros a new WAL file is created with (at most `Options::wal_preallocate`).
pub(crate) const FIRST_STRETCH: u64 = 64 << 10;

/// The open, appendable WAL file.
#[derive(Debug)]
pub(crate) struct WalWriter {
    pub file: Arc<dyn File>,
    pub no: u64,
    /// Next append offset.
    pub offset: u64,
    /// The file is written (with records, or zeros by preallocation) up to here.
    pub allocated: u64,
    /// The length of the last stretch of zeros written (see "Preallocation").
    pub stretch: u64,
}

impl WalWriter {
    /// A writer appending at `offset` to a file written up to `allocated`.
    pub(crate) fn new(
        file: Arc<dyn File>,
        no: u64,
        offset: u64,
        allocated: u64,
        prealloc: u64,
    ) -> Self {
        WalWriter {
            file,
            no,
            offset,
            allocated,
            stretch: first_stretch(prealloc),
        }
    }

    /// Where the next stretch of zeros should end after an append, if one is due (less than
    /// a quarter of the current stretch left); the stretch then doubles, up to `prealloc`.
    pub(crate) fn next_stretch(&mut self, prealloc: u64) -> Option<u64> {
        if prealloc == 0 || self.allocated - self.offset >= self.stretch / 4 {
            return None;
        }
        self.stretch = self.stretch.saturating_mul(2).clamp(1, prealloc);
        Some(self.offset + self.stretch)
    }
}

/// The zeros a new WAL file starts with.
pub(crate) fn first_stretch(prealloc: u64) -> u64 {
    prealloc.min(FIRST_STRETCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Batch {
        Batch {
            ops: vec![
                BatchOp {
                    key: Arc::from(&[1, n][..]),
                    value: Some(Arc::from(&[n; 5][..])),
                },
                BatchOp {
                    key: Arc::from(&[2, n][..]),
                    value: None,
                },
            ],
        }
    }

    fn image(n: u64) -> (Vec<u8>, Vec<u64>) {
        let mut img = file_header().to_vec();
        let mut offs = vec![];
        for s in 1..=n {
            offs.push(img.len() as u64);
            let d = img.len() as u64;
            img.extend(encode_record(s, d, &batch(s as u8)).unwrap());
        }
        (img, offs)
    }

    /// Zeros are written ahead in stretches that start at 64 KiB and double up to the
    /// option, each due when less than a quarter of the last one is left.
    #[test]
    fn preallocation_stretches_double_up_to_the_option() {
        let backend = entidb_io::MemoryBackend::new();
        let file = || {
            futures_executor::block_on(entidb_io::Backend::open(
                &backend,
                "w",
                entidb_io::OpenMode::Create,
            ))
            .unwrap()
        };
        let pre = 1 << 20;
        let mut w = WalWriter::new(file(), 1, 16, 16 + first_stretch(pre), pre);
        let mut ends = vec![];
        while w.offset < 4 << 20 {
            w.offset += 1000;
            w.allocated = w.allocated.max(w.offset);
            let (left, stretch) = (w.allocated - w.offset, w.stretch);
            let next = w.next_stretch(pre);
            // Due exactly when less than a quarter of the last stretch is left.
            assert_eq!(
                next.is_some(),
                left < stretch / 4,
                "left {left}, stretch {stretch}"
            );
            if let Some(to) = next {
                assert!(to > w.allocated, "zeros go after what is written");
                ends.push(to - w.offset);
                w.allocated = to;
            }
            assert!(w.allocated - w.offset >= 1000, "always room ahead");
        }
        assert_eq!(
            &ends[..5],
            &[128 << 10, 256 << 10, 512 << 10, 1 << 20, 1 << 20]
        );
        // A small option is the first stretch and every one after it; 0 is off.
        assert_eq!(first_stretch(4096), 4096);
        let mut w = WalWriter::new(file(), 1, 16, 16 + 4096, 4096);
        w.offset = 16 + 4000;
        assert_eq!(w.next_stretch(4096), Some(16 + 4000 + 4096));
        w.offset = 16 + 4095;
        w.allocated = w.offset;
        assert_eq!(w.next_stretch(0), None, "off: no zeros at all");
    }

    #[test]
    fn roundtrip() {
        let (img, _) = image(3);
        let s = scan("w", &img, true).unwrap();
        assert_eq!(s.records.len(), 3);
        assert_eq!(s.records[2].batch, batch(3));
        assert!(!s.torn);
        assert_eq!(s.valid_end, img.len() as u64);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let (img, offs) = image(3);
        let last = offs[2] as usize;
        for cut in last..img.len() {
            let s = scan("w", &img[..cut], true).unwrap();
            assert_eq!(s.records.len(), 2, "cut at {cut}");
            assert_eq!(s.valid_end, last as u64);
            assert_eq!(s.torn, cut != last);
        }
    }

    #[test]
    fn damage_before_a_record_that_saw_it_synced_is_corruption() {
        let (mut img, offs) = image(3);
        // Record 2 claims durable_before = its own offset, so damage in record 1 (before
        // record 2's durable_before) is detected as corruption.
        img[offs[0] as usize + RECORD_HEADER_LEN + 2] ^= 0x40;
        let e = scan("w", &img, true).unwrap_err();
        assert!(e.is_corruption(), "{e}");
        // Sealed files never have torn tails.
        let (img, offs) = image(2);
        let e = scan("w", &img[..offs[1] as usize + 3], false).unwrap_err();
        assert!(e.is_corruption());
    }

    #[test]
    fn unsynced_reordered_writes_are_a_torn_tail() {
        // Records 2 and 3 were written after the last sync (durable_before = offset of 2):
        // losing 2 while 3 survived is a torn tail, not corruption.
        let mut img = file_header().to_vec();
        let d0 = img.len() as u64;
        img.extend(encode_record(1, d0, &batch(1)).unwrap());
        let synced = img.len() as u64;
        let o2 = img.len();
        img.extend(encode_record(2, synced, &batch(2)).unwrap());
        img.extend(encode_record(3, synced, &batch(3)).unwrap());
        for b in &mut img[o2..o2 + 10] {
            *b = 0;
        }
        let s = scan("w", &img, true).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(s.torn);
        assert_eq!(s.valid_end, o2 as u64);
    }

    #[test]
    fn preallocated_zeros_end_the_log_in_any_file() {
        let (mut img, _) = image(3);
        let end = img.len() as u64;
        img.resize(img.len() + 4096, 0);
        for last in [true, false] {
            let s = scan("w", &img, last).unwrap();
            assert_eq!(s.records.len(), 3);
            assert_eq!(s.valid_end, end);
            assert!(!s.torn, "zeros are not a torn tail");
        }
        // Garbage in the zeros after the last record is a torn tail (newest file only).
        img[end as usize + 100] = 7;
        assert!(scan("w", &img, true).unwrap().torn);
        assert!(scan("w", &img, false).unwrap_err().is_corruption());
    }

    #[test]
    fn names() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("wal-1.log"), None);
    }
}
