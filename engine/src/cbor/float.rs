//! Exact conversions between `f64` and the IEEE 754 half- and single-precision formats.

/// 2^-24, the smallest positive half-precision (subnormal) value.
const TWO_POW_MINUS_24: f64 = f64::from_bits((1023 - 24) << 52);

/// The canonical half-precision NaN (`0x7e00`), the only NaN canonical CBOR allows.
pub(crate) const CANONICAL_NAN_F16: u16 = 0x7e00;

/// Converts a half-precision bit pattern to the `f64` with exactly the same value.
///
/// Every NaN becomes the canonical `f64::NAN`.
pub(crate) fn f16_to_f64(half: u16) -> f64 {
    let sign = u64::from(half & 0x8000) << 48;
    let exp = (half >> 10) & 0x1f;
    let mant = half & 0x3ff;
    let magnitude = match exp {
        // Zero and subnormals: mant * 2^-24 (exact: a small integer times a power of two).
        0 => f64::from(mant) * TWO_POW_MINUS_24,
        31 if mant == 0 => f64::INFINITY,
        31 => return f64::NAN,
        _ => f64::from_bits(((u64::from(exp) + 1023 - 15) << 52) | (u64::from(mant) << 42)),
    };
    f64::from_bits(sign | magnitude.to_bits())
}

/// Returns the half-precision bit pattern with exactly the value of `x`, if there is one.
///
/// Returns `None` for NaN (the caller encodes NaN separately) and for every value that half
/// precision cannot represent exactly (too large, too small, or too many significant bits).
pub(crate) fn f64_to_f16_exact(x: f64) -> Option<u16> {
    let bits = x.to_bits();
    let sign = ((bits >> 48) & 0x8000) as u16;
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let mant = bits & ((1u64 << 52) - 1);
    if exp == 0x7ff {
        // Infinity converts; NaN has no exact counterpart.
        return (mant == 0).then_some(sign | 0x7c00);
    }
    if exp == 0 {
        // Zero converts; f64 subnormals are far below the smallest half (2^-24).
        return (mant == 0).then_some(sign);
    }
    let e = exp - 1023;
    if (-14..=15).contains(&e) {
        // Normal half: 10 mantissa bits, the low 42 bits of the f64 mantissa must be zero.
        if mant & ((1u64 << 42) - 1) != 0 {
            return None;
        }
        Some(sign | (((e + 15) as u16) << 10) | ((mant >> 42) as u16))
    } else if (-24..=-15).contains(&e) {
        // Subnormal half: value = h * 2^-24 with h < 1024, h = (2^52 + mant) >> (28 - e).
        let full = mant | (1u64 << 52);
        let shift = (28 - e) as u32;
        if full & ((1u64 << shift) - 1) != 0 {
            return None;
        }
        Some(sign | ((full >> shift) as u16))
    } else {
        None
    }
}

/// Whether the half-precision bit pattern is a NaN.
pub(crate) fn f16_is_nan(half: u16) -> bool {
    half & 0x7c00 == 0x7c00 && half & 0x03ff != 0
}

/// Whether `x` (not NaN) is exactly representable in single precision.
pub(crate) fn fits_f32(x: f64) -> bool {
    f64::from(x as f32).to_bits() == x.to_bits()
}

/// Appends the shortest exact CBOR encoding of `x` (every NaN as `f9 7e00`).
pub(crate) fn write_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_nan() {
        out.push(0xf9);
        out.extend_from_slice(&CANONICAL_NAN_F16.to_be_bytes());
    } else if let Some(half) = f64_to_f16_exact(x) {
        out.push(0xf9);
        out.extend_from_slice(&half.to_be_bytes());
    } else if fits_f32(x) {
        out.push(0xfa);
        out.extend_from_slice(&(x as f32).to_bits().to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&x.to_bits().to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(x: f64) -> Vec<u8> {
        let mut out = Vec::new();
        write_f64(&mut out, x);
        out
    }

    #[test]
    fn half_round_trips_every_non_nan_pattern() {
        for half in 0..=u16::MAX {
            let x = f16_to_f64(half);
            if f16_is_nan(half) {
                assert!(x.is_nan());
                assert_eq!(x.to_bits(), f64::NAN.to_bits());
                continue;
            }
            assert_eq!(f64_to_f16_exact(x), Some(half), "half {half:#06x} -> {x:e}");
        }
    }

    #[test]
    fn half_edge_values() {
        // Largest half, smallest normal, smallest and largest subnormal.
        assert_eq!(f64_to_f16_exact(65504.0), Some(0x7bff));
        assert_eq!(f64_to_f16_exact(6.103515625e-05), Some(0x0400));
        assert_eq!(f64_to_f16_exact(2f64.powi(-24)), Some(0x0001));
        assert_eq!(f64_to_f16_exact(-(2f64.powi(-24))), Some(0x8001));
        assert_eq!(f64_to_f16_exact(1023.0 * 2f64.powi(-24)), Some(0x03ff));
        assert_eq!(f64_to_f16_exact(0.0), Some(0x0000));
        assert_eq!(f64_to_f16_exact(-0.0), Some(0x8000));
        assert_eq!(f64_to_f16_exact(f64::INFINITY), Some(0x7c00));
        assert_eq!(f64_to_f16_exact(f64::NEG_INFINITY), Some(0xfc00));
        assert_eq!(f64_to_f16_exact(f64::NAN), None);
        // Just outside: 65505 and 65536 need more precision/range, half of 2^-24 underflows,
        // 1.5 * 2^-24 has a bit below the subnormal resolution.
        assert_eq!(f64_to_f16_exact(65505.0), None);
        assert_eq!(f64_to_f16_exact(65536.0), None);
        assert_eq!(f64_to_f16_exact(2f64.powi(-25)), None);
        assert_eq!(f64_to_f16_exact(1.5 * 2f64.powi(-24)), None);
        assert_eq!(f64_to_f16_exact(f64::MIN_POSITIVE), None);
        assert_eq!(f64_to_f16_exact(5e-324), None);
        // 1 + 2^-10 fits, 1 + 2^-11 does not.
        assert_eq!(f64_to_f16_exact(1.0 + 2f64.powi(-10)), Some(0x3c01));
        assert_eq!(f64_to_f16_exact(1.0 + 2f64.powi(-11)), None);
    }

    #[test]
    fn shortest_float_encodings() {
        assert_eq!(enc(0.0), [0xf9, 0x00, 0x00]);
        assert_eq!(enc(-0.0), [0xf9, 0x80, 0x00]);
        assert_eq!(enc(1.5), [0xf9, 0x3e, 0x00]);
        assert_eq!(enc(65504.0), [0xf9, 0x7b, 0xff]);
        assert_eq!(enc(5.960464477539063e-08), [0xf9, 0x00, 0x01]);
        // Needs f32: 100000.0, 65505.0, 2^-25, f32::MAX, smallest f32 subnormal.
        assert_eq!(enc(100000.0), [0xfa, 0x47, 0xc3, 0x50, 0x00]);
        assert_eq!(enc(65505.0), [0xfa, 0x47, 0x7f, 0xe1, 0x00]);
        assert_eq!(enc(2f64.powi(-25)), [0xfa, 0x33, 0x00, 0x00, 0x00]);
        assert_eq!(enc(f64::from(f32::MAX)), [0xfa, 0x7f, 0x7f, 0xff, 0xff]);
        assert_eq!(enc(2f64.powi(-149)), [0xfa, 0x00, 0x00, 0x00, 0x01]);
        // Needs f64: 1.1, 1e300, 2^-150, f64 subnormals.
        assert_eq!(
            enc(1.1),
            [0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]
        );
        assert_eq!(enc(1e300)[0], 0xfb);
        assert_eq!(enc(2f64.powi(-150))[0], 0xfb);
        assert_eq!(enc(5e-324), [0xfb, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Special values.
        assert_eq!(enc(f64::INFINITY), [0xf9, 0x7c, 0x00]);
        assert_eq!(enc(f64::NEG_INFINITY), [0xf9, 0xfc, 0x00]);
        assert_eq!(enc(f64::NAN), [0xf9, 0x7e, 0x00]);
        assert_eq!(enc(-f64::NAN), [0xf9, 0x7e, 0x00]);
        assert_eq!(
            enc(f64::from_bits(0x7ff0_0000_0000_0001)),
            [0xf9, 0x7e, 0x00]
        );
    }

    #[test]
    fn half_to_f64_values() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc400), -4.0);
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
        assert_eq!(f16_to_f64(0x0001), 5.960464477539063e-08);
        assert_eq!(f16_to_f64(0x0400), 6.103515625e-05);
        assert_eq!(f16_to_f64(0x8000).to_bits(), (-0.0f64).to_bits());
        assert_eq!(f16_to_f64(0xfc00), f64::NEG_INFINITY);
        assert!(f16_is_nan(0x7e00) && f16_is_nan(0xfe01) && !f16_is_nan(0x7c00));
    }
}
