//! Turning a segment's raw data blocks into the bytes stored on disk (compression and
//! trailer, see `segment.rs` for the layout), inline or on a helper thread.
//!
//! A bulk load ([`Inner::ingest`](crate::db::Inner)) writes one segment of tens of
//! megabytes from the committing thread; compressing its blocks was a fifth of that
//! thread's time for compressible documents. [`EncodePipe`] moves the compression and the
//! checksums to a helper thread that works on one batch of blocks while the writer fills
//! the next, so the writer's thread only copies entries. The helper encodes the blocks in
//! order with the same [`BlockEncoder`] state machine as the inline path, so both produce
//! the same bytes.
//!
//! Bounds: at most one batch is with the helper, one is being filled and one encoded batch
//! waits to be written, each about [`WRITE_BUFFER`](crate::segment) bytes; the writer waits
//! for the helper's batch before handing it the next. That wait blocks the writer's thread
//! (an executor's worker, under tokio) for at most the encoding of one batch, about a
//! millisecond: the same CPU work the inline path does on that thread.

/// Trailer of a data block: compression u8, raw length u32, crc32c u32.
pub(crate) const TRAILER_LEN: usize = 9;

/// A block encoder stops trying to compress after this many blocks in a row that did not
/// shrink by 1/8, and then tries only every [`COMPRESS_RETRY`]-th block until one does.
const COMPRESS_GIVE_UP: u32 = 4;
const COMPRESS_RETRY: u32 = 16;

/// The state carried from one block to the next: whether recent blocks compressed.
#[derive(Debug)]
pub(crate) struct BlockEncoder {
    compress: bool,
    /// Blocks in a row that did not compress well enough (see [`COMPRESS_GIVE_UP`]).
    incompressible: u32,
    /// Blocks encoded so far.
    blocks: u32,
    /// Compressed output of the last block (reused).
    cbuf: Vec<u8>,
}

impl BlockEncoder {
    pub(crate) fn new(compress: bool) -> Self {
        BlockEncoder {
            compress,
            incompressible: 0,
            blocks: 0,
            cbuf: Vec::new(),
        }
    }

    /// Whether blocks are compressed (when that saves enough).
    pub(crate) fn compresses(&self) -> bool {
        self.compress
    }

    /// Appends `raw` as stored (compressed if that saves at least 1/8, then the trailer)
    /// to `out` and returns the stored length.
    pub(crate) fn encode(&mut self, raw: &[u8], out: &mut Vec<u8>) -> u32 {
        let start = out.len();
        let mut compression = 0u8;
        // After COMPRESS_GIVE_UP blocks in a row that did not compress (random or already
        // compressed values), only every COMPRESS_RETRY-th block tries again.
        if self.compress
            && (self.incompressible < COMPRESS_GIVE_UP
                || self.blocks.is_multiple_of(COMPRESS_RETRY))
        {
            let max = lz4_flex::block::get_maximum_output_size(raw.len());
            if self.cbuf.len() < max {
                self.cbuf.resize(max, 0);
            }
            match lz4_flex::block::compress_into(raw, &mut self.cbuf) {
                Ok(n) if n < raw.len() - raw.len() / 8 => {
                    out.extend_from_slice(&self.cbuf[..n]);
                    compression = 1;
                    self.incompressible = 0;
                }
                _ => self.incompressible += 1,
            }
        }
        if compression == 0 {
            out.extend_from_slice(raw);
        }
        let mut tr = [0u8; TRAILER_LEN];
        tr[0] = compression;
        tr[1..5].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        let h = crc32c::crc32c_append(crc32c::crc32c(&out[start..]), &tr[0..5]);
        tr[5..9].copy_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&tr);
        self.blocks += 1;
        (out.len() - start) as u32
    }
}

/// A raw block and the position of its last entry (for the segment's index).
#[derive(Debug)]
pub(crate) struct RawBlock {
    pub(crate) data: Vec<u8>,
    pub(crate) last_key: Vec<u8>,
    pub(crate) last_seq: u64,
}

/// Encoded blocks, back from the helper: their stored bytes one after the other, and per
/// block its stored length and last entry.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) blocks: Vec<(u32, Vec<u8>, u64)>,
}

#[cfg_attr(
    target_arch = "wasm32",
    expect(dead_code, reason = "the helper thread calls it; wasm32 starts none")
)]
fn encode_batch(encoder: &mut BlockEncoder, batch: Vec<RawBlock>) -> Encoded {
    let raw: usize = batch.iter().map(|b| b.data.len() + TRAILER_LEN).sum();
    let mut out = Encoded {
        bytes: Vec::with_capacity(raw),
        blocks: Vec::with_capacity(batch.len()),
    };
    for b in batch {
        let len = encoder.encode(&b.data, &mut out.bytes);
        out.blocks.push((len, b.last_key, b.last_seq));
    }
    out
}

/// A helper thread that encodes batches of blocks, in order, one batch at a time.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub(crate) struct EncodePipe {
    to: Option<std::sync::mpsc::SyncSender<Vec<RawBlock>>>,
    from: std::sync::mpsc::Receiver<Encoded>,
    helper: Option<std::thread::JoinHandle<()>>,
    /// Whether a batch is with the helper.
    busy: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl EncodePipe {
    /// Starts the helper, or returns `None` if the platform cannot start a thread (the
    /// caller then encodes inline).
    pub(crate) fn start(compress: bool) -> Option<Self> {
        let (to, inbox) = std::sync::mpsc::sync_channel::<Vec<RawBlock>>(1);
        let (outbox, from) = std::sync::mpsc::sync_channel::<Encoded>(1);
        let helper = std::thread::Builder::new()
            .name("entidb-encode".into())
            .spawn(move || {
                let mut encoder = BlockEncoder::new(compress);
                // Ends when the writer drops its sender (finished, or gave up on an error).
                while let Ok(batch) = inbox.recv() {
                    if outbox.send(encode_batch(&mut encoder, batch)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(EncodePipe {
            to: Some(to),
            from,
            helper: Some(helper),
            busy: false,
        })
    }

    /// Hands `batch` to the helper and returns the previous batch's encoding, if one was
    /// with it (waiting for it: that bounds the blocks in memory).
    pub(crate) fn swap(&mut self, batch: Vec<RawBlock>) -> Option<Encoded> {
        let done = self.take();
        let sent = match &self.to {
            Some(to) => to.send(batch),
            None => Err(std::sync::mpsc::SendError(batch)),
        };
        if sent.is_err() {
            self.helper_died();
        }
        self.busy = true;
        done
    }

    /// Waits for the batch with the helper, if any.
    pub(crate) fn take(&mut self) -> Option<Encoded> {
        if !std::mem::take(&mut self.busy) {
            return None;
        }
        match self.from.recv() {
            Ok(done) => Some(done),
            Err(_) => self.helper_died(),
        }
    }

    /// The helper stopped without being asked to: it panicked (encoding has no other way to
    /// fail). The panic goes on in the writer's thread, as it would have inline.
    fn helper_died(&mut self) -> ! {
        self.to = None;
        match self.helper.take().map(std::thread::JoinHandle::join) {
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            _ => panic!("the segment encoding helper stopped"),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for EncodePipe {
    fn drop(&mut self) {
        // Closing the inbox ends the helper's loop (after the batch it holds, if any).
        self.to = None;
        if let Some(helper) = self.helper.take() {
            let _ = helper.join();
        }
    }
}

/// No helper threads on `wasm32`: [`EncodePipe::start`] returns `None` and writers encode
/// inline (the type has no values, so the other methods cannot be reached).
#[cfg(target_arch = "wasm32")]
#[derive(Debug)]
pub(crate) enum EncodePipe {}

#[cfg(target_arch = "wasm32")]
impl EncodePipe {
    pub(crate) fn start(_compress: bool) -> Option<Self> {
        None
    }

    pub(crate) fn swap(&mut self, _batch: Vec<RawBlock>) -> Option<Encoded> {
        match *self {}
    }

    pub(crate) fn take(&mut self) -> Option<Encoded> {
        match *self {}
    }
}
