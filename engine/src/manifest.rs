//! The manifest: which segments are live, which WAL files must be replayed, and the counters
//! that must survive a restart.
//!
//! ## File layout (`MANIFEST`)
//!
//! ```text
//! 0  magic "ENTIMAN\0"          8  format version u32 LE    12 body length u32 LE
//! 16 body:
//!      next_file u64            next file number for WAL files and segments
//!      flushed_seq u64          every transaction <= this is in the segments
//!      wal_min u64              oldest WAL file that may hold unflushed transactions
//!      segment_count u32
//!      per segment (newest first): id u64 | size u64 | entries u64 | min_seq u64 | max_seq u64
//! end: crc32c(everything before) u32 LE
//! ```
//!
//! Replacement is atomic: write `MANIFEST.tmp`, `sync_data`, rename over `MANIFEST`,
//! `sync_dir`. A crash leaves the old or the new manifest, never a mix; a stray
//! `MANIFEST.tmp` is removed at open.

use entidb_io::{Backend, OpenMode};

use crate::error::{Error, Result};
use crate::segment::SegmentMeta;

pub(crate) const NAME: &str = "MANIFEST";
pub(crate) const TMP_NAME: &str = "MANIFEST.tmp";
const MAGIC: [u8; 8] = *b"ENTIMAN\0";
const FORMAT_VERSION: u32 = 1;
const SEG_RECORD: usize = 40;

/// The decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub next_file: u64,
    pub flushed_seq: u64,
    pub wal_min: u64,
    /// Newest first.
    pub segments: Vec<SegmentMeta>,
}

impl Manifest {
    pub(crate) fn new() -> Self {
        Manifest {
            next_file: 2,
            flushed_seq: 0,
            wal_min: 1,
            segments: Vec::new(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(28 + self.segments.len() * SEG_RECORD);
        body.extend_from_slice(&self.next_file.to_le_bytes());
        body.extend_from_slice(&self.flushed_seq.to_le_bytes());
        body.extend_from_slice(&self.wal_min.to_le_bytes());
        body.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            for v in [s.id, s.size, s.entries, s.min_seq, s.max_seq] {
                body.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(16 + body.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Manifest> {
        let bad = |d: &str| Error::corruption(NAME, 0, d.to_owned());
        if b.len() < 20 || b[0..8] != MAGIC {
            return Err(bad("not a manifest (bad magic or too short)"));
        }
        let crc_at = b.len() - 4;
        if crc32c::crc32c(&b[..crc_at]).to_le_bytes() != b[crc_at..] {
            return Err(bad("manifest checksum mismatch"));
        }
        let u32at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let version = u32at(8);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                file: NAME.to_owned(),
                detail: format!("manifest format {version}, this build reads {FORMAT_VERSION}"),
            });
        }
        let body_len = u32at(12) as usize;
        if 16 + body_len != crc_at || body_len < 28 {
            return Err(bad("manifest length mismatch"));
        }
        let n = u32at(16 + 24) as usize;
        if body_len != 28 + n * SEG_RECORD {
            return Err(bad("manifest segment count mismatch"));
        }
        let mut segments = Vec::with_capacity(n);
        for i in 0..n {
            let p = 16 + 28 + i * SEG_RECORD;
            segments.push(SegmentMeta {
                id: u64at(p),
                size: u64at(p + 8),
                entries: u64at(p + 16),
                min_seq: u64at(p + 24),
                max_seq: u64at(p + 32),
            });
        }
        // Sequences stay below 2^63 (a segment entry keeps the delete flag in the low bit of
        // `seq << 1`): a manifest beyond that was not written by this engine.
        if u64at(24) >= 1 << 63 || segments.iter().any(|s| s.max_seq >= 1 << 63) {
            return Err(bad("manifest sequence out of range"));
        }
        Ok(Manifest {
            next_file: u64at(16),
            flushed_seq: u64at(24),
            wal_min: u64at(32),
            segments,
        })
    }

    /// Read the manifest; `Ok(None)` if there is none (a new database).
    pub(crate) async fn load(backend: &dyn Backend) -> Result<Option<Manifest>> {
        if !backend
            .exists(NAME)
            .await
            .map_err(Error::io("looking for the manifest"))?
        {
            return Ok(None);
        }
        let f = backend
            .open(NAME, OpenMode::Existing)
            .await
            .map_err(Error::io("opening the manifest"))?;
        let len = f.len().await.map_err(Error::io("reading the manifest"))?;
        let bytes = f
            .read_at(0, len as usize)
            .await
            .map_err(Error::io("reading the manifest"))?;
        Manifest::decode(&bytes).map(Some)
    }

    /// Atomically replace the manifest with this one.
    pub(crate) async fn store(&self, backend: &dyn Backend) -> Result<()> {
        let bytes = self.encode();
        let f = backend
            .open(TMP_NAME, OpenMode::Create)
            .await
            .map_err(Error::io("writing the manifest"))?;
        f.set_len(0)
            .await
            .map_err(Error::io("writing the manifest"))?;
        f.write_at(0, bytes)
            .await
            .map_err(Error::io("writing the manifest"))?;
        f.sync_data()
            .await
            .map_err(Error::io("syncing the manifest"))?;
        drop(f);
        backend
            .rename(TMP_NAME, NAME)
            .await
            .map_err(Error::io("installing the manifest"))?;
        backend
            .sync_dir("")
            .await
            .map_err(Error::io("syncing the database directory"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let m = Manifest {
            next_file: 9,
            flushed_seq: 100,
            wal_min: 7,
            segments: vec![SegmentMeta {
                id: 5,
                size: 4096,
                entries: 10,
                min_seq: 1,
                max_seq: 100,
            }],
        };
        let b = m.encode();
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Manifest::decode(&c).is_err(), "flip at {i} accepted");
        }
        assert!(Manifest::decode(&b[..b.len() - 1]).is_err());
    }
}
