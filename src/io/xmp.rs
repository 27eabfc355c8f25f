//! XMP and IPTC: read from an input file's container, carried into every output.
//!
//! A Lightroom export carries keywords, ratings, captions and titles in its XMP packet, and
//! news and agency photos carry IPTC. Outputs keep both where their format can hold them:
//! XMP in PNG (iTXt `XML:com.adobe.xmp`), JPEG (APP1), WebP (`XMP ` chunk) and TIFF (tag
//! 700); IPTC (the Photoshop resource block) in JPEG (APP13) and TIFF (tag 34377). The pixels
//! darkroom writes are upright, so the packet's `tiff:Orientation` is set to 1, as the EXIF
//! block's is.

use super::encode::OutputFormat;
use image::ImageFormat;
use std::io::Cursor;

/// Largest XMP packet or IPTC block read: anything larger is left behind (a text-chunk bomb
/// in a PNG is never inflated past it).
pub const PACKET_LIMIT: usize = 1 << 20;

/// PNG iTXt keyword of an XMP packet.
const PNG_KEYWORD: &str = "XML:com.adobe.xmp";
/// JPEG APP1 prefix of an XMP packet.
const JPEG_XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
/// JPEG APP13 prefix of a Photoshop resource block (IPTC lives in it).
const JPEG_IPTC_PREFIX: &[u8] = b"Photoshop 3.0\0";
/// TIFF tags: XMP, Photoshop resources.
const TIFF_XMP: u16 = 700;
const TIFF_PHOTOSHOP: u16 = 34377;

/// The packets an input carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packets {
    /// The XMP packet (XML text), with `tiff:Orientation` already set to 1.
    pub xmp: Option<Vec<u8>>,
    /// The Photoshop image resource block holding the IPTC record.
    pub iptc: Option<Vec<u8>>,
}

impl Packets {
    pub fn is_empty(&self) -> bool {
        self.xmp.is_none() && self.iptc.is_none()
    }
}

/// Reads the XMP packet and IPTC block of a file of `format`; whatever is missing, malformed
/// or over [`PACKET_LIMIT`] is left out.
pub fn read(bytes: &[u8], format: ImageFormat) -> Packets {
    let (xmp, iptc) = match format {
        ImageFormat::Png => (png_xmp(bytes), None),
        ImageFormat::Jpeg => jpeg_packets(bytes),
        ImageFormat::WebP => (riff_chunk(bytes, b"XMP ").map(<[u8]>::to_vec), None),
        ImageFormat::Tiff => (tiff_tag(bytes, TIFF_XMP), tiff_tag(bytes, TIFF_PHOTOSHOP)),
        _ => (None, None),
    };
    let small = |p: Vec<u8>| (!p.is_empty() && p.len() <= PACKET_LIMIT).then_some(p);
    Packets {
        xmp: xmp.and_then(small).map(|p| upright(&p)),
        iptc: iptc.and_then(small),
    }
}

fn png_xmp(bytes: &[u8]) -> Option<Vec<u8>> {
    let reader = png::Decoder::new(Cursor::new(bytes)).read_info().ok()?;
    let mut chunk = reader
        .info()
        .utf8_text
        .iter()
        .find(|c| c.keyword == PNG_KEYWORD)?
        .clone();
    chunk.decompress_text_with_limit(PACKET_LIMIT).ok()?;
    Some(chunk.get_text().ok()?.into_bytes())
}

/// The header segments of a JPEG (up to the first scan): (marker, payload).
fn jpeg_segments(bytes: &[u8]) -> Vec<(u8, std::ops::Range<usize>)> {
    let mut segments = Vec::new();
    if bytes.len() < 4 || bytes[..2] != [0xFF, 0xD8] {
        return segments;
    }
    let mut i = 2;
    while i + 4 <= bytes.len() && bytes[i] == 0xFF {
        let marker = bytes[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        if len < 2 || i + 2 + len > bytes.len() {
            break;
        }
        segments.push((marker, i + 4..i + 2 + len));
        i += 2 + len;
    }
    segments
}

fn jpeg_packets(bytes: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut xmp = None;
    let mut iptc = None;
    for (marker, range) in jpeg_segments(bytes) {
        let payload = &bytes[range];
        if marker == 0xE1 && xmp.is_none() {
            xmp = payload.strip_prefix(JPEG_XMP_PREFIX).map(<[u8]>::to_vec);
        } else if marker == 0xED && iptc.is_none() {
            iptc = payload.strip_prefix(JPEG_IPTC_PREFIX).map(<[u8]>::to_vec);
        }
    }
    (xmp, iptc)
}

/// The data of the first RIFF chunk of `kind` in a WebP file.
fn riff_chunk<'a>(bytes: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    riff_chunks(bytes)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, range)| &bytes[range])
}

/// The chunks of a WebP file: (kind, data range).
fn riff_chunks(bytes: &[u8]) -> Option<Vec<([u8; 4], std::ops::Range<usize>)>> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return None;
    }
    let mut chunks = Vec::new();
    let mut i = 12;
    while i + 8 <= bytes.len() {
        let kind: [u8; 4] = bytes[i..i + 4].try_into().ok()?;
        let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().ok()?) as usize;
        let end = (i + 8).checked_add(len)?;
        if end > bytes.len() {
            return None;
        }
        chunks.push((kind, i + 8..end));
        i = end + (len & 1);
    }
    Some(chunks)
}

fn tiff_tag(bytes: &[u8], tag: u16) -> Option<Vec<u8>> {
    let mut decoder = tiff::decoder::Decoder::new(Cursor::new(bytes)).ok()?;
    decoder
        .get_tag_u8_vec(tiff::tags::Tag::Unknown(tag))
        .ok()
        .filter(|v| v.len() <= PACKET_LIMIT)
}

/// The packet with `tiff:Orientation` set to 1, in either of XMP's forms (attribute
/// `tiff:Orientation="6"` or element `<tiff:Orientation>6</tiff:Orientation>`).
pub fn upright(xmp: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(xmp) else {
        return xmp.to_vec();
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("tiff:Orientation") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let after_name = &from["tiff:Orientation".len()..];
        let value_at = after_name
            .char_indices()
            .find(|(_, c)| !matches!(c, '=' | '"' | '\'' | '>' | ' '))
            .map(|(i, _)| i);
        match value_at {
            Some(i) if after_name[i..].starts_with(|c: char| c.is_ascii_digit()) => {
                let digits = after_name[i..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after_name.len() - i);
                out.push_str("tiff:Orientation");
                out.push_str(&after_name[..i]);
                out.push('1');
                rest = &after_name[i + digits..];
            }
            _ => {
                out.push_str("tiff:Orientation");
                rest = after_name;
            }
        }
    }
    out.push_str(rest);
    out.into_bytes()
}

/// What the output image is, for containers that must describe it (WebP's VP8X header).
#[derive(Debug, Clone, Copy)]
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pub alpha: bool,
}

/// Adds `packets` to an encoded file of `format`: the packets the format can hold; a
/// packet too large for its container is left out with a warning.
pub fn embed(bytes: Vec<u8>, format: OutputFormat, packets: &Packets, canvas: Canvas) -> Vec<u8> {
    if packets.is_empty() {
        return bytes;
    }
    match format {
        OutputFormat::Png => match &packets.xmp {
            Some(xmp) => png_with_xmp(bytes, xmp),
            None => bytes,
        },
        OutputFormat::Jpeg => jpeg_with_packets(bytes, packets),
        OutputFormat::WebP => match &packets.xmp {
            Some(xmp) => webp_with_xmp(&bytes, xmp, canvas).unwrap_or_else(|| {
                tracing::warn!("the WebP output has an unexpected layout; written without XMP");
                bytes
            }),
            None => bytes,
        },
        OutputFormat::Tiff => tiff_with_packets(&bytes, packets).unwrap_or_else(|| {
            tracing::warn!("the TIFF output has an unexpected layout; written without XMP");
            bytes
        }),
    }
}

fn png_with_xmp(png: Vec<u8>, xmp: &[u8]) -> Vec<u8> {
    // iTXt: keyword, NUL, compression flag 0 and method 0 (uncompressed, as the XMP
    // specification asks), empty language tag and translated keyword, then the text.
    let mut data = Vec::with_capacity(xmp.len() + PNG_KEYWORD.len() + 5);
    data.extend_from_slice(PNG_KEYWORD.as_bytes());
    data.extend_from_slice(&[0, 0, 0, 0, 0]);
    data.extend_from_slice(xmp);
    super::png_encode::with_chunk_after_ihdr(png, b"iTXt", &data)
}

fn jpeg_with_packets(jpeg: Vec<u8>, packets: &Packets) -> Vec<u8> {
    // After SOI and the APP0/APP1 segments already there (JFIF, EXIF), as cameras and
    // Lightroom order them.
    let insert_at = jpeg_segments(&jpeg)
        .into_iter()
        .take_while(|(marker, _)| matches!(marker, 0xE0 | 0xE1))
        .last()
        .map_or(2, |(_, range)| range.end);
    let mut segments = Vec::new();
    let mut add = |marker: u8, prefix: &[u8], payload: &[u8], what: &str| {
        let len = 2 + prefix.len() + payload.len();
        if len > usize::from(u16::MAX) {
            tracing::warn!(
                bytes = payload.len(),
                "the {what} is larger than one JPEG segment holds; the JPEG output goes without it"
            );
            return;
        }
        segments.extend_from_slice(&[0xFF, marker]);
        segments.extend_from_slice(&(len as u16).to_be_bytes());
        segments.extend_from_slice(prefix);
        segments.extend_from_slice(payload);
    };
    if let Some(xmp) = &packets.xmp {
        add(0xE1, JPEG_XMP_PREFIX, xmp, "XMP packet");
    }
    if let Some(iptc) = &packets.iptc {
        add(0xED, JPEG_IPTC_PREFIX, iptc, "IPTC block");
    }
    let mut jpeg = jpeg;
    jpeg.splice(insert_at..insert_at, segments);
    jpeg
}

fn webp_with_xmp(webp: &[u8], xmp: &[u8], canvas: Canvas) -> Option<Vec<u8>> {
    const XMP_FLAG: u8 = 0x04;
    const ALPHA_FLAG: u8 = 0x10;
    let chunks = riff_chunks(webp)?;
    let mut out = Vec::with_capacity(webp.len() + xmp.len() + 40);
    out.extend_from_slice(b"RIFF\0\0\0\0WEBP");
    let push = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        out.extend_from_slice(kind);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    };
    if !chunks.iter().any(|(k, _)| k == b"VP8X") {
        let mut header = vec![
            XMP_FLAG | if canvas.alpha { ALPHA_FLAG } else { 0 },
            0,
            0,
            0,
        ];
        header.extend_from_slice(&(canvas.width.checked_sub(1)?).to_le_bytes()[..3]);
        header.extend_from_slice(&(canvas.height.checked_sub(1)?).to_le_bytes()[..3]);
        push(&mut out, b"VP8X", &header);
    }
    for (kind, range) in &chunks {
        if kind == b"XMP " {
            continue;
        }
        let mut data = webp[range.clone()].to_vec();
        if kind == b"VP8X" && !data.is_empty() {
            data[0] |= XMP_FLAG;
        }
        push(&mut out, kind, &data);
    }
    push(&mut out, b"XMP ", xmp);
    let size = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    Some(out)
}

/// Rewrites the first IFD of a classic TIFF with the packets' tags added (the old IFD stays
/// behind, unreferenced, and the data and new IFD are appended).
fn tiff_with_packets(tiff: &[u8], packets: &Packets) -> Option<Vec<u8>> {
    let little = match tiff.get(..4)? {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |i: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(i..i + 2)?.try_into().ok()?;
        Some(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |i: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(i..i + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let count = usize::from(u16_at(ifd)?);
    let mut entries: Vec<[u8; 12]> = (0..count)
        .map(|n| {
            tiff.get(ifd + 2 + 12 * n..ifd + 14 + 12 * n)?
                .try_into()
                .ok()
        })
        .collect::<Option<_>>()?;
    let next = u32_at(ifd + 2 + 12 * count)?;
    let w16 = |v: u16| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let w32 = |v: u32| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let mut out = tiff.to_vec();
    let add = |out: &mut Vec<u8>, entries: &mut Vec<[u8; 12]>, tag: u16, kind: u16, data: &[u8]| {
        if out.len() % 2 == 1 {
            out.push(0);
        }
        let at = u32::try_from(out.len()).ok()?;
        out.extend_from_slice(data);
        let mut entry = [0u8; 12];
        entry[..2].copy_from_slice(&w16(tag));
        entry[2..4].copy_from_slice(&w16(kind));
        entry[4..8].copy_from_slice(&w32(u32::try_from(data.len()).ok()?));
        entry[8..].copy_from_slice(&w32(at));
        let tag_of = |e: &[u8; 12]| {
            if little {
                u16::from_le_bytes([e[0], e[1]])
            } else {
                u16::from_be_bytes([e[0], e[1]])
            }
        };
        entries.retain(|e| tag_of(e) != tag);
        entries.push(entry);
        entries.sort_by_key(tag_of);
        Some(())
    };
    // BYTE for XMP (as the TIFF/XMP specifications give it), UNDEFINED for the resources.
    if let Some(xmp) = &packets.xmp {
        add(&mut out, &mut entries, TIFF_XMP, 1, xmp)?;
    }
    if let Some(iptc) = &packets.iptc {
        add(&mut out, &mut entries, TIFF_PHOTOSHOP, 7, iptc)?;
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    let new_ifd = u32::try_from(out.len()).ok()?;
    out.extend_from_slice(&w16(u16::try_from(entries.len()).ok()?));
    for entry in &entries {
        out.extend_from_slice(entry);
    }
    out.extend_from_slice(&w32(next));
    out[4..8].copy_from_slice(&w32(new_ifd));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: &str = "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF><rdf:Description \
        tiff:Orientation=\"6\" xmp:Rating=\"4\"><dc:subject><rdf:Bag><rdf:li>harbour</rdf:li>\
        </rdf:Bag></dc:subject><tiff:Orientation>8</tiff:Orientation></rdf:Description>\
        </rdf:RDF></x:xmpmeta>";

    #[test]
    fn upright_sets_both_forms_of_the_orientation_to_one_and_keeps_the_rest() {
        let out = String::from_utf8(upright(PACKET.as_bytes())).unwrap();
        assert!(out.contains("tiff:Orientation=\"1\""), "{out}");
        assert!(
            out.contains("<tiff:Orientation>1</tiff:Orientation>"),
            "{out}"
        );
        assert_eq!(out.len(), PACKET.len());
        assert!(out.contains("xmp:Rating=\"4\"") && out.contains("harbour"));
    }

    #[test]
    fn every_format_carries_the_packets_it_can_hold() {
        let image = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(9, 5, |x, y| {
            image::Rgba([x as u8 * 20, y as u8 * 40, 90, 255 - x as u8])
        }));
        let packets = Packets {
            xmp: Some(upright(PACKET.as_bytes())),
            iptc: Some(b"8BIM\x04\x04\0\0\0\0\0\x05\x1c\x02\x78\0\x01Z\0".to_vec()),
        };
        let canvas = Canvas {
            width: 9,
            height: 5,
            alpha: true,
        };
        for format in [
            OutputFormat::Png,
            OutputFormat::Jpeg,
            OutputFormat::WebP,
            OutputFormat::Tiff,
        ] {
            let bytes = crate::io::encode::encode(&image, format, None, None, &[]).unwrap();
            let bytes = embed(bytes, format, &packets, canvas);
            let sniffed = crate::io::decode::sniff(&bytes).unwrap();
            let decoded = crate::io::decode::decode_bytes(&bytes, &Default::default())
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((decoded.image.width(), decoded.image.height()), (9, 5));
            let read_back = read(&bytes, sniffed);
            assert_eq!(
                read_back.xmp, packets.xmp,
                "{format:?} keeps the XMP packet"
            );
            let holds_iptc = matches!(format, OutputFormat::Jpeg | OutputFormat::Tiff);
            assert_eq!(
                read_back.iptc.is_some(),
                holds_iptc,
                "{format:?} IPTC where the format holds it"
            );
            if holds_iptc {
                assert_eq!(read_back.iptc, packets.iptc);
            }
        }
    }
}
