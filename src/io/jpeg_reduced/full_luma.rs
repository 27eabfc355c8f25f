//! Full-size luma of a few regions of a reduced decode. The source scores (noise, JPEG
//! blockiness) must see the image at the size it was made: a reduced image has its noise
//! averaged away and its texture packed into fewer pixels, where it reads as noise. The
//! entropy decoder records the bit where each MCU began; the MCUs under the regions are
//! decoded again from there with all 64 coefficients of each block, their DC predictions
//! taken from the reduced decode (the previous MCU's last DC values, or zero at the start of
//! a restart interval), and their luma blocks transformed at 8x8. Each MCU decoded again must
//! give the DC values the reduced decode gave it, or nothing is returned.

use super::entropy::{decode_mcus, EntropyData, McuReader, ScanTables, MAX_SCAN_COMPONENTS};
use super::header::{Header, Layout};
use super::parallel::Coefficients;
use super::pixels::{idct_8x8, idct_basis};

/// A square of the stored image (before any EXIF orientation), in full-size pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub size: usize,
}

/// Not decoded yet, in [`luma_regions`]'s index of MCUs.
const NOT_DECODED: u32 = u32::MAX;

/// Each region's luma (Y) samples at full size, rows packed, from the reduced decode's
/// `coefficients` (with `reduced` their layout). `None` when a region leaves the image or an
/// MCU does not decode again as it did.
pub(super) fn luma_regions(
    header: &Header,
    data: &EntropyData,
    reduced: &Layout,
    coefficients: &Coefficients,
    regions: &[Region],
) -> Option<Vec<Vec<u8>>> {
    let full = FullDecode::new(header, data, reduced, coefficients)?;
    let (mcu_w, mcu_h) = full.mcu_size();
    // Each MCU's luma pixels (mcu_w x mcu_h) once decoded, by index into `pixels`.
    let mut slot = vec![NOT_DECODED; full.layout.mcu_count()];
    let mut pixels: Vec<u8> = Vec::new();
    let mut scratch = vec![0i16; full.layout.coefficients_per_mcu()];
    let mut out = Vec::with_capacity(regions.len());
    for region in regions {
        let (x0, y0, size) = (region.x, region.y, region.size);
        if size == 0 || x0 + size > header.width || y0 + size > header.height {
            return None;
        }
        let (x1, y1) = (x0 + size, y0 + size);
        for my in y0 / mcu_h..y1.div_ceil(mcu_h) {
            for mx in x0 / mcu_w..x1.div_ceil(mcu_w) {
                let index = my * full.layout.mcus_across + mx;
                if slot[index] == NOT_DECODED {
                    slot[index] = u32::try_from(pixels.len() / (mcu_w * mcu_h)).ok()?;
                    pixels.resize(pixels.len() + mcu_w * mcu_h, 0);
                    let at = pixels.len() - mcu_w * mcu_h;
                    full.luma_of_mcu(index, &mut scratch, &mut pixels[at..])?;
                }
            }
        }
        let mut luma = vec![0u8; size * size];
        for (y, row) in (y0..y1).zip(luma.chunks_exact_mut(size)) {
            // The row's pieces, one per MCU it crosses.
            let mut x = x0;
            while x < x1 {
                let mx = x / mcu_w;
                let end = ((mx + 1) * mcu_w).min(x1);
                let at = slot[(y / mcu_h) * full.layout.mcus_across + mx] as usize;
                let mcu = &pixels[at * mcu_w * mcu_h..][..mcu_w * mcu_h];
                let line = &mcu[(y % mcu_h) * mcu_w..][..mcu_w];
                row[x - x0..end - x0].copy_from_slice(&line[x % mcu_w..x % mcu_w + (end - x)]);
                x = end;
            }
        }
        out.push(luma);
    }
    Some(out)
}

/// What decoding an MCU again needs.
struct FullDecode<'a> {
    data: &'a EntropyData,
    /// The layout and tables of a full-size decode.
    layout: Layout,
    tables: ScanTables,
    reduced: &'a Layout,
    coefficients: &'a Coefficients,
    /// MCUs per restart interval, 0 without restart markers.
    restart_interval: usize,
    luma_scan: usize,
    basis: [[f32; 8]; 8],
}

impl<'a> FullDecode<'a> {
    fn new(
        header: &Header,
        data: &'a EntropyData,
        reduced: &'a Layout,
        coefficients: &'a Coefficients,
    ) -> Option<FullDecode<'a>> {
        let layout = Layout::of(header, 8)?;
        let luma_scan = layout.components.iter().position(|c| c.frame_index == 0)?;
        Some(FullDecode {
            data,
            tables: ScanTables::of(header, 8)?,
            layout,
            reduced,
            coefficients,
            restart_interval: if data.restarts.is_empty() {
                0
            } else {
                header.restart_interval
            },
            luma_scan,
            basis: idct_basis::<8>(),
        })
    }

    /// An MCU's luma size in pixels.
    fn mcu_size(&self) -> (usize, usize) {
        let luma = &self.layout.components[self.luma_scan];
        (8 * luma.h, 8 * luma.v)
    }

    /// Decodes MCU `index` again at full size (into `scratch`) and transforms its luma blocks
    /// into `pixels` (the MCU's luma, rows packed).
    fn luma_of_mcu(&self, index: usize, scratch: &mut [i16], pixels: &mut [u8]) -> Option<()> {
        let per_block = self.reduced.n * self.reduced.n;
        let starts_interval = index == 0
            || (self.restart_interval > 0 && index.is_multiple_of(self.restart_interval));
        let mut predictions = [0i16; MAX_SCAN_COMPONENTS];
        if !starts_interval {
            let (previous, offset) = self.coefficients.mcu(index - 1);
            for (c, component) in self.reduced.components.iter().enumerate() {
                let last = component.first_block + component.h * component.v - 1;
                let c = c % MAX_SCAN_COMPONENTS;
                predictions[c] = previous[last * per_block].wrapping_add(offset[c]);
            }
        }
        let start = self.coefficients.start_bit(index)?;
        let mut reader = McuReader::at_bit(&self.data.bytes, start, predictions);
        let (decoded, failed) = decode_mcus(
            &mut reader,
            &self.layout,
            &self.tables,
            scratch,
            usize::MAX,
            None,
        );
        if failed || decoded != 1 {
            return None;
        }
        // The same MCU, decoded the same way: the same DC values.
        let (kept, offset) = self.coefficients.mcu(index);
        for (c, component) in self.reduced.components.iter().enumerate() {
            for block in component.first_block..component.first_block + component.h * component.v {
                let reduced_dc =
                    kept[block * per_block].wrapping_add(offset[c % MAX_SCAN_COMPONENTS]);
                if reduced_dc != scratch[block * 64] {
                    return None;
                }
            }
        }
        let luma = &self.layout.components[self.luma_scan];
        let (mcu_w, _) = self.mcu_size();
        let quant = &self.tables.quant[self.luma_scan];
        for by in 0..luma.v {
            for bx in 0..luma.h {
                let block = &scratch[(luma.first_block + by * luma.h + bx) * 64..][..64];
                let out = &mut pixels[by * 8 * mcu_w + bx * 8..];
                idct_8x8(block, quant, &self.basis, out, mcu_w);
            }
        }
        Some(())
    }
}
