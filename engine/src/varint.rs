//! Unsigned LEB128 integers: 7 bits per byte, least significant group first, the high bit set
//! on every byte but the last. Used by segment entries (format 2) and full-text postings.

/// The longest encoding of a `u64`.
pub(crate) const MAX_LEN: usize = 10;

/// Appends `v`.
pub(crate) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How many bytes [`put`] writes for `v`.
pub(crate) fn len(v: u64) -> usize {
    // One byte per started group of 7 significant bits (at least one byte).
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads the integer at `*pos` and moves `*pos` past it. `None` if the bytes end first, or
/// the encoding is longer than [`MAX_LEN`] or does not fit in a `u64`.
pub(crate) fn get(b: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *b.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    let mut v = 0u64;
    for i in 0..MAX_LEN {
        let byte = *b.get(*pos + i)?;
        if i == MAX_LEN - 1 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7F) << (7 * i);
        if byte < 0x80 {
            *pos += i + 1;
            return Some(v);
        }
    }
    None
}

/// [`get`] for bytes known to hold a valid integer at `*pos` (a block that
/// `Block::parse` accepted): one- and two-byte integers, nearly all of them, take no loop.
/// Invalid bytes give 0 (never a panic).
#[inline(always)]
pub(crate) fn get_known(b: &[u8], pos: &mut usize) -> u64 {
    let p = *pos;
    if let Some(&b0) = b.get(p) {
        if b0 < 0x80 {
            *pos = p + 1;
            return u64::from(b0);
        }
        if let Some(&b1) = b.get(p + 1)
            && b1 < 0x80
        {
            *pos = p + 2;
            return u64::from(b0 & 0x7F) | u64::from(b1) << 7;
        }
    }
    get(b, pos).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_roundtrip_and_too_long_is_refused() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = vec![0xFF];
            put(&mut b, v);
            assert_eq!(b.len() - 1, len(v), "{v}");
            let mut pos = 1;
            assert_eq!(get(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
            // Every strict prefix ends too early.
            for cut in 1..b.len() {
                assert_eq!(get(&b[..cut], &mut 1), None, "{v} cut at {cut}");
            }
        }
        assert_eq!(len(u64::MAX), MAX_LEN);
        // Eleven bytes, and a tenth byte carrying bits beyond 64.
        assert_eq!(get(&[0x80; 11], &mut 0), None);
        let mut big = vec![0xFF; 9];
        big.push(0x02);
        assert_eq!(get(&big, &mut 0), None);
    }

    proptest::proptest! {
        #[test]
        fn any_value_roundtrips(v in proptest::num::u64::ANY, noise in proptest::collection::vec(0u8.., 0..12)) {
            let mut b = Vec::new();
            put(&mut b, v);
            proptest::prop_assert_eq!(b.len(), len(v));
            b.extend_from_slice(&noise);
            let mut pos = 0;
            proptest::prop_assert_eq!(get(&b, &mut pos), Some(v));
            proptest::prop_assert_eq!(pos, len(v));
            let mut pos = 0;
            proptest::prop_assert_eq!(get_known(&b, &mut pos), v);
            proptest::prop_assert_eq!(pos, len(v));
            let _ = get(&noise, &mut 0);
        }
    }
}
