//! GIF: darkroom reads the first frame (through `image`); this counts the frames a file
//! holds, without decoding them, so that what was left out can be said.

use std::path::Path;

/// How many images a GIF file holds (0 when `bytes` are not a GIF). A damaged file counts
/// the images up to the damage.
pub fn frame_count(bytes: &[u8]) -> usize {
    if bytes.len() < 13 || !(bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) {
        return 0;
    }
    let colour_table = |flags: u8| {
        if flags & 0x80 != 0 {
            3usize << ((flags & 0x07) + 1)
        } else {
            0
        }
    };
    let mut at = 13 + colour_table(bytes[10]);
    let mut frames = 0;
    // Skips data sub-blocks (a size byte, then that many bytes) up to the empty one.
    let skip_blocks = |mut at: usize| -> Option<usize> {
        loop {
            let size = usize::from(*bytes.get(at)?);
            at += 1;
            if size == 0 {
                return Some(at);
            }
            at += size;
        }
    };
    while let Some(&introducer) = bytes.get(at) {
        match introducer {
            0x21 => match skip_blocks(at + 2) {
                Some(next) => at = next,
                None => break,
            },
            0x2C => {
                let Some(&flags) = bytes.get(at + 9) else {
                    break;
                };
                frames += 1;
                // Descriptor, local colour table, LZW code size, then the data.
                match skip_blocks(at + 10 + colour_table(flags) + 1) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            _ => break, // 0x3B (the trailer) or damage
        }
    }
    frames
}

/// What a provenance sidecar should say about a source file beyond its hash: for an animated
/// GIF, that only its first frame was used.
pub fn source_notes(path: &Path) -> Vec<String> {
    let mut header = [0u8; 6];
    let is_gif = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok()
        && (&header == b"GIF87a" || &header == b"GIF89a");
    if !is_gif {
        return Vec::new();
    }
    let frames = std::fs::read(path).map(|b| frame_count(&b)).unwrap_or(0);
    if frames > 1 {
        vec![format!(
            "animated GIF: the first of its {frames} frames was used; the {} later frames were dropped",
            frames - 1
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, Rgba, RgbaImage};

    fn animated(frames: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut bytes);
            for i in 0..frames {
                let image = RgbaImage::from_pixel(9, 7, Rgba([i as u8 * 40, 10, 200, 255]));
                encoder
                    .encode_frame(Frame::from_parts(
                        image,
                        0,
                        0,
                        Delay::from_numer_denom_ms(100, 1),
                    ))
                    .unwrap();
            }
        }
        bytes
    }

    #[test]
    fn frames_are_counted_without_decoding() {
        assert_eq!(frame_count(&animated(1)), 1);
        assert_eq!(frame_count(&animated(3)), 3);
        let whole = animated(3);
        assert!(
            frame_count(&whole[..whole.len() / 2]) < 3,
            "damage stops the count"
        );
        assert_eq!(frame_count(b"\x89PNG\r\n\x1a\n"), 0);
    }

    #[test]
    fn the_first_frame_is_what_decodes() {
        let image = image::load_from_memory(&animated(3)).unwrap().to_rgba8();
        assert_eq!(image.dimensions(), (9, 7));
        assert_eq!(image.get_pixel(4, 3)[0], 0);
    }
}
