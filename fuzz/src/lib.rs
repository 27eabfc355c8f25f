//! What each fuzz target checks, beyond "no crash": the invariants a caller of darkroom's
//! parsers relies on. A failed check panics, which libFuzzer reports as a crash with the
//! input that caused it. The time and allocation bounds are libFuzzer's own `-timeout` and
//! `-malloc_limit_mb`, which `scripts/fuzz` sets for every target.

use darkroom::io::decode::{self, DecodeLimits};
use darkroom::io::{exif, jpeg_reduced, metadata, xmp};
use image::ImageFormat;
use std::path::Path;

/// The limits the decode targets run under: small enough that an input declaring a huge
/// image is refused before any pixel buffer, as the daemon refuses it with its own limits.
pub const LIMITS: DecodeLimits = DecodeLimits {
    max_file_bytes: 16 << 20,
    max_side: 8192,
    max_pixels: 1 << 22,
    max_alloc_bytes: 256 << 20,
};

/// `io::decode`'s entry for files that sniff as `format` (others are another target's):
/// an error has words, and an image is what it claims to be, inside the limits, upright,
/// with its metadata cleaned the way outputs expect. A JPEG also goes through the proxy
/// path (DCT-reduced decoding) at a reduction that depends on the input.
pub fn decode(data: &[u8], format: ImageFormat) {
    panics_darkroom_catches_are_errors();
    if decode::sniff(data).ok() != Some(format) {
        return;
    }
    let full = decode::decode_bytes(data, &LIMITS);
    match &full {
        Err(error) => assert!(!error.to_string().trim().is_empty()),
        Ok(loaded) => {
            let image = &loaded.image;
            let (width, height) = (image.width(), image.height());
            assert!(width > 0 && height > 0, "an image without pixels was accepted");
            assert!(width <= LIMITS.max_side && height <= LIMITS.max_side);
            assert!(u64::from(width) * u64::from(height) <= LIMITS.max_pixels);
            let per_pixel = u64::from(image.color().bytes_per_pixel());
            assert_eq!(
                image.as_bytes().len() as u64,
                u64::from(width) * u64::from(height) * per_pixel,
                "pixel buffer size differs from the declared size"
            );
            assert_eq!(loaded.format, format);
            assert_eq!(loaded.file_bytes, data.len() as u64);
            assert_eq!(loaded.sha256.len(), 64);
            assert!((1..=8).contains(&loaded.exif_orientation));
            if let Some(exif) = &loaded.exif {
                assert_eq!(exif::orientation(exif), 1, "EXIF kept an orientation");
            }
            check_packets(&loaded.packets);
        }
    }
    if format == ImageFormat::Jpeg {
        let divisor = 2 + (data.len() % 15) as u32;
        let needed = |w: u32, h: u32| ((w / divisor).max(1), (h / divisor).max(1));
        if let Ok(source) = decode::proxy_source_of(data, &LIMITS, &needed) {
            let (need_w, need_h) = needed(source.full_width, source.full_height);
            let image = &source.loaded.image;
            assert!(
                image.width() >= need_w && image.height() >= need_h,
                "a reduced decode came back smaller than needed"
            );
            assert!(image.width() <= source.full_width && image.height() <= source.full_height);
            if let Ok(loaded) = &full {
                assert_eq!(
                    (source.full_width, source.full_height),
                    (loaded.image.width(), loaded.image.height()),
                    "the proxy path and the full decode disagree on the size"
                );
            }
        }
    }
}

/// darkroom turns a panic inside a third-party decoder into an error for that file
/// (`io::decode` catches it: `DecodeError::DecoderPanic`). libFuzzer's panic hook aborts on
/// every panic, caught or not; the decode targets replace it with one that only prints the
/// panic, so a panic darkroom catches becomes the error the invariants check, and one it
/// does not catch (a broken invariant, a panic in darkroom's own code) still ends the run.
fn panics_darkroom_catches_are_errors() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}"))));
}

fn check_packets(packets: &xmp::Packets) {
    if let Some(packet) = &packets.xmp {
        assert!(!packet.is_empty());
        assert!(packet.len() <= xmp::PACKET_LIMIT + 64);
        assert_eq!(xmp::upright(packet), *packet, "XMP kept an orientation");
    }
    if let Some(block) = &packets.iptc {
        assert!(!block.is_empty() && block.len() <= xmp::PACKET_LIMIT);
    }
}

/// darkroom's own reduced JPEG decoder at every reduction n/8: an image has the size the
/// header declares at that reduction, as many bytes as its pixels need, and the two-thread
/// (speculative) decode gives exactly the one-thread result. Only frames within [`LIMITS`]
/// are decoded, as darkroom's proxy path checks the frame against its limits first (a
/// 637-byte file declaring 65535x65311 pixels made the decoder ask for 1.2 GB).
pub fn jpeg_reduced(data: &[u8]) {
    if let Some(info) = jpeg_reduced::FileInfo::read(data) {
        if info.width > LIMITS.max_side
            || info.height > LIMITS.max_side
            || u64::from(info.width) * u64::from(info.height) > LIMITS.max_pixels
        {
            return;
        }
    }
    let declared = {
        let mut decoder = jpeg_decoder::Decoder::new(data);
        decoder
            .read_info()
            .ok()
            .and_then(|()| decoder.info())
            .map(|info| (u32::from(info.width), u32::from(info.height)))
    };
    for n in 1..=7usize {
        let serial = jpeg_reduced::decode_with(data, n, false);
        let split = jpeg_reduced::decode_always_split(data, n);
        let summary = |r: &jpeg_reduced::Reduced| (r.width, r.height, r.channels, r.pixels.clone());
        assert_eq!(
            serial.as_ref().map(summary),
            split.as_ref().map(summary),
            "two threads and one thread disagree at {n}/8"
        );
        let Some(reduced) = serial else { continue };
        assert!(reduced.channels == 1 || reduced.channels == 3);
        assert_eq!(
            reduced.pixels.len(),
            reduced.width as usize * reduced.height as usize * reduced.channels as usize
        );
        if let Some((width, height)) = declared {
            let scaled = |side: u32| (side as usize * n).div_ceil(8) as u32;
            assert_eq!(
                (reduced.width, reduced.height),
                (scaled(width), scaled(height)),
                "a reduced decode's size is not the declared size at {n}/8"
            );
        }
    }
}

/// Metadata read from a container: darkroom's own PNG iTXt metadata (inflated under
/// [`metadata::EMBEDDED_TEXT_LIMIT`]) reads back as it writes, and the XMP and IPTC readers
/// of every container stay under their limit.
pub fn metadata(data: &[u8]) {
    if let Some(meta) = metadata::read_embedded(data) {
        let again = metadata::ProxyMetadata::parse(&meta.to_compact_json(), "fuzz")
            .expect("metadata darkroom accepted serialises to metadata it accepts");
        assert_eq!(again, meta);
    }
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::WebP,
        ImageFormat::Tiff,
    ] {
        check_packets(&xmp::read(data, format));
    }
}

/// EXIF: the copy carried to outputs keeps every byte but the orientation, which reads 1.
pub fn exif(data: &[u8]) {
    assert!((1..=8).contains(&exif::orientation(data)));
    if let Some(upright) = exif::upright(data) {
        let tiff = data.strip_prefix(b"Exif\0\0").unwrap_or(data);
        assert_eq!(upright.len(), tiff.len());
        assert_eq!(exif::orientation(&upright), 1, "the upright copy kept its orientation");
        assert_eq!(exif::upright(&upright).as_deref(), Some(&upright[..]));
    }
}

/// The config parser: any text gives a config or a list of problems, each with words and a
/// line inside the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent/darkroom-fuzz/darkroom.toml");
    if let Err(errors) = darkroom::daemon::config::Config::parse_offline(text, path) {
        assert!(!errors.errors.is_empty(), "a refused config names no problem");
        let lines = text.lines().count() + 1;
        for error in &errors.errors {
            assert!(!error.message.trim().is_empty(), "a problem without words");
            if let Some(line) = error.line {
                assert!((1..=lines).contains(&line), "line {line} of a {lines}-line file");
            }
        }
        assert!(!errors.to_string().is_empty());
    }
}
