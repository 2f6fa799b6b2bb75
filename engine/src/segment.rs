//! Immutable sorted segments.
//!
//! ## File layout (`seg-NNNNNNNNNNNNNNNN.sst`)
//!
//! ```text
//! data block*    compressed entries | trailer (9 bytes)
//! index block    entries of IndexEntry | crc32c u32 LE
//! filter block   Bloom filter (see bloom.rs) | crc32c u32 LE
//! footer (64 bytes, little endian):
//!   0  magic "ENTISEG\0"         8  format version u32    12 reserved u32 (0)
//!   16 index offset u64          24 index length u32      28 filter length u32
//!   32 entry count u64           40 min seq u64           48 max seq u64
//!   56 block count u32           60 crc32c(bytes 0..60) u32
//! ```
//!
//! A data block holds entries in (key ascending, sequence descending) order. In format 2
//! (written since 2026-12-07) each is
//! `key_len varint | key | seq_kind varint (seq << 1 | 1 for a delete) | (put) value_len varint | value`
//! (unsigned LEB128, see `varint.rs`); in format 1 (still read) it was
//! `key_len u16 | key | seq u64 | kind u8 (1 put, 2 delete) | (put) value_len u32 | value`.
//! Format 2 saves about 9 bytes per entry (a 21-byte entity key, a value of 128 to 16,383
//! bytes and a sequence below 2^20: 1 + 3 + 2 bytes of framing instead of 15). The block is then compressed; its trailer is `compression u8 (0 none, 1 lz4) | raw_len u32 |
//! crc32c(compressed bytes ++ compression ++ raw_len) u32`. An index entry is
//! `key_len u16 | last key | last seq u64 | block offset u64 | block length u32` (length
//! including the trailer). The filter block starts right after the index block.
//!
//! Segments are written once, synced, then named in the manifest; they never change after.

use std::sync::Arc;

use entidb_io::{Backend, File, OpenMode};

use crate::bloom::{BloomBuilder, may_contain, may_contain_hash};
use crate::error::{Error, Result};
use crate::heads::KeyHeads;
use crate::memtable::{Entry, EntryRef, Op, empty_value};
use crate::points::{self, PointIndex};
use crate::varint;

pub(crate) const MAGIC: [u8; 8] = *b"ENTISEG\0";
/// The segment format written: entries framed with varints ([`EntryFormat::Varint`]).
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The first segment format, still read: fixed-width entry framing.
pub(crate) const FORMAT_FIXED: u32 = 1;

/// How a segment's block entries are framed (from the footer's format version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryFormat {
    /// Format 1: `key_len u16 | key | seq u64 | kind u8 | (put) value_len u32 | value`.
    Fixed,
    /// Format 2: `key_len varint | key | seq << 1 | delete varint | (put) value_len varint |
    /// value`.
    Varint,
}

impl EntryFormat {
    fn of_version(version: u32) -> Option<EntryFormat> {
        match version {
            FORMAT_FIXED => Some(EntryFormat::Fixed),
            FORMAT_VERSION => Some(EntryFormat::Varint),
            _ => None,
        }
    }

    fn version(self) -> u32 {
        match self {
            EntryFormat::Fixed => FORMAT_FIXED,
            EntryFormat::Varint => FORMAT_VERSION,
        }
    }

    /// Bytes `e` takes in a block.
    fn entry_len(self, e: &EntryRef<'_>) -> usize {
        let k = e.key.len();
        match self {
            EntryFormat::Fixed => 2 + k + 8 + 1 + e.value.map_or(0, |v| 4 + v.len()),
            EntryFormat::Varint => {
                varint::len(k as u64)
                    + k
                    + varint::len(e.seq << 1)
                    + e.value.map_or(0, |v| varint::len(v.len() as u64) + v.len())
            }
        }
    }

    /// Appends `e` to a block.
    fn encode(self, e: &EntryRef<'_>, out: &mut Vec<u8>) {
        match self {
            EntryFormat::Fixed => {
                out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
                out.extend_from_slice(e.key);
                out.extend_from_slice(&e.seq.to_le_bytes());
                match e.value {
                    Some(v) => {
                        out.push(1);
                        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        out.extend_from_slice(v);
                    }
                    None => out.push(2),
                }
            }
            EntryFormat::Varint => {
                varint::put(out, e.key.len() as u64);
                out.extend_from_slice(e.key);
                varint::put(out, e.seq << 1 | u64::from(e.value.is_none()));
                if let Some(v) = e.value {
                    varint::put(out, v.len() as u64);
                    out.extend_from_slice(v);
                }
            }
        }
    }
}
pub(crate) const FOOTER_LEN: usize = 64;
use crate::block_encode::{BlockEncoder, EncodePipe, Encoded, RawBlock, TRAILER_LEN};
pub(crate) const WRITE_BUFFER: usize = 1 << 20;

const _: () = assert!(FOOTER_LEN == 60 + 4);

pub(crate) fn file_name(id: u64) -> String {
    format!("seg-{id:016x}.sst")
}

pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".sst")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// What the manifest records about a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub id: u64,
    pub size: u64,
    pub entries: u64,
    pub min_seq: u64,
    pub max_seq: u64,
}

#[derive(Debug, Clone)]
struct IndexEntry {
    last_key: Arc<[u8]>,
    last_seq: u64,
    offset: u64,
    len: u32,
}

/// A decoded data block: raw entry bytes plus the offset of each entry.
#[derive(Debug)]
pub(crate) struct Block {
    data: Vec<u8>,
    format: EntryFormat,
    offsets: Vec<u32>,
    /// Heads of the entries' keys, for [`Block::seek`]: built by the first seek, so blocks
    /// that are only read in order (scans, compaction) never pay for them.
    heads: std::sync::OnceLock<KeyHeads>,
    /// Where each key's first entry starts, for [`Block::point`]: built by the first point
    /// read (`None` inside when the block is too large for one, see `points.rs`).
    points: std::sync::OnceLock<Option<PointIndex>>,
    /// How far past an entry's start [`Block::touch_after`] reads: the block's mean entry
    /// length, at most 256 bytes.
    touch_span: u16,
}

impl Block {
    fn parse(data: Vec<u8>, format: EntryFormat) -> std::result::Result<Block, &'static str> {
        let mut offsets = Vec::new();
        let mut pos = 0usize;
        while pos < data.len() {
            offsets.push(pos as u32);
            pos = match format {
                EntryFormat::Fixed => entry_end(&data, pos)?,
                EntryFormat::Varint => varint_entry_end(&data, pos)?,
            };
        }
        let touch_span = (data.len() / offsets.len().max(1)).min(256) as u16;
        Ok(Block {
            data,
            format,
            offsets,
            heads: std::sync::OnceLock::new(),
            points: std::sync::OnceLock::new(),
            touch_span,
        })
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Entry `i`'s head: where its key lies, its sequence, whether it is a delete, and where
    /// the rest of it (a put's value length) starts. Decoded on every call (a cursor that
    /// kept it measured 15 % slower full scans: W5, `docs/benchmarks.md`). Framing was
    /// checked by [`Block::parse`]; the fallbacks below are never taken.
    #[inline(always)]
    fn head(&self, i: usize) -> Head {
        self.head_at(self.offsets[i] as usize)
    }

    /// [`Block::head`] of the entry that starts at byte `p` (an entry's offset).
    #[inline(always)]
    fn head_at(&self, p: usize) -> Head {
        let d = &self.data[..];
        match self.format {
            EntryFormat::Fixed => {
                let klen = u16::from_le_bytes([d[p], d[p + 1]]) as usize;
                let s = p + 2 + klen;
                let seq = u64::from_le_bytes(d[s..s + 8].try_into().unwrap_or([0; 8]));
                Head {
                    key: (p + 2, s),
                    seq,
                    deleted: d[s + 8] != 1,
                    rest: s + 9,
                }
            }
            EntryFormat::Varint => {
                let mut q = p;
                let klen = varint::get_known(d, &mut q) as usize;
                let key = (q, q + klen);
                q += klen;
                let seq_kind = varint::get_known(d, &mut q);
                Head {
                    key,
                    seq: seq_kind >> 1,
                    deleted: seq_kind & 1 == 1,
                    rest: q,
                }
            }
        }
    }

    fn key_seq(&self, i: usize) -> (&[u8], u64) {
        let h = self.head(i);
        (&self.data[h.key.0..h.key.1], h.seq)
    }

    fn entry(&self, i: usize) -> Entry {
        let h = self.head(i);
        Entry {
            key: Arc::from(&self.data[h.key.0..h.key.1]),
            seq: h.seq,
            op: self.op_at(&h),
        }
    }

    /// Where entry `i`'s value lies in the block: (start, length); `None` for a delete.
    fn value_range(&self, i: usize) -> Option<(usize, usize)> {
        self.value_at(&self.head(i))
    }

    /// The value range of the entry whose head is `h`.
    #[inline(always)]
    fn value_at(&self, h: &Head) -> Option<(usize, usize)> {
        if h.deleted {
            return None;
        }
        let d = &self.data[..];
        Some(match self.format {
            EntryFormat::Fixed => {
                let l = u32::from_le_bytes(d[h.rest..h.rest + 4].try_into().unwrap_or([0; 4]));
                (h.rest + 4, l as usize)
            }
            EntryFormat::Varint => {
                let mut q = h.rest;
                let l = varint::get_known(d, &mut q) as usize;
                (q, l)
            }
        })
    }

    /// Entry `i`, borrowed from the block (one head decode).
    fn entry_ref(&self, i: usize) -> EntryRef<'_> {
        let h = self.head(i);
        EntryRef {
            key: &self.data[h.key.0..h.key.1],
            seq: h.seq,
            value: self
                .value_at(&h)
                .map(|(start, len)| &self.data[start..start + len]),
        }
    }

    /// The value of entry `i` (without copying its key).
    fn op(&self, i: usize) -> Op {
        self.op_at(&self.head(i))
    }

    /// The value of the entry whose head is `h`.
    fn op_at(&self, h: &Head) -> Op {
        match self.value_at(h) {
            None => Op::Delete,
            Some((_, 0)) => Op::Put(empty_value()),
            Some((start, len)) => Op::Put(Arc::from(&self.data[start..start + len])),
        }
    }

    /// The newest entry of `key` at or below `snapshot` in this block, if any; `hash` is
    /// `points::key_hash(key)`. Through the point index when the block has one; the binary
    /// search ([`Block::seek`]) when it has none, or when the key's newest version in this
    /// block is above the snapshot (an older snapshot, rare).
    fn point(&self, key: &[u8], hash: u64, snapshot: u64) -> Option<Head> {
        let index = self.points.get_or_init(|| self.build_points());
        if let Some(index) = index {
            let newest = index.find(hash, |p| {
                self.touch_after(p);
                let h = self.head_at(p);
                (self.data[h.key.0..h.key.1] == *key).then_some(h)
            })?;
            if newest.seq <= snapshot {
                return Some(newest);
            }
        }
        let i = self.seek(key, snapshot);
        if i >= self.len() {
            return None;
        }
        let h = self.head(i);
        (self.data[h.key.0..h.key.1] == *key).then_some(h)
    }

    /// The block's point index: the hash and offset of each key's first entry. `None` when an
    /// entry starts past what 16 bits hold (entries start in ascending order, so the last
    /// one says), before any key is hashed.
    fn build_points(&self) -> Option<PointIndex> {
        if self
            .offsets
            .last()
            .is_some_and(|&o| o as usize >= points::MAX_BLOCK)
        {
            return None;
        }
        let mut prev: Option<(usize, usize)> = None;
        let firsts = (0..self.len()).filter_map(|i| {
            let h = self.head(i);
            let new = prev.is_none_or(|(a, b)| self.data[a..b] != self.data[h.key.0..h.key.1]);
            prev = Some(h.key);
            new.then(|| {
                (
                    points::key_hash(&self.data[h.key.0..h.key.1]),
                    self.offsets[i] as usize,
                )
            })
        });
        PointIndex::build(self.len(), firsts)
    }

    /// Reads one byte from each of the (up to three) cache lines after byte `p` that an
    /// entry of the block's mean length reaches, so that the value (a document of about 200
    /// bytes, say) arrives from memory while its key is decoded and compared, instead of
    /// after. The engine has no `unsafe` for a prefetch instruction; plain reads that do not
    /// depend on each other load in parallel all the same. Blocks of small entries read none.
    #[inline(always)]
    fn touch_after(&self, p: usize) {
        for line in [64, 128, 192] {
            if line >= usize::from(self.touch_span) {
                break;
            }
            if let Some(b) = self.data.get(p + line) {
                std::hint::black_box(*b);
            }
        }
    }

    /// Index of the first entry at or after position (key, seq).
    fn seek(&self, key: &[u8], seq: u64) -> usize {
        let heads = self.heads.get_or_init(|| {
            let keys: Vec<&[u8]> = (0..self.len()).map(|i| self.key_seq(i).0).collect();
            KeyHeads::new(&keys)
        });
        heads.partition_point(key, |i| {
            let (k, s) = self.key_seq(i);
            Entry::cmp_pos(k, s, key, seq)
        })
    }
}

/// A decoded entry head: where the key lies, the sequence, whether it is a delete, and where
/// the rest (a put's value length) starts.
#[derive(Debug, Clone, Copy)]
struct Head {
    key: (usize, usize),
    seq: u64,
    deleted: bool,
    rest: usize,
}

/// Validate one format-2 entry's framing and return where it ends.
fn varint_entry_end(d: &[u8], p: usize) -> std::result::Result<usize, &'static str> {
    let mut q = p;
    let klen = varint::get(d, &mut q).ok_or("bad key length")?;
    if klen > u64::from(u16::MAX) {
        return Err("key longer than a segment allows");
    }
    q = q
        .checked_add(klen as usize)
        .filter(|&q| q <= d.len())
        .ok_or("entry runs past the block")?;
    let seq_kind = varint::get(d, &mut q).ok_or("bad sequence")?;
    if seq_kind & 1 == 1 {
        return Ok(q);
    }
    let vlen = varint::get(d, &mut q).ok_or("bad value length")?;
    usize::try_from(vlen)
        .ok()
        .and_then(|l| q.checked_add(l))
        .filter(|&end| end <= d.len())
        .ok_or("entry runs past the block")
}

/// Validate one format-1 entry's framing and return where it ends.
fn entry_end(d: &[u8], p: usize) -> std::result::Result<usize, &'static str> {
    let get = |a: usize, b: usize| d.get(a..b).ok_or("entry runs past the block");
    let klen = u16::from_le_bytes(get(p, p + 2)?.try_into().map_err(|_| "bad key length")?);
    let seq_at = p + 2 + klen as usize;
    // (Sequences stay below 2^63: format 2, which compaction writes, needs the top bit.)
    if get(seq_at, seq_at + 8)?[7] >= 0x80 {
        return Err("sequence out of range");
    }
    let kind_at = seq_at + 8;
    match get(kind_at, kind_at + 1)?[0] {
        1 => {
            let l = u32::from_le_bytes(
                get(kind_at + 1, kind_at + 5)?
                    .try_into()
                    .map_err(|_| "bad value length")?,
            ) as usize;
            let end = kind_at + 5 + l;
            get(kind_at + 5, end)?;
            Ok(end)
        }
        2 => Ok(kind_at + 1),
        _ => Err("unknown entry kind"),
    }
}

/// Shared cache of decoded blocks, bounded in bytes.
#[derive(Debug)]
pub(crate) struct BlockCache {
    cache: quick_cache::sync::Cache<(u64, u64), Cached, BlockWeighter>,
}

/// A cached block and the weight it was inserted with. The cache asks for an entry's weight
/// again when the entry is replaced or removed, and the answer must not change; a block's
/// own size does change (its point index is built after it is cached), so the weight is
/// fixed here, when the entry is made.
#[derive(Debug, Clone)]
struct Cached {
    block: Arc<Block>,
    weight: u64,
}

impl Cached {
    fn new(block: Arc<Block>) -> Cached {
        // Heads are built after the block is cached: count them at their full size (8 + 4
        // bytes of head and offset per entry). The point index counts once built: the first
        // point read of a block inserts it again so that it is weighed with its index
        // (`Segment::get`). 160 bytes cover the block's own fields and the cache's entry.
        let points = block
            .points
            .get()
            .and_then(Option::as_ref)
            .map_or(0, PointIndex::bytes);
        let weight = (block.data.len() + block.offsets.len() * 12 + points + 160) as u64;
        Cached { block, weight }
    }
}

#[derive(Debug, Clone)]
struct BlockWeighter;

impl quick_cache::Weighter<(u64, u64), Cached> for BlockWeighter {
    fn weight(&self, _k: &(u64, u64), v: &Cached) -> u64 {
        v.weight
    }
}

impl BlockCache {
    pub(crate) fn new(bytes: u64) -> Self {
        let items = (bytes / 4096).max(16) as usize;
        Self {
            cache: quick_cache::sync::Cache::with_weighter(
                items,
                bytes.max(1 << 16),
                BlockWeighter,
            ),
        }
    }
}

/// Counters the segment layer bumps (shared with the database's stats).
#[derive(Debug, Default)]
pub(crate) struct SegStats {
    pub cache_hits: std::sync::atomic::AtomicU64,
    pub cache_misses: std::sync::atomic::AtomicU64,
    pub bytes_read: std::sync::atomic::AtomicU64,
    pub filter_skips: std::sync::atomic::AtomicU64,
}

/// An open segment: footer, index and filter in memory; blocks read on demand via the cache.
#[derive(Debug)]
pub(crate) struct Segment {
    pub meta: SegmentMeta,
    name: String,
    file: Arc<dyn File>,
    /// How its blocks frame entries (from the footer's format version).
    format: EntryFormat,
    index: Vec<IndexEntry>,
    /// Heads of the blocks' last keys, for [`Segment::find_block`].
    index_heads: KeyHeads,
    filter: Vec<u8>,
    cache: Arc<BlockCache>,
    stats: Arc<SegStats>,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

impl Segment {
    /// Open a segment: read and check its footer, index and filter.
    pub(crate) async fn open(
        backend: &dyn Backend,
        id: u64,
        cache: Arc<BlockCache>,
        stats: Arc<SegStats>,
    ) -> Result<Segment> {
        let name = file_name(id);
        let file = backend
            .open(&name, OpenMode::Existing)
            .await
            .map_err(Error::io("opening a segment"))?;
        let size = file.len().await.map_err(Error::io("reading a segment"))?;
        let corrupt = |off: u64, d: &str| Error::corruption(&name, off, d.to_owned());
        if size < FOOTER_LEN as u64 {
            return Err(corrupt(0, "segment shorter than its footer"));
        }
        let foot_at = size - FOOTER_LEN as u64;
        let f = file
            .read_at(foot_at, FOOTER_LEN)
            .await
            .map_err(Error::io("reading a segment footer"))?;
        if f[0..8] != MAGIC || crc32c::crc32c(&f[0..60]) != u32_at(&f, 60) {
            return Err(corrupt(foot_at, "bad segment footer (magic or checksum)"));
        }
        let version = u32_at(&f, 8);
        let Some(format) = EntryFormat::of_version(version) else {
            return Err(Error::UnsupportedFormat {
                file: name,
                detail: format!(
                    "segment format {version}, this build reads {FORMAT_FIXED} and {FORMAT_VERSION}"
                ),
            });
        };
        let index_off = u64_at(&f, 16);
        let index_len = u32_at(&f, 24) as u64;
        let filter_len = u32_at(&f, 28) as u64;
        let entries = u64_at(&f, 32);
        let (min_seq, max_seq) = (u64_at(&f, 40), u64_at(&f, 48));
        let block_count = u32_at(&f, 56) as usize;
        if index_off
            .checked_add(index_len)
            .and_then(|x| x.checked_add(filter_len))
            != Some(foot_at)
            || index_len < 4
            || filter_len < 4
        {
            return Err(corrupt(foot_at, "segment footer offsets are inconsistent"));
        }
        let meta_blocks = file
            .read_at(index_off, (index_len + filter_len) as usize)
            .await
            .map_err(Error::io("reading a segment index"))?;
        let (ib, fb) = meta_blocks.split_at(index_len as usize);
        let check = |b: &[u8]| crc32c::crc32c(&b[..b.len() - 4]) == u32_at(b, b.len() - 4);
        if !check(ib) {
            return Err(corrupt(index_off, "segment index checksum mismatch"));
        }
        if !check(fb) {
            return Err(corrupt(
                index_off + index_len,
                "segment filter checksum mismatch",
            ));
        }
        let index = parse_index(&ib[..ib.len() - 4])
            .ok_or_else(|| corrupt(index_off, "segment index does not parse"))?;
        if index.len() != block_count {
            return Err(corrupt(index_off, "segment index block count mismatch"));
        }
        let mut expect = 0u64;
        for e in &index {
            if e.offset != expect {
                return Err(corrupt(
                    index_off,
                    "segment index offsets are not contiguous",
                ));
            }
            expect = e.offset + e.len as u64;
        }
        if expect != index_off {
            return Err(corrupt(index_off, "segment data region length mismatch"));
        }
        let last_keys: Vec<&[u8]> = index.iter().map(|e| &*e.last_key).collect();
        let index_heads = KeyHeads::new(&last_keys);
        Ok(Segment {
            meta: SegmentMeta {
                id,
                size,
                entries,
                min_seq,
                max_seq,
            },
            name,
            file,
            format,
            index,
            index_heads,
            filter: fb[..fb.len() - 4].to_vec(),
            cache,
            stats,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    #[cfg(test)]
    pub(crate) fn block_count(&self) -> usize {
        self.index.len()
    }

    async fn block(&self, i: usize) -> Result<Arc<Block>> {
        use std::sync::atomic::Ordering::Relaxed;
        let ie = &self.index[i];
        let key = (self.meta.id, ie.offset);
        if let Some(c) = self.cache.cache.get(&key) {
            self.stats.cache_hits.fetch_add(1, Relaxed);
            return Ok(c.block);
        }
        self.stats.cache_misses.fetch_add(1, Relaxed);
        let raw = self
            .file
            .read_at(ie.offset, ie.len as usize)
            .await
            .map_err(Error::io("reading a segment block"))?;
        self.stats.bytes_read.fetch_add(raw.len() as u64, Relaxed);
        let block = decode_block(&raw, self.format)
            .map_err(|d| Error::corruption(&self.name, ie.offset, d))?;
        let block = Arc::new(block);
        self.cache.cache.insert(key, Cached::new(block.clone()));
        Ok(block)
    }

    /// Read and check every block (for verify).
    pub(crate) async fn verify_blocks(&self) -> Result<u64> {
        let mut n = 0u64;
        for i in 0..self.index.len() {
            let ie = &self.index[i];
            let raw = self
                .file
                .read_at(ie.offset, ie.len as usize)
                .await
                .map_err(Error::io("reading a segment block"))?;
            let b = decode_block(&raw, self.format)
                .map_err(|d| Error::corruption(&self.name, ie.offset, d))?;
            n += b.len() as u64;
        }
        if n != self.meta.entries {
            return Err(Error::corruption(
                &self.name,
                0,
                "entry count does not match footer",
            ));
        }
        Ok(n)
    }

    /// Index of the first block whose last position is at or after (key, seq).
    fn find_block(&self, key: &[u8], seq: u64) -> usize {
        self.index_heads.partition_point(key, |i| {
            let e = &self.index[i];
            Entry::cmp_pos(&e.last_key, e.last_seq, key, seq)
        })
    }

    /// Whether the filter allows `key` (counted in `filter_skips` when it does not).
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        let yes = may_contain(&self.filter, key);
        if !yes {
            self.stats
                .filter_skips
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        yes
    }

    /// [`Segment::get`] with the hash computed here.
    #[cfg(test)]
    pub(crate) async fn get_key(&self, key: &[u8], snapshot: u64) -> Result<Option<(u64, Op)>> {
        self.get(key, points::key_hash(key), snapshot).await
    }

    /// Newest version of `key` at or below `snapshot` in this segment; `hash` is
    /// `points::key_hash(key)`.
    pub(crate) async fn get(
        &self,
        key: &[u8],
        hash: u64,
        snapshot: u64,
    ) -> Result<Option<(u64, Op)>> {
        if snapshot < self.meta.min_seq {
            return Ok(None);
        }
        if !may_contain_hash(&self.filter, hash) {
            self.stats
                .filter_skips
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(None);
        }
        let bi = self.find_block(key, snapshot);
        if bi >= self.index.len() {
            return Ok(None);
        }
        let block = self.block(bi).await?;
        let indexed = block.points.get().is_some();
        let found = block.point(key, hash, snapshot);
        if !indexed && block.points.get().is_some_and(Option::is_some) {
            // The first point read built the block's point index: weigh the block again.
            let ie = &self.index[bi];
            let c = Cached::new(block.clone());
            self.cache.cache.insert((self.meta.id, ie.offset), c);
        }
        Ok(found.map(|h| (h.seq, block.op_at(&h))))
    }
}

fn parse_index(mut b: &[u8]) -> Option<Vec<IndexEntry>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let klen = u16::from_le_bytes(b.get(0..2)?.try_into().ok()?) as usize;
        let key = b.get(2..2 + klen)?;
        let rest = b.get(2 + klen..2 + klen + 20)?;
        out.push(IndexEntry {
            last_key: Arc::from(key),
            last_seq: u64::from_le_bytes(rest[0..8].try_into().ok()?),
            offset: u64::from_le_bytes(rest[8..16].try_into().ok()?),
            len: u32::from_le_bytes(rest[16..20].try_into().ok()?),
        });
        b = &b[2 + klen + 20..];
    }
    Some(out)
}

fn decode_block(raw: &[u8], format: EntryFormat) -> std::result::Result<Block, String> {
    if raw.len() < TRAILER_LEN {
        return Err("block shorter than its trailer".into());
    }
    let (body, tr) = raw.split_at(raw.len() - TRAILER_LEN);
    let mut h = crc32c::crc32c(body);
    h = crc32c::crc32c_append(h, &tr[0..5]);
    if h != u32_at(tr, 5) {
        return Err("block checksum mismatch".into());
    }
    let raw_len = u32_at(tr, 1) as usize;
    let data = match tr[0] {
        0 => body.to_vec(),
        1 => lz4_flex::block::decompress(body, raw_len)
            .map_err(|e| format!("block does not decompress: {e}"))?,
        c => return Err(format!("unknown block compression {c}")),
    };
    if data.len() != raw_len {
        return Err("block length mismatch".into());
    }
    Block::parse(data, format).map_err(|e| format!("block entries do not parse: {e}"))
}

/// Writes a new segment from entries given in order.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    file: Arc<dyn File>,
    id: u64,
    block_size: usize,
    /// Entry framing: always [`EntryFormat::Varint`] outside tests.
    format: EntryFormat,
    /// Encodes blocks inline (when there is no `pipe`).
    encoder: BlockEncoder,
    /// Encodes blocks on a helper thread ([`SegmentWriter::pipelined`]).
    pipe: Option<EncodePipe>,
    /// Raw blocks not yet handed to the pipe, and their bytes.
    batch: Vec<RawBlock>,
    batch_bytes: usize,
    block: Vec<u8>,

    out: Vec<u8>,
    written: u64,
    index: Vec<u8>,
    blocks: u32,
    bloom: BloomBuilder,
    entries: u64,
    min_seq: u64,
    max_seq: u64,
    /// The last entry added (the last of the open block when it is not empty), in a
    /// buffer reused from entry to entry.
    last_key: Vec<u8>,
    last_seq: u64,
    has_last: bool,
}

impl SegmentWriter {
    pub(crate) async fn create(
        backend: &dyn Backend,
        id: u64,
        block_size: usize,
        compress: bool,
    ) -> Result<SegmentWriter> {
        let file = backend
            .open(&file_name(id), OpenMode::CreateNew)
            .await
            .map_err(Error::io("creating a segment"))?;
        Ok(SegmentWriter {
            file,
            id,
            block_size,
            format: EntryFormat::Varint,
            encoder: BlockEncoder::new(compress),
            pipe: None,
            batch: Vec::new(),
            batch_bytes: 0,
            block: Vec::with_capacity(block_size + 1024),

            out: Vec::with_capacity(WRITE_BUFFER + block_size),
            written: 0,
            index: Vec::new(),
            blocks: 0,
            bloom: BloomBuilder::default(),
            entries: 0,
            min_seq: u64::MAX,
            max_seq: 0,
            last_key: Vec::new(),
            last_seq: 0,
            has_last: false,
        })
    }

    /// Compresses and checksums blocks on a helper thread while the caller adds entries
    /// (see `block_encode.rs`); the file's bytes are the same. Where no thread can be
    /// started (`wasm32`), blocks are encoded inline.
    pub(crate) fn pipelined(mut self) -> Self {
        self.pipe = EncodePipe::start(self.encoder.compresses());
        self
    }

    /// Writes format 1 (fixed-width entry framing), as builds before 2026-12-07 did: for
    /// tests that old files still read.
    #[cfg(test)]
    pub(crate) fn fixed_format(mut self) -> Self {
        self.format = EntryFormat::Fixed;
        self
    }

    fn has_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    /// Hands the batch of raw blocks to the pipe and takes in the previous batch's
    /// encoding (with `last`, also waits for this batch's).
    fn swap_batch(&mut self, last: bool) {
        if let Some(pipe) = self.pipe.as_mut() {
            let batch = std::mem::take(&mut self.batch);
            self.batch_bytes = 0;
            let mut done = Vec::with_capacity(2);
            if !batch.is_empty() {
                done.extend(pipe.swap(batch));
            }
            if last {
                done.extend(pipe.take());
            }
            for d in done {
                self.append_encoded(d);
            }
        }
    }

    /// Appends encoded blocks to the output and indexes them.
    fn append_encoded(&mut self, done: Encoded) {
        let mut offset = self.written + self.out.len() as u64;
        for (len, last_key, last_seq) in &done.blocks {
            self.index_block(offset, *len, last_key, *last_seq);
            offset += u64::from(*len);
        }
        if self.out.is_empty() {
            self.out = done.bytes;
        } else {
            self.out.extend_from_slice(&done.bytes);
        }
    }

    fn index_block(&mut self, offset: u64, len: u32, last_key: &[u8], last_seq: u64) {
        self.index
            .extend_from_slice(&(last_key.len() as u16).to_le_bytes());
        self.index.extend_from_slice(last_key);
        self.index.extend_from_slice(&last_seq.to_le_bytes());
        self.index.extend_from_slice(&offset.to_le_bytes());
        self.index.extend_from_slice(&len.to_le_bytes());
        self.blocks += 1;
    }

    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Add the next entry; entries must come in strictly increasing position order.
    /// Adds an entry and writes the buffered blocks out when they fill the write buffer.
    #[cfg(test)]
    pub(crate) async fn add(&mut self, e: &Entry) -> Result<()> {
        self.push(e.as_ref());
        self.write_full().await
    }

    /// Writes the buffered blocks out once they fill the write buffer (call after `push`).
    pub(crate) async fn write_full(&mut self) -> Result<()> {
        if self.batch_bytes >= WRITE_BUFFER {
            self.swap_batch(false);
        }
        if self.out.len() >= WRITE_BUFFER {
            self.flush_out().await?;
        }
        Ok(())
    }

    /// Adds an entry to the buffered blocks (entries must come in position order). Nothing
    /// is written until [`SegmentWriter::write_full`] or [`SegmentWriter::finish`].
    pub(crate) fn push(&mut self, e: EntryRef<'_>) {
        if self.has_last {
            assert!(
                Entry::cmp_pos(&self.last_key, self.last_seq, e.key, e.seq).is_lt(),
                "segment entries out of order"
            );
        }
        assert!(
            e.key.len() <= u16::MAX as usize,
            "key too long for a segment"
        );
        // Close the current block first if this entry would push it past the target size, so
        // a large value gets a block of its own instead of making its neighbours' block
        // expensive to read.
        // (The delete flag takes the sequence's low bit in format 2.)
        assert!(e.seq < 1 << 63, "sequence out of range for a segment");
        let entry_len = self.format.entry_len(&e);
        if !self.block.is_empty() && self.block.len() + entry_len > self.block_size {
            self.finish_block();
        }
        let start = self.block.len();
        self.format.encode(&e, &mut self.block);
        debug_assert_eq!(
            self.block.len() - start,
            entry_len,
            "entry_len and encode disagree"
        );
        // Index entries (`02 index-id body entity-id`) also put their key without the entity
        // id in the filter, so an exact-value index lookup can skip segments without it.
        if e.key.first() == Some(&crate::keys::TAG_INDEX) && e.key.len() >= 5 + 1 + 16 {
            let prefix = &e.key[..e.key.len() - 16];
            let last_prefix = self
                .has_last
                .then(|| self.last_key.len().checked_sub(16))
                .flatten()
                .map(|n| &self.last_key[..n]);
            if last_prefix != Some(prefix) {
                self.bloom.add(prefix);
            }
        }
        self.bloom.add(e.key);
        self.entries += 1;
        self.min_seq = self.min_seq.min(e.seq);
        self.max_seq = self.max_seq.max(e.seq);
        self.last_key.clear();
        self.last_key.extend_from_slice(e.key);
        self.last_seq = e.seq;
        self.has_last = true;
        if self.block.len() >= self.block_size {
            self.finish_block();
        }
    }

    fn finish_block(&mut self) {
        // The block's last entry is the last one added.
        if self.block.is_empty() {
            return;
        }
        if self.has_pipe() {
            let data =
                std::mem::replace(&mut self.block, Vec::with_capacity(self.block_size + 1024));
            self.batch_bytes += data.len();
            self.batch.push(RawBlock {
                data,
                last_key: self.last_key.clone(),
                last_seq: self.last_seq,
            });
            return;
        }
        let offset = self.written + self.out.len() as u64;
        let len = self.encoder.encode(&self.block, &mut self.out);
        let last_key = std::mem::take(&mut self.last_key);
        self.index_block(offset, len, &last_key, self.last_seq);
        self.last_key = last_key;
        self.block.clear();
    }

    async fn flush_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        // With a pipe, the next output is a batch the helper encoded: no buffer to reserve.
        let next = if self.has_pipe() {
            Vec::new()
        } else {
            Vec::with_capacity(WRITE_BUFFER + self.block_size)
        };
        let buf = std::mem::replace(&mut self.out, next);
        let n = buf.len() as u64;
        self.file
            .write_at(self.written, buf)
            .await
            .map_err(Error::io("writing a segment"))?;
        self.written += n;
        Ok(())
    }

    /// Write index, filter and footer, and sync. The caller records the segment in the
    /// manifest afterwards (and syncs the directory).
    pub(crate) async fn finish(mut self) -> Result<SegmentMeta> {
        self.finish_block();
        self.swap_batch(true);
        let index_off = self.written + self.out.len() as u64;
        let mut index = std::mem::take(&mut self.index);
        let icrc = crc32c::crc32c(&index);
        index.extend_from_slice(&icrc.to_le_bytes());
        let mut filter = self.bloom.finish();
        let fcrc = crc32c::crc32c(&filter);
        filter.extend_from_slice(&fcrc.to_le_bytes());
        let mut f = [0u8; FOOTER_LEN];
        f[0..8].copy_from_slice(&MAGIC);
        f[8..12].copy_from_slice(&self.format.version().to_le_bytes());
        f[16..24].copy_from_slice(&index_off.to_le_bytes());
        f[24..28].copy_from_slice(&(index.len() as u32).to_le_bytes());
        f[28..32].copy_from_slice(&(filter.len() as u32).to_le_bytes());
        f[32..40].copy_from_slice(&self.entries.to_le_bytes());
        let min_seq = if self.entries == 0 { 0 } else { self.min_seq };
        f[40..48].copy_from_slice(&min_seq.to_le_bytes());
        f[48..56].copy_from_slice(&self.max_seq.to_le_bytes());
        f[56..60].copy_from_slice(&self.blocks.to_le_bytes());
        let crc = crc32c::crc32c(&f[0..60]);
        f[60..64].copy_from_slice(&crc.to_le_bytes());
        self.out.extend_from_slice(&index);
        self.out.extend_from_slice(&filter);
        self.out.extend_from_slice(&f);
        self.flush_out().await?;
        self.file
            .sync_data()
            .await
            .map_err(Error::io("syncing a segment"))?;
        Ok(SegmentMeta {
            id: self.id,
            size: self.written,
            entries: self.entries,
            min_seq,
            max_seq: self.max_seq,
        })
    }
}

/// A value read in place: a slice of a decoded block, which it keeps alive. Scans hand these
/// out instead of copying every value into an allocation of its own.
#[derive(Clone)]
pub(crate) struct BlockSlice {
    block: Arc<Block>,
    start: u32,
    len: u32,
}

impl BlockSlice {
    pub(crate) fn as_slice(&self) -> &[u8] {
        let start = self.start as usize;
        &self.block.data[start..start + self.len as usize]
    }

    /// Whether two slices share one block.
    pub(crate) fn same_block(&self, other: &BlockSlice) -> bool {
        Arc::ptr_eq(&self.block, &other.block)
    }

    /// Bytes of the block this slice keeps alive.
    pub(crate) fn block_bytes(&self) -> usize {
        self.block.data.len()
    }
}

impl std::fmt::Debug for BlockSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSlice")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("block_bytes", &self.block.data.len())
            .finish()
    }
}

/// A forward cursor over one segment, from a start position to an optional end key.
#[derive(Debug)]
pub(crate) struct SegCursor {
    seg: Arc<Segment>,
    block_idx: usize,
    block: Option<Arc<Block>>,
    pos: usize,
    seek: Option<(Vec<u8>, u64)>,
    end: Option<Arc<[u8]>>,
}

impl SegCursor {
    pub(crate) fn new(
        seg: Arc<Segment>,
        from: &[u8],
        from_seq: u64,
        end: Option<Arc<[u8]>>,
    ) -> Self {
        let block_idx = seg.find_block(from, from_seq);
        Self {
            seg,
            block_idx,
            block: None,
            pos: 0,
            seek: Some((from.to_vec(), from_seq)),
            end,
        }
    }

    /// Makes the current position readable by [`SegCursor::current`]: loads its block, and
    /// moves on to the next block at the end of one. After it, `current` is `None` only at
    /// the end of the range. Merges call it after every [`SegCursor::advance`] and
    /// [`SegCursor::take`].
    pub(crate) async fn ready(&mut self) -> Result<()> {
        loop {
            if self.block_idx >= self.seg.index.len() {
                self.block = None;
                return Ok(());
            }
            let block = match &self.block {
                Some(b) => b,
                None => {
                    let b = self.seg.block(self.block_idx).await?;
                    self.pos = match self.seek.take() {
                        Some((k, s)) => b.seek(&k, s),
                        None => 0,
                    };
                    self.block.insert(b)
                }
            };
            if self.pos >= block.len() {
                self.block = None;
                self.block_idx += 1;
                continue;
            }
            let (k, _) = block.key_seq(self.pos);
            if let Some(end) = &self.end
                && k >= &end[..]
            {
                self.block_idx = usize::MAX;
                self.block = None;
            }
            return Ok(());
        }
    }

    /// The key and sequence at the current position, borrowed from the block (nothing is
    /// copied); `None` at the end of the range. Valid after [`SegCursor::ready`].
    pub(crate) fn current(&self) -> Option<(&[u8], u64)> {
        let b = self.block.as_ref()?;
        (self.pos < b.len()).then(|| b.key_seq(self.pos))
    }

    /// The value at the current position (a put's bytes are copied out of the block).
    pub(crate) fn current_op(&self) -> Option<Op> {
        let b = self.block.as_ref()?;
        (self.pos < b.len()).then(|| b.op(self.pos))
    }

    /// The value at the current position in place (`Some(None)` for a delete).
    pub(crate) fn current_value(&self) -> Option<Option<BlockSlice>> {
        let b = self.block.as_ref()?;
        (self.pos < b.len()).then(|| {
            b.value_range(self.pos).map(|(start, len)| BlockSlice {
                block: b.clone(),
                // Blocks are far smaller than 4 GiB (their length is a u32 on disk).
                start: start as u32,
                len: len as u32,
            })
        })
    }

    /// Steps past the current position; call [`SegCursor::ready`] before reading again.
    pub(crate) fn advance(&mut self) {
        self.pos += 1;
    }

    /// The entry at the current position, borrowed from the block. Valid after
    /// [`SegCursor::ready`].
    pub(crate) fn current_ref(&self) -> Option<EntryRef<'_>> {
        let b = self.block.as_ref()?;
        (self.pos < b.len()).then(|| b.entry_ref(self.pos))
    }

    /// The entry at the current position, copied out, and steps past it. Valid after
    /// [`SegCursor::ready`].
    #[cfg(test)]
    pub(crate) fn take(&mut self) -> Option<Entry> {
        let b = self.block.as_ref()?;
        let e = (self.pos < b.len()).then(|| b.entry(self.pos))?;
        self.pos += 1;
        Some(e)
    }

    /// The next entry, or `None` at the end of the range.
    #[cfg(test)]
    pub(crate) async fn next(&mut self) -> Result<Option<Entry>> {
        self.ready().await?;
        Ok(self.take())
    }
}

/// A backward cursor over one segment: entries before a key (exclusive), down to a lower key
/// bound (inclusive), in descending position order.
#[derive(Debug)]
pub(crate) struct SegRevCursor {
    seg: Arc<Segment>,
    /// The block being read, and how many of its entries are still to return (from the end).
    block_idx: usize,
    block: Option<Arc<Block>>,
    pos: usize,
    before: Option<Vec<u8>>,
    lower: Arc<[u8]>,
    done: bool,
}

impl SegRevCursor {
    pub(crate) fn new(seg: Arc<Segment>, lower: Arc<[u8]>, before: &[u8]) -> Self {
        // The block holding the first position of `before`, or past the end.
        let block_idx = seg
            .find_block(before, u64::MAX)
            .min(seg.index.len().saturating_sub(1));
        Self {
            done: seg.index.is_empty(),
            seg,
            block_idx,
            block: None,
            pos: 0,
            before: Some(before.to_vec()),
            lower,
        }
    }

    /// The previous entry, or `None` below the range.
    pub(crate) async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let block = match &self.block {
                Some(b) => b.clone(),
                None => {
                    let b = self.seg.block(self.block_idx).await?;
                    self.pos = match self.before.take() {
                        Some(k) => b.seek(&k, u64::MAX),
                        None => b.len(),
                    };
                    self.block = Some(b.clone());
                    b
                }
            };
            if self.pos == 0 {
                self.block = None;
                if self.block_idx == 0 {
                    self.done = true;
                    return Ok(None);
                }
                self.block_idx -= 1;
                continue;
            }
            self.pos -= 1;
            let (k, _) = block.key_seq(self.pos);
            if k < &self.lower[..] {
                self.done = true;
                return Ok(None);
            }
            return Ok(Some(block.entry(self.pos)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use entidb_io::MemoryBackend;
    use futures_executor::block_on;

    /// `n` incompressible bytes from a xorshift state.
    fn noise(x: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                *x as u8
            })
            .collect()
    }

    fn e(k: &[u8], seq: u64, v: Option<&[u8]>) -> Entry {
        Entry {
            key: Arc::from(k),
            seq,
            op: match v {
                Some(v) => Op::Put(Arc::from(v)),
                None => Op::Delete,
            },
        }
    }

    #[test]
    fn write_open_get_scan() {
        block_on(async {
            let b = MemoryBackend::new();
            let mut all = vec![];
            for i in 0u32..2000 {
                let k = i.to_be_bytes();
                all.push(e(&k, 10 + i as u64 * 2 + 1, None));
                all.push(e(&k, 10 + i as u64 * 2, Some(&[i as u8; 40])));
            }
            // A sequence and a value length that take several varint bytes.
            all.push(e(&u32::MAX.to_be_bytes(), (1 << 62) + 5, Some(&[7; 300])));
            let mut sizes = vec![];
            // Format 2, and format 1 as older builds wrote it: both read the same.
            for (id, fixed) in [(1, false), (2, true)] {
                let mut w = SegmentWriter::create(&b, id, 256, true).await.unwrap();
                if fixed {
                    w = w.fixed_format();
                }
                for x in &all {
                    w.add(x).await.unwrap();
                }
                let meta = w.finish().await.unwrap();
                assert_eq!(meta.entries, 4001);
                sizes.push(meta.size);
                let cache = Arc::new(BlockCache::new(1 << 20));
                let seg = Arc::new(Segment::open(&b, id, cache, Arc::default()).await.unwrap());
                let want = if fixed {
                    EntryFormat::Fixed
                } else {
                    EntryFormat::Varint
                };
                assert_eq!(seg.format, want);
                assert!(seg.block_count() > 10);
                let k = 77u32.to_be_bytes();
                assert_eq!(seg.get_key(&k, 9).await.unwrap(), None);
                assert_eq!(
                    seg.get_key(&k, 10 + 154).await.unwrap(),
                    Some((164, Op::Put(Arc::from(&[77u8; 40][..]))))
                );
                assert_eq!(
                    seg.get_key(&k, u64::MAX).await.unwrap(),
                    Some((165, Op::Delete))
                );
                assert_eq!(
                    seg.get_key(&5000u32.to_be_bytes(), u64::MAX).await.unwrap(),
                    None
                );
                assert_eq!(
                    seg.get_key(&u32::MAX.to_be_bytes(), u64::MAX)
                        .await
                        .unwrap(),
                    Some(((1 << 62) + 5, Op::Put(Arc::from(&[7u8; 300][..]))))
                );
                let mut c = SegCursor::new(
                    seg.clone(),
                    &k,
                    u64::MAX,
                    Some(Arc::from(&100u32.to_be_bytes()[..])),
                );
                let mut n = 0;
                while let Some(x) = c.next().await.unwrap() {
                    assert_eq!(x, all[77 * 2 + n]);
                    n += 1;
                }
                assert_eq!(n, (100 - 77) * 2);
                assert_eq!(seg.verify_blocks().await.unwrap(), 4001);
            }
            // Blocks are compressed here, so the saving shows less than the framing's
            // 8 bytes per entry; it must still show.
            assert!(
                sizes[0] < sizes[1],
                "format 2 {} bytes, format 1 {}",
                sizes[0],
                sizes[1]
            );
        });
    }

    /// Format 2 framing that does not add up is reported, never read past.
    #[test]
    fn bad_varint_framing_is_refused() {
        let mut good = vec![];
        EntryFormat::Varint.encode(
            &EntryRef {
                key: b"key",
                seq: 300,
                value: Some(&[1; 200]),
            },
            &mut good,
        );
        EntryFormat::Varint.encode(
            &EntryRef {
                key: b"kez",
                seq: 9,
                value: None,
            },
            &mut good,
        );
        let b = Block::parse(good.clone(), EntryFormat::Varint).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.entry_ref(0).value, Some(&[1u8; 200][..]));
        assert_eq!((b.key_seq(1), b.op(1)), ((&b"kez"[..], 9), Op::Delete));
        for cut in 1..good.len() {
            if cut == good.len() - 5 {
                continue; // exactly after the first entry: one whole entry
            }
            assert!(
                Block::parse(good[..cut].to_vec(), EntryFormat::Varint).is_err(),
                "cut at {cut}"
            );
        }
        // A value length beyond the block, and a key length beyond u16.
        let mut long = good.clone();
        long[1 + 3 + 2] = 0xFF;
        assert!(Block::parse(long, EntryFormat::Varint).is_err());
        let mut key = vec![];
        varint::put(&mut key, 70_000);
        key.extend(vec![0; 70_000]);
        key.push(3); // seq 1, delete: only the key length is wrong
        assert!(Block::parse(key, EntryFormat::Varint).is_err());
        // The longest key is fine; a sequence varint of 11 bytes is not.
        let mut max = vec![];
        EntryFormat::Varint.encode(
            &EntryRef {
                key: &[9; 65_535],
                seq: 1,
                value: None,
            },
            &mut max,
        );
        let b = Block::parse(max.clone(), EntryFormat::Varint).unwrap();
        assert_eq!(b.key_seq(0).0.len(), 65_535);
        let mut over = max[..3 + 65_535].to_vec();
        over.extend([0x80; 10]);
        over.push(0);
        assert!(Block::parse(over, EntryFormat::Varint).is_err());
        // Format 1: a sequence with its top bit set is refused (format 2 could not hold it).
        let mut old = vec![];
        let e = EntryRef {
            key: b"k",
            seq: 1 << 63,
            value: None,
        };
        EntryFormat::Fixed.encode(&e, &mut old);
        assert!(Block::parse(old, EntryFormat::Fixed).is_err());
    }

    proptest::proptest! {
        /// Whatever bytes a block holds, either they do not parse, or every entry reads
        /// without a panic, in either format.
        #[test]
        fn any_block_that_parses_reads(
            bytes in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 2, 3, 0x7F, 0x80, 0xFF]), 0..64),
            fixed: bool,
        ) {
            let format = if fixed { EntryFormat::Fixed } else { EntryFormat::Varint };
            if let Ok(b) = Block::parse(bytes, format) {
                for i in 0..b.len() {
                    let e = b.entry_ref(i);
                    let _ = (b.entry(i), b.op(i), b.key_seq(i), e.key.len());
                }
                let _ = b.seek(b"\x01", 5);
                let _ = b.point(b"\x01", points::key_hash(b"\x01"), 5);
            }
        }

        /// Point reads (the point index, and the binary search it falls back to) agree with
        /// a model: for any key and snapshot, the newest version at or below the snapshot.
        /// Keys carry several versions, often split across blocks (small blocks), with
        /// deletes, an empty value, and a key longer than the shared prefix's 8-byte head.
        #[test]
        fn point_reads_match_a_model(
            versions in proptest::collection::btree_map(
                (0u8..40, 1u64..60),
                proptest::option::of(0usize..90),
                1..200,
            ),
            block_size in proptest::sample::select(vec![64usize, 300, 4096]),
            fixed: bool,
        ) {
            let key = |k: u8| -> Vec<u8> {
                let mut v = b"\x01coll".to_vec();
                v.extend(std::iter::repeat_n(k, 1 + usize::from(k % 13)));
                v
            };
            // Segment order: key ascending, sequence descending.
            let mut entries: Vec<Entry> = versions
                .iter()
                .map(|(&(k, seq), v)| e(&key(k), seq, v.map(|n| vec![k; n]).as_deref()))
                .collect();
            entries.sort_by(|a, b| Entry::cmp_pos(&a.key, a.seq, &b.key, b.seq));
            block_on(async {
                let b = MemoryBackend::new();
                let mut w = SegmentWriter::create(&b, 1, block_size, true).await.unwrap();
                if fixed {
                    w = w.fixed_format();
                }
                for x in &entries {
                    w.add(x).await.unwrap();
                }
                w.finish().await.unwrap();
                let seg = Segment::open(&b, 1, Arc::new(BlockCache::new(1 << 20)), Arc::default())
                    .await
                    .unwrap();
                for k in 0u8..42 {
                    for snap in [0u64, 1, 2, 7, 20, 30, 45, 59, 60, u64::MAX] {
                        let want = versions
                            .range((k, 0)..=(k, snap.min(59)))
                            .next_back()
                            .map(|(&(_, seq), v)| {
                                (seq, match v {
                                    Some(n) => Op::Put(Arc::from(vec![k; *n])),
                                    None => Op::Delete,
                                })
                            });
                        let got = seg.get_key(&key(k), snap).await.unwrap();
                        assert_eq!(got, want, "key {k} at snapshot {snap}");
                    }
                }
            });
        }
    }

    /// A block with entries past 64 KiB (a `block_size` above 64 KiB) is read without a
    /// point index; one of the default size gets one. Either way every key reads back, and
    /// the cache weighs each block with the index it holds (the first point read inserts the
    /// block again).
    #[test]
    fn blocks_past_64_kib_are_read_without_a_point_index() {
        block_on(async {
            for (block_size, indexed) in [(4096usize, true), (256 << 10, false)] {
                let b = MemoryBackend::new();
                let mut w = SegmentWriter::create(&b, 1, block_size, true)
                    .await
                    .unwrap();
                let mut x = 7u64;
                let vals: Vec<Vec<u8>> = (0..2000).map(|_| noise(&mut x, 100)).collect();
                for (i, v) in vals.iter().enumerate() {
                    w.add(&e(&(i as u32).to_be_bytes(), 3, Some(v)))
                        .await
                        .unwrap();
                }
                w.finish().await.unwrap();
                let cache = Arc::new(BlockCache::new(64 << 20));
                let seg = Segment::open(&b, 1, cache.clone(), Arc::default())
                    .await
                    .unwrap();
                for i in (0..2000u32).step_by(7) {
                    assert_eq!(
                        seg.get_key(&i.to_be_bytes(), 5).await.unwrap(),
                        Some((3, Op::Put(Arc::from(&vals[i as usize][..])))),
                        "key {i}"
                    );
                }
                assert_eq!(seg.get_key(&5000u32.to_be_bytes(), 5).await.unwrap(), None);
                let mut weight = 0;
                for bi in 0..seg.block_count() {
                    let block = seg.block(bi).await.unwrap();
                    assert_eq!(
                        block.points.get().map(Option::is_some),
                        Some(indexed),
                        "block {bi} of {block_size}-byte blocks"
                    );
                    weight += Cached::new(block).weight;
                }
                if !indexed {
                    assert_eq!(seg.block_count(), 1);
                }
                assert_eq!(cache.cache.weight(), weight);
            }
        });
    }

    /// A writer that encodes its blocks on a helper thread writes the same file as one that
    /// encodes inline: several batches of blocks, compressible and random data in runs (so
    /// the give-up state carries from batch to batch), a large value, a delete.
    #[test]
    fn a_pipelined_writer_writes_the_same_bytes() {
        block_on(async {
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let mut all = vec![];
            for i in 0u32..30_000 {
                let v: Option<Vec<u8>> = match (i / 3000) % 3 {
                    _ if i == 12_345 => None,
                    _ if i == 20_000 => Some(vec![3u8; 3 << 20]),
                    0 => Some(noise(&mut x, 150)),
                    _ => Some(format!("value {i} of a compressible run").into_bytes()),
                };
                all.push(e(&i.to_be_bytes(), 5, v.as_deref()));
            }
            let mut files = vec![];
            for pipelined in [false, true] {
                let b = MemoryBackend::new();
                let mut w = SegmentWriter::create(&b, 1, 4096, true).await.unwrap();
                if pipelined {
                    w = w.pipelined();
                    assert!(w.has_pipe());
                }
                for x in &all {
                    w.add(x).await.unwrap();
                }
                let meta = w.finish().await.unwrap();
                assert!(meta.size > 3 * WRITE_BUFFER as u64, "{}", meta.size);
                let f = b.open(&file_name(1), OpenMode::Existing).await.unwrap();
                files.push(f.read_at(0, meta.size as usize).await.unwrap());
                let seg = Arc::new(
                    Segment::open(&b, 1, Arc::new(BlockCache::new(1 << 20)), Arc::default())
                        .await
                        .unwrap(),
                );
                let mut c = SegCursor::new(seg, &[], u64::MAX, None);
                let mut n = 0;
                while let Some(got) = c.next().await.unwrap() {
                    assert_eq!(got, all[n]);
                    n += 1;
                }
                assert_eq!(n, all.len());
            }
            assert!(files[0] == files[1], "pipelined and inline files differ");
            // A writer dropped half way (an error elsewhere) stops its helper.
            let b = MemoryBackend::new();
            let mut w = SegmentWriter::create(&b, 2, 4096, true)
                .await
                .unwrap()
                .pipelined();
            for x in &all[..10_000] {
                w.add(x).await.unwrap();
            }
            drop(w);
        });
    }

    /// Regression (found profiling point reads): a transaction's large change-feed record
    /// was appended to the block holding its last entities, so reading any of them read and
    /// decoded megabytes and thrashed the block cache.
    #[test]
    fn a_large_value_gets_its_own_block() {
        block_on(async {
            let b = MemoryBackend::new();
            let mut w = SegmentWriter::create(&b, 1, 4096, false).await.unwrap();
            for i in 0u32..10 {
                w.add(&e(&i.to_be_bytes(), 1, Some(b"small")))
                    .await
                    .unwrap();
            }
            w.add(&e(b"zz", 1, Some(&vec![1u8; 1 << 20])))
                .await
                .unwrap();
            w.finish().await.unwrap();
            let seg = Segment::open(&b, 1, Arc::new(BlockCache::new(1 << 20)), Arc::default())
                .await
                .unwrap();
            assert_eq!(seg.block_count(), 2);
            assert!(seg.index[0].len < 4096, "small entries share a small block");
            assert_eq!(
                seg.get_key(&3u32.to_be_bytes(), 5).await.unwrap(),
                Some((1, Op::Put(Arc::from(&b"small"[..]))))
            );
        });
    }

    /// The writer stops trying to compress a run of incompressible blocks, and starts again
    /// when the data becomes compressible; every entry reads back either way.
    #[test]
    fn compression_gives_up_on_random_blocks_and_resumes() {
        block_on(async {
            let b = MemoryBackend::new();
            let mut w = SegmentWriter::create(&b, 1, 1024, true).await.unwrap();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut all = vec![];
            for i in 0u32..1000 {
                let v: Vec<u8> = if i < 400 {
                    noise(&mut x, 100)
                } else {
                    vec![7u8; 100]
                };
                all.push(e(&i.to_be_bytes(), 1, Some(&v)));
            }
            for x in &all {
                w.add(x).await.unwrap();
            }
            w.finish().await.unwrap();
            let seg = Arc::new(
                Segment::open(&b, 1, Arc::new(BlockCache::new(1 << 20)), Arc::default())
                    .await
                    .unwrap(),
            );
            let mut c = SegCursor::new(seg.clone(), &[], u64::MAX, None);
            let mut n = 0;
            while let Some(got) = c.next().await.unwrap() {
                assert_eq!(got, all[n]);
                n += 1;
            }
            assert_eq!(n, all.len());
            // Each block's trailer says whether it is compressed.
            let f = b.open(&file_name(1), OpenMode::Existing).await.unwrap();
            let mut compressed = vec![];
            for ie in &seg.index {
                let end = ie.offset + u64::from(ie.len);
                let tr = f.read_at(end - TRAILER_LEN as u64, 1).await.unwrap();
                let last = u32::from_be_bytes(ie.last_key[..4].try_into().unwrap());
                compressed.push((last, tr[0] == 1));
            }
            assert!(
                compressed.iter().all(|&(k, c)| k >= 400 || !c),
                "random blocks stay uncompressed"
            );
            let first_zip = compressed.iter().position(|&(_, c)| c).expect("resumed");
            assert!(
                compressed[..first_zip].iter().any(|&(k, _)| k > 400),
                "compressible blocks right after the random run were not tried: {compressed:?}"
            );
            assert!(
                compressed[first_zip..].iter().all(|&(_, c)| c),
                "once compressing again, it keeps going"
            );
        });
    }

    #[test]
    fn damaged_blocks_are_reported() {
        block_on(async {
            let b = entidb_io::SimBackend::new(1, Default::default());
            let mut w = SegmentWriter::create(&b, 1, 128, false).await.unwrap();
            for i in 0u32..100 {
                w.add(&e(&i.to_be_bytes(), 1, Some(b"value")))
                    .await
                    .unwrap();
            }
            w.finish().await.unwrap();
            b.corrupt(&file_name(1), 10, 0x01).unwrap();
            let seg = Segment::open(&b, 1, Arc::new(BlockCache::new(1 << 20)), Arc::default())
                .await
                .unwrap();
            let err = seg.get_key(&0u32.to_be_bytes(), 5).await.unwrap_err();
            assert!(err.is_corruption(), "{err}");
            assert!(seg.verify_blocks().await.unwrap_err().is_corruption());
        });
    }
}
