//! The markers up to the scan: frame, tables, restart interval, scan; and where each
//! component's blocks and reduced pixels go.

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
        if bytes.get(..2)? != [0xFF, 0xD8] {
            return None;
        }
        let mut header = Header::empty();
        let mut adobe_transform = None;
        let mut at = 2;
        loop {
            // A marker: 0xFF, any fill 0xFF bytes, the code.
            if *bytes.get(at)? != 0xFF {
                return None;
            }
            while *bytes.get(at)? == 0xFF {
                at += 1;
            }
            let marker = *bytes.get(at)?;
            at += 1;
            if matches!(marker, 0x01 | 0xD0..=0xD7) {
                continue; // no payload
            }
            let length = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
            let body = bytes.get(at + 2..at.checked_add(length)?)?;
            at += length;
            match marker {
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
                    header.scan_start = at;
                    break;
                }
                // Any other frame type: progressive, lossless, arithmetic, hierarchical.
                0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
                0xD9 => return None,
                _ => {} // APPn, COM and the like
            }
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
            return None; // DNL-defined heights and CMYK are left to jpeg-decoder
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
}
