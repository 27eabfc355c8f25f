//! EXIF carried from an input to its outputs. darkroom writes upright pixels, so the
//! orientation tag of the copy is reset to 1 (as Pillow's `exif_transpose` and ImageMagick's
//! `-auto-orient` do); everything else (camera, lens, dates, GPS) is kept byte for byte.

/// The TIFF-structured EXIF block of `raw` (an `Exif\0\0` prefix, as JPEG stores it, is
/// dropped) with every IFD0 Orientation entry set to 1. `None` when it is not EXIF.
pub fn upright(raw: &[u8]) -> Option<Vec<u8>> {
    let tiff = raw.strip_prefix(b"Exif\0\0").unwrap_or(raw);
    let big_endian = match tiff.get(..4)? {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return None,
    };
    let mut out = tiff.to_vec();
    let u16_at = |b: &[u8], i: usize| -> Option<u16> {
        let two = [*b.get(i)?, *b.get(i + 1)?];
        Some(if big_endian {
            u16::from_be_bytes(two)
        } else {
            u16::from_le_bytes(two)
        })
    };
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        let four = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
        Some(if big_endian {
            u32::from_be_bytes(four)
        } else {
            u32::from_le_bytes(four)
        })
    };
    let ifd = u32_at(&out, 4)? as usize;
    let entries = u16_at(&out, ifd).unwrap_or(0) as usize;
    for k in 0..entries {
        let entry = ifd + 2 + 12 * k;
        // Orientation (0x0112) is one SHORT (type 3), stored in the entry's value field.
        if u16_at(&out, entry) == Some(0x0112) && u16_at(&out, entry + 2) == Some(3) {
            let one = if big_endian {
                1u16.to_be_bytes()
            } else {
                1u16.to_le_bytes()
            };
            if let Some(value) = out.get_mut(entry + 8..entry + 10) {
                value.copy_from_slice(&one);
            }
        }
    }
    Some(out)
}

/// The orientation value of an EXIF block (1 when absent).
pub fn orientation(raw: &[u8]) -> u8 {
    let tiff = raw.strip_prefix(b"Exif\0\0").unwrap_or(raw);
    image::metadata::Orientation::from_exif_chunk(tiff)
        .map(|o| o.to_exif())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little- or big-endian TIFF header with one IFD0 entry: Orientation = 6.
    fn block(big_endian: bool) -> Vec<u8> {
        let w16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut b = Vec::new();
        b.extend_from_slice(if big_endian { b"MM\0*" } else { b"II*\0" });
        b.extend_from_slice(&w32(8));
        b.extend_from_slice(&w16(1));
        b.extend_from_slice(&w16(0x0112));
        b.extend_from_slice(&w16(3));
        b.extend_from_slice(&w32(1));
        b.extend_from_slice(&w16(6));
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&w32(0));
        b
    }

    #[test]
    fn the_orientation_is_reset_in_both_byte_orders_and_the_rest_kept() {
        for big in [false, true] {
            let raw = block(big);
            assert_eq!(orientation(&raw), 6);
            let mut prefixed = b"Exif\0\0".to_vec();
            prefixed.extend_from_slice(&raw);
            let out = upright(&prefixed).unwrap();
            assert_eq!(orientation(&out), 1);
            assert_eq!(out.len(), raw.len());
            assert_eq!(out[..18], raw[..18], "only the value changes");
        }
        assert!(upright(b"not exif").is_none());
        assert!(
            upright(b"II*\0\xff\xff\xff\xff").is_some(),
            "a broken offset is kept as is"
        );
    }
}
