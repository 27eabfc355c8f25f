//! The marker walk every JPEG reader here shares ([`Segments`]), what the proxy path reads
//! before any pixel ([`FileInfo`]: frame size, EXIF, ICC), the markers up to the scan (frame,
//! tables, restart interval, scan), and where each component's blocks and reduced pixels go.

/// One marker segment: its code, its body (after the two length bytes), and the offset just
/// after it, where a scan's entropy-coded data begins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub(crate) marker: u8,
    pub(crate) body: &'a [u8],
    pub(crate) end: usize,
}

/// The marker segments of a JPEG after its SOI, in order, each skipped by its length and
/// each scan's entropy-coded data stepped over (restart markers and stuffed bytes included).
/// Fill bytes and standalone markers (RSTn, TEM) are passed over. The end-of-image marker
/// is the last segment yielded (with an empty body); a file that is cut short or breaks the
/// structure ends the walk without it (see [`Segments::reached_end`]).
pub(crate) struct Segments<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The last segment was a scan, whose data starts at `at`.
    in_scan: bool,
    ended: bool,
    reached_end: bool,
}

impl<'a> Segments<'a> {
    /// The segments of `bytes`; `None` unless it starts with SOI.
    pub(crate) fn of(bytes: &'a [u8]) -> Option<Segments<'a>> {
        (bytes.get(..2)? == [0xFF, 0xD8]).then_some(Segments {
            bytes,
            at: 2,
            in_scan: false,
            ended: false,
            reached_end: false,
        })
    }

    /// Whether the walk reached the end-of-image marker.
    pub(crate) fn reached_end(&self) -> bool {
        self.reached_end
    }

    fn step(&mut self) -> Option<Segment<'a>> {
        let bytes = self.bytes;
        if std::mem::take(&mut self.in_scan) {
            self.at += scan_data_length(bytes.get(self.at..)?)?;
        }
        loop {
            // A marker: 0xFF, any fill 0xFF bytes, the code.
            if *bytes.get(self.at)? != 0xFF {
                return None;
            }
            while *bytes.get(self.at)? == 0xFF {
                self.at += 1;
            }
            let marker = *bytes.get(self.at)?;
            self.at += 1;
            match marker {
                0x01 | 0xD0..=0xD7 => continue, // no payload
                0xD9 => {
                    self.reached_end = true;
                    return Some(Segment {
                        marker,
                        body: &[],
                        end: self.at,
                    });
                }
                0xD8 => return None, // a second start of image
                _ => {}
            }
            let length = usize::from(u16::from_be_bytes([
                *bytes.get(self.at)?,
                *bytes.get(self.at + 1)?,
            ]));
            let body = bytes.get(self.at + 2..self.at.checked_add(length)?)?;
            self.at += length;
            self.in_scan = marker == 0xDA;
            return Some(Segment {
                marker,
                body,
                end: self.at,
            });
        }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        if self.ended {
            return None;
        }
        let segment = self.step();
        self.ended = segment.is_none_or(|s| s.marker == 0xD9);
        segment
    }
}

/// How many bytes of entropy-coded data (restart markers and stuffed bytes included) start
/// `data`: up to the first marker that is neither.
pub(crate) fn scan_data_length(data: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let ff = at + memchr::memchr(0xFF, &data[at..])?;
        let mut next = ff + 1;
        while *data.get(next)? == 0xFF {
            next += 1;
        }
        if !matches!(data[next], 0x00 | 0xD0..=0xD7) {
            return Some(ff);
        }
        at = next + 1;
    }
}

/// What a JPEG says about itself before its first scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo<'a> {
    /// The first frame header's marker (SOF0-SOF15) and sample precision.
    pub frame_marker: u8,
    pub precision: u8,
    pub width: u32,
    pub height: u32,
    pub components: u8,
    /// The EXIF block of the first APP1 `Exif` segment, from its TIFF header on.
    pub exif: Option<&'a [u8]>,
    /// The ICC profile of the APP2 `ICC_PROFILE` segments, joined in their order; `None`
    /// when any is missing or named twice.
    pub icc: Option<Vec<u8>>,
}

impl<'a> FileInfo<'a> {
    /// Reads the segments before the first scan; `None` when the file is not a JPEG or has
    /// no frame header before its first scan.
    pub fn read(bytes: &'a [u8]) -> Option<FileInfo<'a>> {
        let mut frame = None;
        let mut exif = None;
        let mut icc_chunks: Vec<(u8, u8, &[u8])> = Vec::new();
        for segment in Segments::of(bytes)? {
            let body = segment.body;
            match segment.marker {
                0xC0..=0xCF if frame.is_none() && !matches!(segment.marker, 0xC4 | 0xC8 | 0xCC) => {
                    frame = Some((segment.marker, body));
                }
                0xE1 if exif.is_none() && body.starts_with(b"Exif\0\0") => exif = Some(&body[6..]),
                0xE2 if body.starts_with(b"ICC_PROFILE\0") && body.len() >= 14 => {
                    icc_chunks.push((body[12], body[13], &body[14..]));
                }
                0xDA | 0xD9 => break,
                _ => {}
            }
        }
        let (frame_marker, body) = frame?;
        let icc = joined_icc(&mut icc_chunks);
        Some(FileInfo {
            frame_marker,
            precision: *body.first()?,
            height: u32::from(u16::from_be_bytes(body.get(1..3)?.try_into().ok()?)),
            width: u32::from(u16::from_be_bytes(body.get(3..5)?.try_into().ok()?)),
            components: *body.get(5)?,
            exif,
            icc,
        })
    }
}

/// The ICC profile from its APP2 chunks (sequence number from 1, count, data): all of them,
/// each once, agreeing on the count.
fn joined_icc(chunks: &mut [(u8, u8, &[u8])]) -> Option<Vec<u8>> {
    let count = chunks.first()?.1;
    chunks.sort_by_key(|c| c.0);
    let complete = usize::from(count) == chunks.len()
        && chunks
            .iter()
            .enumerate()
            .all(|(i, c)| usize::from(c.0) == i + 1 && c.1 == count);
    complete.then(|| chunks.iter().flat_map(|c| c.2.iter().copied()).collect())
}

/// A Huffman table as given in a DHT segment: code counts per length and the symbols.
#[derive(Debug, Clone)]
pub(super) struct HuffmanSpec {
    pub(super) counts: [u8; 16],
    pub(super) symbols: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct FrameComponent {
    pub(super) id: u8,
    pub(super) h: usize,
    pub(super) v: usize,
    pub(super) quant_table: usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ScanComponent {
    /// Index into the frame's components.
    pub(super) frame_index: usize,
    pub(super) dc_table: usize,
    pub(super) ac_table: usize,
}

#[derive(Debug)]
pub(super) struct Header {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) components: Vec<FrameComponent>,
    pub(super) scan: Vec<ScanComponent>,
    /// Quantisation tables in zigzag order.
    pub(super) quant: [Option<[u16; 64]>; 4],
    pub(super) dc: [Option<HuffmanSpec>; 4],
    pub(super) ac: [Option<HuffmanSpec>; 4],
    pub(super) restart_interval: usize,
    /// Offset of the first byte of entropy-coded data.
    pub(super) scan_start: usize,
}

impl Header {
    /// A header before any marker is read.
    pub(super) fn empty() -> Header {
        Header {
            width: 0,
            height: 0,
            components: Vec::new(),
            scan: Vec::new(),
            quant: [None; 4],
            dc: Default::default(),
            ac: Default::default(),
            restart_interval: 0,
            scan_start: 0,
        }
    }

    pub(super) fn parse(bytes: &[u8]) -> Option<Header> {
        let mut header = Header::empty();
        let mut adobe_transform = None;
        for segment in Segments::of(bytes)? {
            let body = segment.body;
            match segment.marker {
                0xC0 | 0xC1 => header.read_frame(body)?,
                0xC4 => header.read_huffman(body)?,
                0xDB => header.read_quant(body)?,
                0xDD => {
                    header.restart_interval =
                        usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?))
                }
                0xEE if body.starts_with(b"Adobe") => adobe_transform = body.get(11).copied(),
                0xDA => {
                    header.read_scan(body)?;
                    header.scan_start = segment.end;
                    break;
                }
                // Any other frame type: progressive, lossless, arithmetic, hierarchical.
                0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
                0xD9 => return None,
                _ => {} // APPn, COM and the like
            }
        }
        if header.scan_start == 0 {
            return None; // the walk ended before a scan
        }
        let colour_coded = header.components.len() == 3
            && adobe_transform != Some(0)
            && !header.components.iter().map(|c| c.id).eq(*b"RGB");
        (header.components.len() == 1 || colour_coded).then_some(header)
    }

    pub(super) fn read_frame(&mut self, body: &[u8]) -> Option<()> {
        if !self.components.is_empty() || *body.first()? != 8 {
            return None; // a second frame, or 12-bit samples
        }
        self.height = usize::from(u16::from_be_bytes(body.get(1..3)?.try_into().ok()?));
        self.width = usize::from(u16::from_be_bytes(body.get(3..5)?.try_into().ok()?));
        let count = usize::from(*body.get(5)?);
        if self.width == 0 || self.height == 0 || !(count == 1 || count == 3) {
            return None; // DNL-defined heights and CMYK are left to the full decoder
        }
        for c in body.get(6..6 + 3 * count)?.chunks_exact(3) {
            let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            if !(1..=2).contains(&h) || !(1..=2).contains(&v) || c[2] > 3 {
                return None;
            }
            self.components.push(FrameComponent {
                id: c[0],
                h,
                v,
                quant_table: usize::from(c[2]),
            });
        }
        Some(())
    }

    pub(super) fn read_huffman(&mut self, mut body: &[u8]) -> Option<()> {
        while !body.is_empty() {
            let (class, id) = (body[0] >> 4, usize::from(body[0] & 15));
            let counts: [u8; 16] = body.get(1..17)?.try_into().ok()?;
            let total = counts.iter().map(|&c| usize::from(c)).sum::<usize>();
            let symbols = body.get(17..17 + total)?.to_vec();
            if id > 3 || class > 1 || total > 256 {
                return None;
            }
            let spec = Some(HuffmanSpec { counts, symbols });
            if class == 0 {
                self.dc[id] = spec;
            } else {
                self.ac[id] = spec;
            }
            body = &body[17 + total..];
        }
        Some(())
    }

    pub(super) fn read_quant(&mut self, mut body: &[u8]) -> Option<()> {
        while !body.is_empty() {
            let (precision, id) = (body[0] >> 4, usize::from(body[0] & 15));
            if id > 3 || precision > 1 {
                return None;
            }
            let mut table = [0u16; 64];
            let size = if precision == 0 { 64 } else { 128 };
            let values = body.get(1..1 + size)?;
            for (i, q) in table.iter_mut().enumerate() {
                *q = if precision == 0 {
                    u16::from(values[i])
                } else {
                    u16::from_be_bytes([values[2 * i], values[2 * i + 1]])
                };
            }
            if table.contains(&0) {
                return None;
            }
            self.quant[id] = Some(table);
            body = &body[1 + size..];
        }
        Some(())
    }

    fn read_scan(&mut self, body: &[u8]) -> Option<()> {
        let count = usize::from(*body.first()?);
        if count != self.components.len() {
            return None; // components in separate scans
        }
        for c in body.get(1..1 + 2 * count)?.chunks_exact(2) {
            let frame_index = self.components.iter().position(|f| f.id == c[0])?;
            if self.scan.iter().any(|s| s.frame_index == frame_index) {
                return None; // a component named twice (and another not at all)
            }
            self.scan.push(ScanComponent {
                frame_index,
                dc_table: usize::from(c[1] >> 4),
                ac_table: usize::from(c[1] & 15),
            });
        }
        // Spectral selection 0..63, no successive approximation: sequential.
        let rest = body.get(1 + 2 * count..4 + 2 * count)?;
        (rest == [0, 63, 0]).then_some(())
    }
}

/// Where each component's blocks and reduced pixels go.
#[derive(Debug)]
pub(super) struct Layout {
    /// Output pixels per block side.
    pub(super) n: usize,
    pub(super) mcus_across: usize,
    pub(super) mcus_down: usize,
    /// Per component, in scan order.
    pub(super) components: Vec<ComponentLayout>,
    /// Blocks per MCU, all components.
    pub(super) blocks_per_mcu: usize,
    pub(super) out_width: usize,
    pub(super) out_height: usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ComponentLayout {
    /// Blocks per MCU across and down.
    pub(super) h: usize,
    pub(super) v: usize,
    /// 2 when the component is sampled at half the resolution horizontally / vertically.
    pub(super) upsample_x: usize,
    pub(super) upsample_y: usize,
    /// The reduced plane: width (row stride) and height in pixels.
    pub(super) plane_width: usize,
    pub(super) plane_height: usize,
    /// Index of this component's first block within an MCU.
    pub(super) first_block: usize,
    /// The component's place in the frame (0 = Y).
    pub(super) frame_index: usize,
}

impl Layout {
    pub(super) fn of(header: &Header, n: usize) -> Option<Layout> {
        let h_max = header.components.iter().map(|c| c.h).max()?;
        let v_max = header.components.iter().map(|c| c.v).max()?;
        let single = header.components.len() == 1;
        let luma = header.components[0];
        if !single && (luma.h, luma.v) != (h_max, v_max) {
            return None; // chroma sampled finer than luma
        }
        // A single-component scan is not interleaved: its MCU is one block.
        let (mcus_across, mcus_down) = if single {
            (header.width.div_ceil(8), header.height.div_ceil(8))
        } else {
            (
                header.width.div_ceil(8 * h_max),
                header.height.div_ceil(8 * v_max),
            )
        };
        let mut components = Vec::new();
        let mut first_block = 0;
        for s in &header.scan {
            let f = header.components[s.frame_index];
            let (h, v) = if single { (1, 1) } else { (f.h, f.v) };
            components.push(ComponentLayout {
                h,
                v,
                upsample_x: if single { 1 } else { h_max / f.h },
                upsample_y: if single { 1 } else { v_max / f.v },
                plane_width: mcus_across * h * n,
                plane_height: mcus_down * v * n,
                first_block,
                frame_index: s.frame_index,
            });
            first_block += h * v;
        }
        Some(Layout {
            n,
            mcus_across,
            mcus_down,
            components,
            blocks_per_mcu: first_block,
            out_width: (header.width * n).div_ceil(8),
            out_height: (header.height * n).div_ceil(8),
        })
    }

    pub(super) fn mcu_count(&self) -> usize {
        self.mcus_across * self.mcus_down
    }

    /// Coefficients stored per MCU (n x n per block).
    pub(super) fn coefficients_per_mcu(&self) -> usize {
        self.blocks_per_mcu * self.n * self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_that_names_a_component_twice_is_refused() {
        // Found by the jpeg_reduced fuzz target: the scan names Cb twice and Y not at all,
        // and the colour conversion then read the wrong planes.
        let bytes = include_bytes!(
            "../../../fuzz/seeds/jpeg_reduced/regression_scan_names_a_component_twice.jpg"
        );
        assert!(Header::parse(bytes).is_none());
    }

    /// A segment: marker, length, body.
    fn segment(marker: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn the_walk_steps_over_scan_data_and_ends_at_the_end_of_image() {
        let mut file = vec![0xFF, 0xD8];
        file.extend(segment(0xE0, b"JFIF\0"));
        file.extend(segment(0xDA, &[1, 1, 0, 0, 63, 0]));
        // Scan data with a stuffed byte, a restart marker and fill bytes before the next marker.
        file.extend([0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF]);
        file.extend(segment(0xDA, &[1, 1, 0, 0, 63, 0]));
        file.extend([0x78, 0xFF, 0xD9]);
        let mut segments = Segments::of(&file).unwrap();
        let markers: Vec<u8> = segments.by_ref().map(|s| s.marker).collect();
        assert_eq!(markers, [0xE0, 0xDA, 0xDA, 0xD9]);
        assert!(segments.reached_end());
        // Cut anywhere: the walk stops where the structure stops, never at an end it lacks.
        for cut in 2..file.len() - 1 {
            let mut segments = Segments::of(&file[..cut]).unwrap();
            segments.by_ref().for_each(drop);
            assert!(!segments.reached_end(), "cut at {cut}");
        }
        assert!(Segments::of(b"\x89PNG").is_none());
    }

    #[test]
    fn the_icc_profile_is_joined_in_sequence_order_only_when_complete() {
        let icc = |seq: u8, count: u8, data: &[u8]| {
            let mut body = b"ICC_PROFILE\0".to_vec();
            body.extend([seq, count]);
            body.extend_from_slice(data);
            segment(0xE2, &body)
        };
        let file = |chunks: &[Vec<u8>]| {
            let mut out = vec![0xFF, 0xD8];
            out.extend(segment(0xC0, &[8, 0, 2, 0, 3, 1, 1, 0x11, 0]));
            for chunk in chunks {
                out.extend_from_slice(chunk);
            }
            out.extend([0xFF, 0xD9]);
            out
        };
        let whole = file(&[icc(2, 2, b"def"), icc(1, 2, b"abc")]);
        let info = FileInfo::read(&whole).unwrap();
        assert_eq!(info.icc.as_deref(), Some(&b"abcdef"[..]));
        assert_eq!((info.width, info.height, info.precision), (3, 2, 8));
        assert_eq!(
            FileInfo::read(&file(&[icc(1, 2, b"abc")])).unwrap().icc,
            None
        );
        assert_eq!(
            FileInfo::read(&file(&[icc(1, 2, b"abc"), icc(1, 2, b"abc")]))
                .unwrap()
                .icc,
            None
        );
    }
}
