//! Progressive JPEGs shrunk on load, as libjpeg-turbo shrinks them: every scan's
//! coefficients are decoded (spectral selection and successive approximation, ITU T.81
//! G.1.2), then each block goes through the same reduced inverse transform as a baseline
//! file's. Only what a reduced decode needs is kept: the n x n lowest frequencies of each
//! block, and which of its 64 coefficients are nonzero (the refinement scans read a
//! correction bit for each of those). A scan whose band lies wholly above the kept
//! frequencies is not decoded at all: at 1/8 that is every AC scan, at 1/4 most of them.
//!
//! What this decoder does not take (arithmetic coding, 12-bit, CMYK, a table redefined
//! between scans, damage) gives `None`, and the caller decodes another way.

use super::entropy::{Bits, Class, EntropyData, Huffman, ScanTables};
use super::header::{Header, Layout, ScanComponent, Segments};
use super::parallel::Coefficients;

/// A progressive file decoded to its kept coefficients, ready for the inverse transform.
pub(super) struct Decoded {
    pub(super) layout: Layout,
    pub(super) tables: ScanTables,
    pub(super) coefficients: Coefficients,
}

/// Decodes a progressive (SOF2) file's coefficients at `n`/8; `None` for anything else.
/// With `parallel`, the scans of each component (and the DC scans) are decoded on threads
/// of their own: a component's scans depend on each other, different components' do not.
pub(super) fn decode(bytes: &[u8], n: usize, parallel: bool) -> Option<Decoded> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut header = Header::empty();
    let mut adobe_transform = None;
    let mut frame: Option<Frame> = None;
    let needed = needed_scans(&scan_bands(bytes)?, kept_zigzag_limit(n));
    let mut jobs = Vec::new();
    let mut scan_index = 0;
    let mut segments = Segments::of(bytes)?;
    for segment in &mut segments {
        let body = segment.body;
        match segment.marker {
            0xC2 if header.components.is_empty() => header.read_frame(body)?,
            0xC4 => header.read_huffman(body)?,
            // Dequantisation is fixed at the first scan.
            0xDB if frame.is_none() => header.read_quant(body)?,
            0xDD => {
                header.restart_interval =
                    usize::from(u16::from_be_bytes(body.get(..2)?.try_into().ok()?))
            }
            0xEE if body.starts_with(b"Adobe") => adobe_transform = body.get(11).copied(),
            0xDA => {
                if frame.is_none() {
                    frame = Some(Frame::new(&mut header, adobe_transform, n)?);
                }
                let scan = Scan::parse(body, &header)?;
                if *needed.get(scan_index)? {
                    let (data, _) = EntropyData::unstuff_scan(bytes.get(segment.end..)?)?;
                    jobs.push(ScanJob::new(scan, &header, data)?);
                }
                scan_index += 1;
            }
            // Every other frame type, a second frame, a late table.
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDB => return None,
            _ => {} // APPn, COM, EOI and the like
        }
    }
    if !segments.reached_end() {
        return None; // cut short, or broken structure
    }
    let frame = frame?;
    let mut planes: Vec<Plane> = frame.grids.iter().map(|g| Plane::new(g, n)).collect();
    let mut dc: Vec<Vec<i16>> = frame
        .grids
        .iter()
        .map(|g| vec![0; g.padded_len()])
        .collect();
    // The DC scans as one piece of work, each component's AC scans as another.
    let mut work = vec![Work::Dc {
        jobs: jobs.iter().filter(|j| j.scan.start == 0).collect(),
        dc: &mut dc,
    }];
    for (c, plane) in planes.iter_mut().enumerate() {
        work.push(Work::Ac {
            jobs: jobs
                .iter()
                .filter(|j| j.scan.start > 0 && j.scan.components[0].frame_index == c)
                .collect(),
            plane,
        });
    }
    let done = if parallel {
        use rayon::prelude::*;
        work.into_par_iter()
            .map(|w| w.run(&frame))
            .collect::<Option<Vec<()>>>()
    } else {
        work.into_iter()
            .map(|w| w.run(&frame))
            .collect::<Option<Vec<()>>>()
    };
    done?;
    let values = frame.in_mcu_order(&planes, &dc);
    let per_mcu = frame.layout.coefficients_per_mcu();
    Some(Decoded {
        coefficients: Coefficients::whole(per_mcu, values, Vec::new()),
        layout: frame.layout,
        tables: frame.tables,
    })
}

/// One scan's header: its components, band and bit positions.
struct Scan {
    components: Vec<ScanComponent>,
    /// The band: first and last zigzag index.
    start: usize,
    end: usize,
    /// Successive approximation: the bit position of the previous scan of this band (0 for
    /// the first), and of this one.
    high: u32,
    low: u32,
}

impl Scan {
    fn parse(body: &[u8], header: &Header) -> Option<Scan> {
        let count = usize::from(*body.first()?);
        if count == 0 || count > header.components.len() {
            return None;
        }
        let mut components = Vec::with_capacity(count);
        for c in body.get(1..1 + 2 * count)?.chunks_exact(2) {
            let frame_index = header.components.iter().position(|f| f.id == c[0])?;
            if components
                .iter()
                .any(|s: &ScanComponent| s.frame_index == frame_index)
            {
                return None; // a component named twice
            }
            components.push(ScanComponent {
                frame_index,
                dc_table: usize::from(c[1] >> 4),
                ac_table: usize::from(c[1] & 15),
            });
        }
        let rest = body.get(1 + 2 * count..4 + 2 * count)?;
        let (start, end) = (usize::from(rest[0]), usize::from(rest[1]));
        let (high, low) = (u32::from(rest[2] >> 4), u32::from(rest[2] & 15));
        let band_ok = if start == 0 {
            end == 0
        } else {
            count == 1 && start <= end && end <= 63
        };
        let bits_ok = low <= 13 && (high == 0 || high == low + 1);
        (band_ok && bits_ok).then_some(Scan {
            components,
            start,
            end,
            high,
            low,
        })
    }
}

/// The highest zigzag index of an n x n block's lowest frequencies.
fn kept_zigzag_limit(n: usize) -> usize {
    (0..64)
        .filter(|&k| {
            let natural = super::entropy::ZIGZAG_TO_NATURAL[k];
            natural / 8 < n && natural % 8 < n
        })
        .max()
        .unwrap_or(0)
}

/// What the decode needs to know of each scan before decoding any: its components (by
/// frame id), band and whether it refines.
struct ScanBand {
    components: Vec<u8>,
    start: usize,
    end: usize,
    refines: bool,
}

/// The band of every scan in `bytes`, walking the markers and skipping each scan's data.
fn scan_bands(bytes: &[u8]) -> Option<Vec<ScanBand>> {
    let mut bands = Vec::new();
    let mut segments = Segments::of(bytes)?;
    for segment in segments.by_ref().filter(|s| s.marker == 0xDA) {
        let body = segment.body;
        let count = usize::from(*body.first()?);
        let ids = body
            .get(1..1 + 2 * count)?
            .iter()
            .step_by(2)
            .copied()
            .collect();
        let rest = body.get(1 + 2 * count..4 + 2 * count)?;
        bands.push(ScanBand {
            components: ids,
            start: usize::from(rest[0]),
            end: usize::from(rest[1]).min(63),
            refines: rest[2] >> 4 != 0,
        });
    }
    segments.reached_end().then_some(bands)
}

/// Which scans a decode keeping zigzag indices up to `last_kept` must decode: those that
/// code a kept coefficient, and every scan whose band a needed refinement scan refines (a
/// refinement reads a correction bit for each coefficient already nonzero in its band, so
/// the scans that made them nonzero must be known), to a fixed point, per component.
fn needed_scans(bands: &[ScanBand], last_kept: usize) -> Vec<bool> {
    let band_mask = |b: &ScanBand| -> u64 {
        (b.start..=b.end.max(b.start)).fold(0u64, |mask, k| mask | 1 << k.min(63))
    };
    let mut needed: Vec<bool> = bands.iter().map(|b| b.start <= last_kept).collect();
    // Per component id: the coefficients whose nonzero history a needed refinement reads.
    let mut history = [0u64; 256];
    loop {
        for (band, &is_needed) in bands.iter().zip(&needed) {
            if is_needed && band.refines {
                for &id in &band.components {
                    history[usize::from(id)] |= band_mask(band);
                }
            }
        }
        let mut changed = false;
        for (band, is_needed) in bands.iter().zip(needed.iter_mut()) {
            let touches = band
                .components
                .iter()
                .any(|&id| history[usize::from(id)] & band_mask(band) != 0);
            if !*is_needed && touches {
                *is_needed = true;
                changed = true;
            }
        }
        if !changed {
            return needed;
        }
    }
}

/// A scan to decode, with the Huffman tables and restart interval in force at its start.
struct ScanJob {
    scan: Scan,
    /// Per scan component: DC tables of a DC first scan; the one AC table of an AC scan.
    dc: Vec<Huffman>,
    ac: Option<Huffman>,
    restart_interval: usize,
    data: EntropyData,
}

impl ScanJob {
    fn new(scan: Scan, header: &Header, data: EntropyData) -> Option<ScanJob> {
        let mut dc = Vec::new();
        let mut ac = None;
        for component in &scan.components {
            if scan.start == 0 {
                if scan.high == 0 {
                    let spec = header.dc.get(component.dc_table)?.as_ref()?;
                    dc.push(Huffman::new(spec, Class::Dc)?);
                }
            } else {
                let spec = header.ac.get(component.ac_table)?.as_ref()?;
                ac = Some(Huffman::new(spec, Class::Ac)?);
            }
        }
        Some(ScanJob {
            scan,
            dc,
            ac,
            restart_interval: header.restart_interval,
            data,
        })
    }
}

/// Where a component's blocks lie: its grid padded to whole MCUs (what an interleaved scan
/// and the transform cover), and the blocks a scan of it alone covers.
struct Grid {
    padded_across: usize,
    padded_down: usize,
    across: usize,
    down: usize,
    /// Blocks per MCU across and down.
    h: usize,
    v: usize,
}

impl Grid {
    fn padded_len(&self) -> usize {
        self.padded_across * self.padded_down
    }
}

/// The frame: its layout for the transform, and each component's block grid.
struct Frame {
    layout: Layout,
    tables: ScanTables,
    /// Where each zigzag index is kept in an n x n block.
    slots: [Option<u8>; 64],
    grids: Vec<Grid>,
}

impl Frame {
    fn new(header: &mut Header, adobe_transform: Option<u8>, n: usize) -> Option<Frame> {
        let count = header.components.len();
        let colour_coded = count == 3
            && adobe_transform != Some(0)
            && !header.components.iter().map(|c| c.id).eq(*b"RGB");
        if !(count == 1 || colour_coded) {
            return None;
        }
        header.scan = (0..count)
            .map(|frame_index| ScanComponent {
                frame_index,
                dc_table: 0,
                ac_table: 0,
            })
            .collect();
        let layout = Layout::of(header, n)?;
        let tables = ScanTables::dequantising(header, n)?;
        let h_max = header.components.iter().map(|c| c.h).max()?;
        let v_max = header.components.iter().map(|c| c.v).max()?;
        let grids = header
            .components
            .iter()
            .zip(&layout.components)
            .map(|(c, placed)| {
                let width = (header.width * c.h).div_ceil(h_max);
                let height = (header.height * c.v).div_ceil(v_max);
                Grid {
                    padded_across: layout.mcus_across * placed.h,
                    padded_down: layout.mcus_down * placed.v,
                    across: width.div_ceil(8),
                    down: height.div_ceil(8),
                    h: placed.h,
                    v: placed.v,
                }
            })
            .collect();
        Some(Frame {
            slots: tables.kept_slots(),
            layout,
            tables,
            grids,
        })
    }

    /// Calls `block` for every block `job` codes, in its order (an interleaved scan by
    /// MCU, a scan of one component row by row), with the reader, the scan component and
    /// the block's index in that component's grid; each restart interval starts with a fresh
    /// reader, predictions and end-of-band run.
    fn for_each_block(
        &self,
        job: &ScanJob,
        mut block: impl FnMut(&mut Bits, usize, usize, &mut [i32; 4], &mut u32) -> Option<()>,
    ) -> Option<()> {
        let scan = &job.scan;
        let single = scan.components.len() == 1;
        let units = if single {
            let grid = &self.grids[scan.components[0].frame_index];
            grid.across * grid.down
        } else {
            self.layout.mcu_count()
        };
        let interval = match job.restart_interval {
            0 => units.max(1),
            interval => interval,
        };
        if job.data.restarts.len() + 1 != units.div_ceil(interval).max(1) {
            return None; // markers the header did not announce, or too few or too many
        }
        for first in (0..units).step_by(interval) {
            let i = first / interval;
            let start = if i == 0 { 0 } else { job.data.restarts[i - 1] };
            let end = job
                .data
                .restarts
                .get(i)
                .copied()
                .unwrap_or(job.data.bytes.len());
            let mut bits = Bits::new(&job.data.bytes[..end], start);
            let mut predictions = [0i32; 4];
            let mut end_of_bands = 0u32;
            for unit in first..(first + interval).min(units) {
                if single {
                    let grid = &self.grids[scan.components[0].frame_index];
                    let (x, y) = (unit % grid.across, unit / grid.across);
                    let index = y * grid.padded_across + x;
                    block(&mut bits, 0, index, &mut predictions, &mut end_of_bands)?;
                    continue;
                }
                let (mcu_x, mcu_y) = (
                    unit % self.layout.mcus_across,
                    unit / self.layout.mcus_across,
                );
                for (s, component) in scan.components.iter().enumerate() {
                    let grid = &self.grids[component.frame_index];
                    for by in 0..grid.v {
                        for bx in 0..grid.h {
                            let (x, y) = (mcu_x * grid.h + bx, mcu_y * grid.v + by);
                            let index = y * grid.padded_across + x;
                            block(&mut bits, s, index, &mut predictions, &mut end_of_bands)?;
                        }
                    }
                }
            }
            if bits.overran() {
                return None;
            }
        }
        Some(())
    }

    /// Every block's kept coefficients in the MCU order a baseline decode stores them, DC
    /// values from `dc`.
    fn in_mcu_order(&self, planes: &[Plane], dc: &[Vec<i16>]) -> Vec<i16> {
        let layout = &self.layout;
        let n2 = layout.n * layout.n;
        let mut values =
            crate::io::system::zeroed_large(layout.mcu_count() * layout.coefficients_per_mcu());
        for (c, (grid, (plane, dc))) in self.grids.iter().zip(planes.iter().zip(dc)).enumerate() {
            let first_block = layout.components[c].first_block;
            for y in 0..grid.padded_down {
                for x in 0..grid.padded_across {
                    let source = y * grid.padded_across + x;
                    let mcu = (y / grid.v) * layout.mcus_across + x / grid.h;
                    let block = mcu * layout.blocks_per_mcu
                        + first_block
                        + (y % grid.v) * grid.h
                        + x % grid.h;
                    let target = &mut values[block * n2..][..n2];
                    target.copy_from_slice(&plane.values[source * n2..][..n2]);
                    target[0] = dc[source];
                }
            }
        }
        values
    }
}

/// One component's AC coefficients: per block of its padded grid, the kept n x n (the DC
/// slot unused) and the map of nonzero coefficients.
struct Plane {
    values: Vec<i16>,
    nonzero: Vec<u64>,
}

impl Plane {
    fn new(grid: &Grid, n: usize) -> Plane {
        Plane {
            values: crate::io::system::zeroed_large(grid.padded_len() * n * n),
            nonzero: crate::io::system::zeroed_large(grid.padded_len()),
        }
    }
}

/// A share of the decoding that owns what it writes: the DC scans (every component's DC
/// values), or one component's AC scans.
enum Work<'a> {
    Dc {
        jobs: Vec<&'a ScanJob>,
        dc: &'a mut [Vec<i16>],
    },
    Ac {
        jobs: Vec<&'a ScanJob>,
        plane: &'a mut Plane,
    },
}

impl Work<'_> {
    fn run(self, frame: &Frame) -> Option<()> {
        match self {
            Work::Dc { jobs, dc } => {
                for job in jobs {
                    let scan = &job.scan;
                    let frame_index = |s: usize| scan.components[s].frame_index;
                    frame.for_each_block(job, |bits, s, index, predictions, _| {
                        let value = &mut dc[frame_index(s)][index];
                        if scan.high == 0 {
                            dc_first(bits, &job.dc[s], &mut predictions[s], scan.low, value)
                        } else {
                            dc_refine(bits, scan.low, value);
                            Some(())
                        }
                    })?;
                }
                Some(())
            }
            Work::Ac { jobs, plane } => {
                let n2 = frame.layout.n * frame.layout.n;
                for job in jobs {
                    let table = job.ac.as_ref()?;
                    let scan = &job.scan;
                    frame.for_each_block(job, |bits, _, index, _, end_of_bands| {
                        let mut block = Block {
                            values: &mut plane.values[index * n2..][..n2],
                            nonzero: &mut plane.nonzero[index],
                            slots: &frame.slots,
                        };
                        if scan.high == 0 {
                            ac_first(bits, table, scan, end_of_bands, &mut block)
                        } else {
                            ac_refine(bits, table, scan, end_of_bands, &mut block)
                        }
                    })?;
                }
                Some(())
            }
        }
    }
}

/// One block's kept coefficients and nonzero map.
struct Block<'a> {
    values: &'a mut [i16],
    nonzero: &'a mut u64,
    slots: &'a [Option<u8>; 64],
}

impl Block<'_> {
    fn set(&mut self, k: usize, value: i16) {
        *self.nonzero |= 1 << k;
        if let Some(slot) = self.slots[k] {
            self.values[usize::from(slot)] = value;
        }
    }

    /// A refinement's correction bit for the nonzero coefficient `k`: its magnitude grows
    /// by `bit` (unless a refinement already set that bit).
    fn correct(&mut self, k: usize, bit: i16) {
        if let Some(slot) = self.slots[k] {
            let value = &mut self.values[usize::from(slot)];
            if *value & bit == 0 {
                *value = if *value >= 0 {
                    value.wrapping_add(bit)
                } else {
                    value.wrapping_sub(bit)
                };
            }
        }
    }
}

fn bits_of(bits: &mut Bits, count: u32) -> u32 {
    if bits.count < 32 {
        bits.refill();
    }
    if count == 0 {
        return 0;
    }
    let value = bits.peek(count) as u32;
    bits.consume(count);
    value
}

fn symbol(bits: &mut Bits, table: &Huffman) -> Option<u8> {
    if bits.count < 32 {
        bits.refill();
    }
    table.decode(bits)
}

/// A DC first scan: the difference from the prediction, scaled by `low`.
fn dc_first(
    bits: &mut Bits,
    table: &Huffman,
    prediction: &mut i32,
    low: u32,
    value: &mut i16,
) -> Option<()> {
    let size = u32::from(symbol(bits, table)?);
    if size > 11 {
        return None;
    }
    *prediction = prediction.wrapping_add(bits.signed(size));
    *value = (*prediction << low) as i16;
    Some(())
}

/// A DC refinement scan: one more bit of the value.
fn dc_refine(bits: &mut Bits, low: u32, value: &mut i16) {
    if bits_of(bits, 1) == 1 {
        *value |= 1 << low;
    }
}

/// An AC first scan of the band: coefficients and end-of-band runs that span blocks.
fn ac_first(
    bits: &mut Bits,
    table: &Huffman,
    scan: &Scan,
    end_of_bands: &mut u32,
    block: &mut Block,
) -> Option<()> {
    if *end_of_bands > 0 {
        *end_of_bands -= 1;
        return Some(());
    }
    let mut k = scan.start;
    while k <= scan.end {
        let rs = symbol(bits, table)?;
        let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
        if size == 0 {
            if run < 15 {
                *end_of_bands = (1 << run) + bits_of(bits, run as u32) - 1;
                break;
            }
            k += 16;
            continue;
        }
        k += run;
        if k > scan.end || size > 10 {
            return None;
        }
        block.set(k, (bits.signed(size) << scan.low) as i16);
        k += 1;
    }
    Some(())
}

/// An AC refinement scan of the band: a correction bit for each coefficient already
/// nonzero, and new coefficients of magnitude 1 << low among the zero ones.
fn ac_refine(
    bits: &mut Bits,
    table: &Huffman,
    scan: &Scan,
    end_of_bands: &mut u32,
    block: &mut Block,
) -> Option<()> {
    let bit = 1i16 << scan.low;
    let mut k = scan.start;
    if *end_of_bands == 0 {
        while k <= scan.end {
            let rs = symbol(bits, table)?;
            let (zeros, size) = (i32::from(rs >> 4), rs & 15);
            let mut value = 0i16;
            if size != 0 {
                if size != 1 {
                    return None;
                }
                value = if bits_of(bits, 1) == 1 { bit } else { -bit };
            } else if zeros != 15 {
                *end_of_bands = (1 << zeros) + bits_of(bits, zeros as u32);
                break;
            }
            // Past the nonzero coefficients (each takes a correction bit) and `zeros` zero
            // ones, to the one the new value goes to (past the band: none is left).
            let mut zeros_left = !*block.nonzero & band_bits(k, scan.end);
            for _ in 0..zeros {
                zeros_left &= zeros_left.wrapping_sub(1);
            }
            let target = if zeros_left == 0 {
                scan.end + 1
            } else {
                zeros_left.trailing_zeros() as usize
            };
            let passed = *block.nonzero & band_bits(k, target.saturating_sub(1));
            correct_each(bits, block, passed, bit);
            k = target;
            if value != 0 {
                if k > scan.end {
                    return None;
                }
                block.set(k, value);
            }
            k += 1;
        }
    }
    if *end_of_bands > 0 {
        let rest = *block.nonzero & band_bits(k, scan.end);
        correct_each(bits, block, rest, bit);
        *end_of_bands -= 1;
    }
    Some(())
}

/// Zigzag indices `from..=to` as bits; none when `from > to`.
fn band_bits(from: usize, to: usize) -> u64 {
    if from > to || from > 63 {
        return 0;
    }
    (u64::MAX << from) & (u64::MAX >> (63 - to.min(63)))
}

/// Reads a correction bit for each coefficient in `nonzero` (zigzag indices as bits),
/// lowest first.
fn correct_each(bits: &mut Bits, block: &mut Block, mut nonzero: u64, bit: i16) {
    while nonzero != 0 {
        let k = nonzero.trailing_zeros() as usize;
        nonzero &= nonzero - 1;
        if bits_of(bits, 1) == 1 {
            block.correct(k, bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn band(id: u8, start: usize, end: usize, refines: bool) -> ScanBand {
        ScanBand {
            components: vec![id],
            start,
            end,
            refines,
        }
    }

    #[test]
    fn a_refinement_of_a_kept_band_needs_every_scan_of_that_band() {
        // libjpeg's default script for the luma (component 1) and one chroma component (2).
        let script = [
            ScanBand {
                components: vec![1, 2],
                start: 0,
                end: 0,
                refines: false,
            },
            band(1, 1, 5, false),
            band(2, 1, 63, false),
            band(1, 6, 63, false),
            band(1, 1, 63, true),
            band(2, 1, 63, true),
        ];
        // At 1/8 only the DC scan.
        assert_eq!(
            needed_scans(&script, kept_zigzag_limit(1)),
            [true, false, false, false, false, false]
        );
        // At 2/8 (zigzag 0..=4 kept) the 6-63 scan codes nothing kept, but the 1-63
        // refinement reads a bit for each coefficient it made nonzero.
        assert_eq!(kept_zigzag_limit(2), 4);
        assert_eq!(needed_scans(&script, 4), [true; 6]);
        // A band above the kept ones, refined only above them too, is skipped.
        let split = [
            band(1, 0, 0, false),
            band(1, 1, 5, false),
            band(1, 6, 63, false),
            band(1, 6, 63, true),
        ];
        assert_eq!(needed_scans(&split, 4), [true, true, false, false]);
    }
}
