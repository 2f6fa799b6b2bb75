//! AES-256-GCM behind one small type: AWS-LC (assembly, through `aws-lc-rs`) on native
//! targets, RustCrypto's `aes-gcm` on wasm32.
//!
//! Both are the standard construction (96-bit nonce, 128-bit tag), so a file sealed by one
//! opens with the other; `tests/encrypted.rs` checks that in both directions. The native one
//! matters for speed: an append to an encrypted WAL re-seals a whole 4 KiB chunk, and with
//! the RustCrypto crate GHASH alone was 13 % of the time of many small commits.

/// Length of the authentication tag.
pub(crate) const TAG_LEN: usize = 16;

/// An AES-256-GCM key, ready to seal and open.
pub(crate) struct Gcm {
    #[cfg(not(target_arch = "wasm32"))]
    key: aws_lc_rs::aead::LessSafeKey,
    #[cfg(target_arch = "wasm32")]
    key: aes_gcm::Aes256Gcm,
}

impl Gcm {
    /// The cipher for a 256-bit key.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn new(key: &[u8; 32]) -> Option<Gcm> {
        use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
        let k = UnboundKey::new(&AES_256_GCM, key).ok()?;
        Some(Gcm {
            key: LessSafeKey::new(k),
        })
    }

    /// The cipher for a 256-bit key.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn new(key: &[u8; 32]) -> Option<Gcm> {
        use aes_gcm::KeyInit;
        Some(Gcm {
            key: aes_gcm::Aes256Gcm::new(key.into()),
        })
    }

    /// Encrypt `buf` in place and return the tag (`None` only if the library refuses).
    pub(crate) fn seal(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Option<[u8; TAG_LEN]> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            use aws_lc_rs::aead::{Aad, Nonce};
            let tag = self
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    buf,
                )
                .ok()?;
            tag.as_ref().try_into().ok()
        }
        #[cfg(target_arch = "wasm32")]
        {
            use aes_gcm::aead::AeadInPlace;
            let tag = self
                .key
                .encrypt_in_place_detached(&nonce.into(), aad, buf)
                .ok()?;
            Some(tag.into())
        }
    }

    /// Authenticate and decrypt `sealed` (ciphertext then tag) in place; the plaintext length,
    /// or `None` when authentication fails (the buffer's contents are then unspecified).
    pub(crate) fn open(&self, nonce: [u8; 12], aad: &[u8], sealed: &mut [u8]) -> Option<usize> {
        let len = sealed.len().checked_sub(TAG_LEN)?;
        #[cfg(not(target_arch = "wasm32"))]
        {
            use aws_lc_rs::aead::{Aad, Nonce};
            let plain = self
                .key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
                .ok()?;
            (plain.len() == len).then_some(len)
        }
        #[cfg(target_arch = "wasm32")]
        {
            use aes_gcm::aead::AeadInPlace;
            let (ct, tag) = sealed.split_at_mut(len);
            let tag: [u8; TAG_LEN] = (&*tag).try_into().ok()?;
            self.key
                .decrypt_in_place_detached(&nonce.into(), aad, ct, &tag.into())
                .ok()?;
            Some(len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let g = Gcm::new(&[7; 32]).expect("key");
        let mut buf = b"hello, chunk".to_vec();
        let tag = g.seal([1; 12], b"aad", &mut buf).expect("seal");
        assert_ne!(&buf[..], b"hello, chunk");
        let mut sealed = [buf.clone(), tag.to_vec()].concat();
        assert_eq!(g.open([1; 12], b"aad", &mut sealed), Some(12));
        assert_eq!(&sealed[..12], b"hello, chunk");
        let mut sealed = [buf.clone(), tag.to_vec()].concat();
        assert_eq!(g.open([1; 12], b"other", &mut sealed), None);
        let mut sealed = [buf, tag.to_vec()].concat();
        sealed[0] ^= 1;
        assert_eq!(g.open([1; 12], b"aad", &mut sealed), None);
        assert_eq!(g.open([1; 12], b"aad", &mut [0u8; 3]), None);
    }
}
