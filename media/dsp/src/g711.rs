//! G.711 (ITU-T G.711, 1988) μ-law and A-law, computed rather than tabled:
//! the segment/quantisation rules of the recommendation's Tables 1a/2a.

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// 16-bit linear PCM to μ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut value = i32::from(sample);
    let sign = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    value = value.min(ULAW_CLIP) + ULAW_BIAS;
    let exponent = (31 - (value as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (value >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// μ-law to 16-bit linear PCM.
pub fn ulaw_decode(code: u8) -> i16 {
    let code = !code;
    let exponent = i32::from((code >> 4) & 0x07);
    let mantissa = i32::from(code & 0x0f);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if code & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// 16-bit linear PCM to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    let value = i32::from(sample) >> 3; // A-law works on 13 bits
    let (sign, magnitude) = if value >= 0 { (0x80, value) } else { (0x00, -value - 1) };
    let code = if magnitude < 32 {
        (magnitude >> 1) as u8
    } else {
        let exponent = (31 - (magnitude as u32).leading_zeros()).saturating_sub(4).min(7) as i32;
        let mantissa = ((magnitude >> exponent) & 0x0f) as u8;
        if magnitude >= 4096 { 0x7f } else { ((exponent as u8) << 4) | mantissa }
    };
    (sign | code) ^ 0x55
}

/// A-law to 16-bit linear PCM.
pub fn alaw_decode(code: u8) -> i16 {
    let code = code ^ 0x55;
    let exponent = i32::from((code >> 4) & 0x07);
    let mantissa = i32::from(code & 0x0f);
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    (if code & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_reference_points() {
        // G.711 Table 2a: 0xFF and 0x7F are the two zeros; 0x80/0x00 the extremes.
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x7f), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
    }

    #[test]
    fn alaw_reference_points() {
        // G.711 Table 1a: 0xD5/0x55 are the smallest positive/negative steps.
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xaa), 32256);
        assert_eq!(alaw_decode(0x2a), -32256);
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_encode(i16::MAX), 0xaa);
        assert_eq!(alaw_encode(i16::MIN), 0x2a);
    }

    #[test]
    fn every_code_round_trips_and_the_error_stays_within_a_step() {
        for code in 0..=255u8 {
            assert_eq!(ulaw_encode(ulaw_decode(code)), code | if ulaw_decode(code) == 0 { 0x80 } else { 0 });
            assert_eq!(alaw_encode(alaw_decode(code)), code, "A-law {code:#04x}");
        }
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let s = i32::from(sample);
            // Quantisation error grows with the segment: at most half a step, 1/32 of the value.
            let bound = |x: i32| (x.abs() / 16).max(16);
            assert!((i32::from(ulaw_decode(ulaw_encode(sample))) - s).abs() <= bound(s), "μ-law {sample}");
            assert!((i32::from(alaw_decode(alaw_encode(sample))) - s).abs() <= bound(s), "A-law {sample}");
        }
    }
}
