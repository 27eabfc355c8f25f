//! The entropy-coded data: unstuffing, the bit reader, Huffman tables and MCU decoding
//! (how two threads share it is in `parallel`).

use super::header::{Header, HuffmanSpec, Layout};

/// The entropy-coded segment with byte stuffing removed, and where each restart interval
/// begins in it.
pub(super) struct EntropyData {
    pub(super) bytes: Vec<u8>,
    /// Offsets in `bytes` of the intervals after the first.
    pub(super) restarts: Vec<usize>,
}

impl EntropyData {
    /// Copies the scan's data up to the next marker that is not a restart marker, which must
    /// be the end of the image (anything else means more scans, left to the full decoder).
    pub(super) fn unstuff(data: &[u8]) -> Option<EntropyData> {
        let (entropy, marker_at) = EntropyData::unstuff_scan(data)?;
        let code = data[marker_at..].iter().find(|&&b| b != 0xFF)?;
        (*code == 0xD9).then_some(entropy)
    }

    /// Copies a scan's data up to the next marker that is not a restart marker (of a
    /// progressive file: tables, the next scan or the end); returns it and that marker's
    /// offset in `data`.
    pub(super) fn unstuff_scan(data: &[u8]) -> Option<(EntropyData, usize)> {
        let mut bytes = crate::io::system::with_capacity_large(data.len());
        let mut restarts = Vec::new();
        let mut at = 0;
        loop {
            let ff = at + memchr::memchr(0xFF, &data[at..])?;
            bytes.extend_from_slice(&data[at..ff]);
            let mut next = ff + 1;
            while *data.get(next)? == 0xFF {
                next += 1; // fill bytes
            }
            match data[next] {
                0x00 => bytes.push(0xFF),
                0xD0..=0xD7 => restarts.push(bytes.len()),
                _ => return Some((EntropyData { bytes, restarts }, ff)),
            }
            at = next + 1;
        }
    }
}

/// A big-endian bit reader over unstuffed data; reads past the end give zero bits.
#[derive(Clone)]
pub(super) struct Bits<'a> {
    data: &'a [u8],
    /// Next byte to load.
    at: usize,
    /// Bits not yet consumed, left-aligned; `count` of them are valid.
    buffer: u64,
    pub(super) count: u32,
}

impl<'a> Bits<'a> {
    pub(super) fn new(data: &'a [u8], at: usize) -> Bits<'a> {
        Bits {
            data,
            at,
            buffer: 0,
            count: 0,
        }
    }

    /// The bit offset of the next unread bit.
    pub(super) fn position(&self) -> usize {
        self.at * 8 - self.count as usize
    }

    /// Whether more bits have been read than the data holds.
    pub(super) fn overran(&self) -> bool {
        self.position() > self.data.len() * 8
    }

    /// Tops the buffer up to at least 56 valid bits. The bits past `count` are either zero
    /// or the true next bits, so loading the same bytes again is harmless.
    #[inline(always)]
    pub(super) fn refill(&mut self) {
        let word = match self.data.get(self.at..self.at + 8) {
            Some(eight) => u64::from_be_bytes(eight.try_into().expect("eight bytes")),
            None => {
                let mut padded = [0u8; 8];
                if self.at < self.data.len() {
                    let rest = &self.data[self.at..];
                    padded[..rest.len()].copy_from_slice(rest);
                }
                u64::from_be_bytes(padded)
            }
        };
        self.buffer |= word >> self.count;
        let loaded = (63 - self.count) >> 3;
        self.at += loaded as usize;
        self.count += loaded * 8;
    }

    #[inline(always)]
    pub(super) fn peek(&self, bits: u32) -> u64 {
        self.buffer >> (64 - bits)
    }

    #[inline(always)]
    pub(super) fn consume(&mut self, bits: u32) {
        self.buffer <<= bits;
        self.count -= bits;
    }

    /// `bits` more bits as a signed coefficient (JPEG's "receive and extend").
    #[inline(always)]
    pub(super) fn signed(&mut self, bits: u32) -> i32 {
        if bits == 0 {
            return 0;
        }
        let value = self.peek(bits) as i32;
        self.consume(bits);
        extend(value, bits)
    }
}

/// Bits decoded per table lookup; longer codes take the slow path.
const LOOKUP_BITS: u32 = 9;

/// Bits looked at for decoding a code and its value bits in one table lookup.
const FAST_BITS: u32 = 10;

/// A Huffman decoding table.
pub(super) struct Huffman {
    /// By the next FAST_BITS bits, when the code and the value bits after it fit in them:
    /// value << 16 | zero run << 8 | bits used; 0 when they do not. For AC tables an
    /// end-of-block has value 0 and run 0, a run of sixteen zeros value 0 and run 16.
    fast: Box<[i32; 1 << FAST_BITS]>,
    /// By the next LOOKUP_BITS bits: code length << 8 | symbol, or 0 for a longer code.
    lookup: Box<[u16; 1 << LOOKUP_BITS]>,
    /// For each length, the largest code of that length (-1: none), and the offset from a
    /// code to its symbol's index.
    max_code: [i32; 17],
    offset: [i32; 17],
    symbols: Vec<u8>,
}

/// Which coefficients a table codes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Dc,
    Ac,
}

impl Huffman {
    pub(super) fn new(spec: &HuffmanSpec, class: Class) -> Option<Huffman> {
        let mut lookup = Box::new([0u16; 1 << LOOKUP_BITS]);
        let mut max_code = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut code = 0i32;
        let mut index = 0usize;
        for length in 1..=16u32 {
            let count = i32::from(spec.counts[length as usize - 1]);
            offset[length as usize] = index as i32 - code;
            for _ in 0..count {
                if length <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - length;
                    let first = (code as usize) << shift;
                    let entry = (length as u16) << 8 | u16::from(spec.symbols[index]);
                    lookup.get_mut(first..first + (1 << shift))?.fill(entry);
                }
                code += 1;
                index += 1;
            }
            if count > 0 {
                max_code[length as usize] = code - 1;
            }
            if code > 1 << length {
                return None; // more codes than the length allows
            }
            code <<= 1;
        }
        let fast = fast_table(&lookup, class);
        Some(Huffman {
            fast,
            lookup,
            max_code,
            offset,
            symbols: spec.symbols.clone(),
        })
    }

    /// The next symbol; the buffer must hold at least 16 valid bits.
    #[inline(always)]
    pub(super) fn decode(&self, bits: &mut Bits) -> Option<u8> {
        let entry = self.lookup[bits.peek(LOOKUP_BITS) as usize];
        if entry != 0 {
            bits.consume(u32::from(entry >> 8));
            return Some(entry as u8);
        }
        for length in LOOKUP_BITS + 1..=16 {
            let code = bits.peek(length) as i32;
            if code <= self.max_code[length as usize] {
                bits.consume(length);
                let index = code + self.offset[length as usize];
                return self.symbols.get(usize::try_from(index).ok()?).copied();
            }
        }
        None
    }
}

/// The one-lookup table of [`Huffman::fast`], from the code lookup.
fn fast_table(lookup: &[u16; 1 << LOOKUP_BITS], class: Class) -> Box<[i32; 1 << FAST_BITS]> {
    let mut fast = Box::new([0i32; 1 << FAST_BITS]);
    for (bits, entry) in fast.iter_mut().enumerate() {
        let code = lookup[bits >> (FAST_BITS - LOOKUP_BITS)];
        if code == 0 {
            continue;
        }
        let length = u32::from(code >> 8);
        let symbol = code as u8;
        let (run, size) = match class {
            Class::Dc => (0, u32::from(symbol)),
            Class::Ac => (i32::from(symbol >> 4), u32::from(symbol & 15)),
        };
        if class == Class::Ac && size == 0 {
            let run = if run == 15 { 16 } else { 0 };
            *entry = run << 8 | length as i32;
            continue;
        }
        if length + size > FAST_BITS {
            continue;
        }
        let raw = ((bits >> (FAST_BITS - length - size)) & ((1 << size) - 1)) as i32;
        let value = extend(raw, size);
        *entry = value << 16 | run << 8 | (length + size) as i32;
    }
    fast
}

/// JPEG's sign extension of `size` raw bits into a coefficient.
#[inline(always)]
fn extend(raw: i32, size: u32) -> i32 {
    if size == 0 {
        0
    } else if raw < 1 << (size - 1) {
        raw - (1 << size) + 1
    } else {
        raw
    }
}

/// The zigzag position of each coefficient in natural (row-major) order.
pub(super) const ZIGZAG_TO_NATURAL: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Everything a scan's decoding needs, per component in scan order.
pub(super) struct ScanTables {
    dc: Vec<Huffman>,
    ac: Vec<Huffman>,
    /// Dequantisation factors of the n x n kept coefficients, row-major.
    pub(super) quant: Vec<Vec<i32>>,
    /// For each zigzag index, where the coefficient is kept in an n x n block, or the
    /// scratch array's discarded slot. Indices past 63 (a corrupt run, refused after the
    /// block) discard too, so the decoding loop stores every coefficient without a branch or
    /// a bounds check.
    kept_slot: [u8; KEPT_SLOT_LEN],
    /// The highest zigzag index kept (0 when only DC is).
    last_kept: usize,
    /// Whether blocks are decoded into [`LARGE_SCRATCH`] (more than 4 x 4 kept).
    large_blocks: bool,
}

/// A block's scratch array when at most 4 x 4 coefficients are kept: their 16 slots and the
/// discarded one (slot 16), rounded up to a power of two so a mask bounds the index.
const SMALL_SCRATCH: usize = 32;

/// A block's scratch array for up to 7 x 7 kept coefficients (49 slots) and the discarded
/// one (slot 64).
const LARGE_SCRATCH: usize = 128;

/// The slot of a scratch array of `len` that takes the coefficients not kept: its middle,
/// past every kept slot.
const fn discarded_slot(len: usize) -> u8 {
    (len / 2) as u8
}

/// Most coefficients kept per block side for a reduced decode (8 would be a full decode,
/// left to zune-jpeg; only the luma of a few MCUs is decoded at full size here, see
/// `full_luma`).
pub(super) const MAX_KEPT: usize = 7;

/// The zigzag index can reach 63 + 15 (a zero run) + 1 before the block is refused; a power
/// of two, so a mask bounds the index.
const KEPT_SLOT_LEN: usize = 128;

impl ScanTables {
    /// The dequantisation of `header`'s scan components (in scan order) for n x n blocks,
    /// without Huffman tables (a progressive file's come with each of its scans).
    pub(super) fn dequantising(header: &Header, n: usize) -> Option<ScanTables> {
        if !(1..=8).contains(&n) {
            return None;
        }
        let large_blocks = n > 4;
        let discarded = discarded_slot(if large_blocks {
            LARGE_SCRATCH
        } else {
            SMALL_SCRATCH
        });
        let mut kept_slot = [discarded; KEPT_SLOT_LEN];
        for (zigzag, &natural) in ZIGZAG_TO_NATURAL.iter().enumerate() {
            let (row, col) = (natural / 8, natural % 8);
            if row < n && col < n {
                kept_slot[zigzag] = (row * n + col) as u8;
            }
        }
        let last_kept = (0..64).rev().find(|&k| kept_slot[k] != discarded)?;
        let mut tables = ScanTables {
            dc: Vec::new(),
            ac: Vec::new(),
            quant: Vec::new(),
            kept_slot,
            last_kept,
            large_blocks,
        };
        for s in &header.scan {
            let q = header.quant[header.components[s.frame_index].quant_table].as_ref()?;
            let mut factors = vec![0i32; n * n];
            for (zigzag, &slot) in kept_slot.iter().enumerate().take(64) {
                if slot != discarded {
                    factors[usize::from(slot)] = i32::from(q[zigzag]);
                }
            }
            tables.quant.push(factors);
        }
        Some(tables)
    }

    /// The tables of `header`'s scan: its components' Huffman tables and dequantisation.
    pub(super) fn of(header: &Header, n: usize) -> Option<ScanTables> {
        let mut tables = ScanTables::dequantising(header, n)?;
        for s in &header.scan {
            let dc = header.dc.get(s.dc_table)?.as_ref()?;
            let ac = header.ac.get(s.ac_table)?.as_ref()?;
            tables.dc.push(Huffman::new(dc, Class::Dc)?);
            tables.ac.push(Huffman::new(ac, Class::Ac)?);
        }
        Some(tables)
    }

    /// Where the coefficient of each zigzag index is kept in an n x n block, if it is.
    pub(super) fn kept_slots(&self) -> [Option<u8>; 64] {
        let discarded = discarded_slot(if self.large_blocks {
            LARGE_SCRATCH
        } else {
            SMALL_SCRATCH
        });
        std::array::from_fn(|k| Some(self.kept_slot[k]).filter(|&slot| slot != discarded))
    }
}

/// Components a scan can hold (JPEG allows four; this decoder takes one or three).
pub(super) const MAX_SCAN_COMPONENTS: usize = 4;

/// A decoder's state between MCUs: where it is in the data and each component's DC
/// prediction (the last block's DC value). DC values are kept modulo 2^16 (wrapping), so a
/// run decoded from a wrong start differs from the true values by a constant per component:
/// the second thread's blocks are corrected by that constant (see `parallel`).
#[derive(Clone)]
pub(super) struct McuReader<'a> {
    bits: Bits<'a>,
    pub(super) predictions: [i16; MAX_SCAN_COMPONENTS],
}

impl<'a> McuReader<'a> {
    /// A reader at byte `at` of `data`, every prediction zero (as at the start of the scan or
    /// of a restart interval).
    pub(super) fn new(data: &'a [u8], at: usize) -> McuReader<'a> {
        McuReader {
            bits: Bits::new(data, at),
            predictions: [0; MAX_SCAN_COMPONENTS],
        }
    }

    /// A reader at bit `bit` of `data` with these DC predictions: where an MCU began, to
    /// decode it again.
    pub(super) fn at_bit(
        data: &'a [u8],
        bit: usize,
        predictions: [i16; MAX_SCAN_COMPONENTS],
    ) -> McuReader<'a> {
        let mut bits = Bits::new(data, bit / 8);
        bits.refill();
        bits.consume((bit % 8) as u32);
        McuReader { bits, predictions }
    }

    /// The bit offset of the next MCU.
    pub(super) fn position(&self) -> usize {
        self.bits.position()
    }

    /// Whether more bits have been read than the data holds.
    pub(super) fn overran(&self) -> bool {
        self.bits.overran()
    }
}

/// Decodes one MCU into `out` (its kept coefficients, blocks in scan order, DC values as
/// values: the prediction plus the coded difference, wrapping).
#[inline(always)]
fn decode_mcu<const SCRATCH: usize>(
    reader: &mut McuReader,
    layout: &Layout,
    tables: &ScanTables,
    out: &mut [i16],
) -> Option<()> {
    let per_block = layout.n * layout.n;
    // The reader in locals (registers) for the whole MCU, not written back per code.
    let mut bits = reader.bits.clone();
    let mut predictions = reader.predictions;
    let mut kept = [0i16; SCRATCH];
    // Every kept slot lies below the discarded one.
    let kept_len = usize::from(discarded_slot(SCRATCH));
    for (c, component) in layout.components.iter().enumerate() {
        let (dc, ac) = (&tables.dc[c], &tables.ac[c]);
        let prediction = &mut predictions[c % MAX_SCAN_COMPONENTS];
        let first = component.first_block * per_block;
        for at in (first..).step_by(per_block).take(component.h * component.v) {
            // Clear the kept slots (a fixed length, so a few vector stores) and decode
            // into the same array again.
            kept[..kept_len].fill(0);
            decode_block(&mut bits, dc, ac, tables, &mut kept)?;
            *prediction = prediction.wrapping_add(kept[0]);
            // Blocks are stored in order: where the MCU has room, all `kept_len` slots are
            // copied (a fixed length again), the ones past this block to be overwritten by
            // the next.
            if at + kept_len <= out.len() {
                out[at..at + kept_len].copy_from_slice(&kept[..kept_len]);
            } else {
                out[at..at + per_block].copy_from_slice(&kept[..per_block]);
            }
            out[at] = *prediction;
        }
    }
    reader.bits = bits;
    reader.predictions = predictions;
    Some(())
}

/// One AC code: a run of zeros and a coefficient, sixteen zeros, or the end of the block.
enum AcCode {
    Coefficient { run: usize, value: i32 },
    SixteenZeros,
    EndOfBlock,
}

/// Reads the next AC code; `None` for a code the table does not have or a coefficient too
/// large for 8-bit data.
#[inline(always)]
fn next_ac(bits: &mut Bits, ac: &Huffman, ac_fast: &[i32; 1 << FAST_BITS]) -> Option<AcCode> {
    if bits.count < 32 {
        bits.refill();
    }
    let entry = ac_fast[bits.peek(FAST_BITS) as usize];
    if entry != 0 {
        bits.consume((entry & 0xFF) as u32);
        let run = ((entry >> 8) & 0xFF) as usize;
        let value = entry >> 16;
        return Some(match (value, run) {
            // (The mask is a no-op, runs are at most 15: it bounds the indices computed
            // from the run.)
            (0, 0) => AcCode::EndOfBlock,
            (0, _) => AcCode::SixteenZeros,
            _ => AcCode::Coefficient {
                run: run & 15,
                value,
            },
        });
    }
    let symbol = ac.decode(bits)?;
    let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
    match (size, run) {
        (0, 15) => Some(AcCode::SixteenZeros),
        (0, _) => Some(AcCode::EndOfBlock),
        (1..=10, _) => Some(AcCode::Coefficient {
            run,
            value: bits.signed(size),
        }),
        _ => None,
    }
}

/// Decodes one block's DC difference and AC coefficients into the slots the tables'
/// `kept_slot` gives them (the first n x n, row-major; the rest land in the discarded slot of
/// `kept`, whose kept slots the caller has cleared). Past `last_kept` (the highest zigzag
/// index kept) the codes are only read through. (`kept` is the caller's: returning a
/// 128-slot array by value cost a 256-byte copy per block.)
#[inline(always)]
fn decode_block<const SCRATCH: usize>(
    bits: &mut Bits,
    dc: &Huffman,
    ac: &Huffman,
    tables: &ScanTables,
    kept: &mut [i16; SCRATCH],
) -> Option<()> {
    let (kept_slot, last_kept) = (&tables.kept_slot, tables.last_kept);
    let (dc_fast, ac_fast) = (&*dc.fast, &*ac.fast);
    if bits.count < 32 {
        bits.refill();
    }
    let entry = dc_fast[bits.peek(FAST_BITS) as usize];
    kept[0] = if entry != 0 {
        bits.consume((entry & 0xFF) as u32);
        (entry >> 16) as i16
    } else {
        let size = u32::from(dc.decode(bits)?);
        if size > 11 {
            return None;
        }
        bits.signed(size) as i16
    };
    let mut k = 1;
    while k <= last_kept {
        match next_ac(bits, ac, ac_fast)? {
            AcCode::Coefficient { run, value } => {
                k += run;
                let slot = kept_slot[k & (KEPT_SLOT_LEN - 1)];
                kept[usize::from(slot) & (SCRATCH - 1)] = value as i16;
                k += 1;
            }
            AcCode::SixteenZeros => k += 16,
            AcCode::EndOfBlock => return Some(()),
        }
    }
    while k < 64 {
        match next_ac(bits, ac, ac_fast)? {
            AcCode::Coefficient { run, .. } => k += run + 1,
            AcCode::SixteenZeros => k += 16,
            AcCode::EndOfBlock => break,
        }
    }
    // A run of zeros or coefficients past the block's 64.
    (k <= 64).then_some(())
}

/// [`decode_mcus`] for any CPU (inlined into each compiled variant).
#[inline(always)]
fn decode_mcus_any<const SCRATCH: usize>(
    reader: &mut McuReader,
    layout: &Layout,
    tables: &ScanTables,
    out: &mut [i16],
    stop_bit: usize,
    mut starts: Option<&mut Vec<usize>>,
) -> (usize, bool) {
    for (index, mcu) in out
        .chunks_exact_mut(layout.coefficients_per_mcu())
        .enumerate()
    {
        let position = reader.position();
        if position >= stop_bit {
            return (index, false);
        }
        if let Some(starts) = starts.as_deref_mut() {
            starts.push(position);
        }
        if decode_mcu::<SCRATCH>(reader, layout, tables, mcu).is_none() {
            if let Some(starts) = starts {
                starts.pop();
            }
            return (index, true);
        }
    }
    (out.len() / layout.coefficients_per_mcu(), false)
}

/// [`decode_mcus_any`] compiled for BMI2, whose variable shifts the bit reader does two of
/// per coefficient (without it each is three micro-operations on Intel cores).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2")]
fn decode_mcus_bmi2<const SCRATCH: usize>(
    reader: &mut McuReader,
    layout: &Layout,
    tables: &ScanTables,
    out: &mut [i16],
    stop_bit: usize,
    starts: Option<&mut Vec<usize>>,
) -> (usize, bool) {
    decode_mcus_any::<SCRATCH>(reader, layout, tables, out, stop_bit, starts)
}

/// Decodes MCUs into `out` (one MCU's coefficients after another) while the reader is before
/// `stop_bit`, recording where each began in `starts` if given. Returns how many were
/// decoded, and whether decoding stopped at an error (a bad code) in the next one; the reader
/// is then left at that MCU's start.
pub(super) fn decode_mcus(
    reader: &mut McuReader,
    layout: &Layout,
    tables: &ScanTables,
    out: &mut [i16],
    stop_bit: usize,
    starts: Option<&mut Vec<usize>>,
) -> (usize, bool) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU has BMI2 (and BMI1, which every BMI2 CPU has).
        return unsafe {
            if tables.large_blocks {
                decode_mcus_bmi2::<LARGE_SCRATCH>(reader, layout, tables, out, stop_bit, starts)
            } else {
                decode_mcus_bmi2::<SMALL_SCRATCH>(reader, layout, tables, out, stop_bit, starts)
            }
        };
    }
    if tables.large_blocks {
        decode_mcus_any::<LARGE_SCRATCH>(reader, layout, tables, out, stop_bit, starts)
    } else {
        decode_mcus_any::<SMALL_SCRATCH>(reader, layout, tables, out, stop_bit, starts)
    }
}

/// Decodes MCUs from `reader` into `out`, as many as it holds, recording where each began in
/// `starts`, and checks the data did not run out.
pub(super) fn decode_run(
    reader: &mut McuReader,
    layout: &Layout,
    tables: &ScanTables,
    out: &mut [i16],
    starts: &mut Vec<usize>,
) -> Option<()> {
    let (_, failed) = decode_mcus(reader, layout, tables, out, usize::MAX, Some(starts));
    (!failed && !reader.overran()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_tables_decode_their_own_codes() {
        // Lengths 1, 2, 3 and two of 12 (past the lookup): codes 0, 10, 110, 1110_0000_0000,
        // 1110_0000_0001.
        let mut counts = [0u8; 16];
        counts[0] = 1;
        counts[1] = 1;
        counts[2] = 1;
        counts[11] = 2;
        let table = Huffman::new(
            &HuffmanSpec {
                counts,
                symbols: vec![7, 8, 9, 10, 11],
            },
            Class::Ac,
        )
        .unwrap();
        // 0 | 10 | 110 | 111000000001 | 111000000000, padded with zeros.
        #[allow(clippy::unusual_byte_groupings)] // grouped by code
        let stream: u64 = 0b0_10_110_111000000001_111000000000 << (64 - 30);
        let bytes = stream.to_be_bytes();
        let mut bits = Bits::new(&bytes, 0);
        bits.refill();
        let decoded: Vec<u8> = (0..5).map(|_| table.decode(&mut bits).unwrap()).collect();
        assert_eq!(decoded, [7, 8, 9, 11, 10]);
    }

    #[test]
    fn oversubscribed_code_lengths_are_refused() {
        let mut counts = [0u8; 16];
        counts[0] = 3; // three 1-bit codes cannot exist
        assert!(Huffman::new(
            &HuffmanSpec {
                counts,
                symbols: vec![1, 2, 3],
            },
            Class::Dc
        )
        .is_none());
    }

    #[test]
    fn stuffed_bytes_and_restart_markers_are_taken_out() {
        let data = [1, 0xFF, 0x00, 2, 0xFF, 0xD0, 3, 0xFF, 0xFF, 0xD9];
        let unstuffed = EntropyData::unstuff(&data).unwrap();
        assert_eq!(unstuffed.bytes, [1, 0xFF, 2, 3]);
        assert_eq!(unstuffed.restarts, [3]);
        // Another marker than EOI (a second scan's tables) is not for this decoder.
        assert!(EntropyData::unstuff(&[1, 2, 0xFF, 0xC4]).is_none());
        // No end at all.
        assert!(EntropyData::unstuff(&[1, 2, 3]).is_none());
    }
}
