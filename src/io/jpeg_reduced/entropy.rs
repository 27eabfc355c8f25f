//! The entropy-coded data: unstuffing, the bit reader, Huffman tables, MCU decoding, and
//! sharing the decoding between two threads (see the module above).

use super::header::{Header, HuffmanSpec, Layout};
use super::EntropySplit;

/// The entropy-coded segment with byte stuffing removed, and where each restart interval
/// begins in it.
pub(super) struct EntropyData {
    pub(super) bytes: Vec<u8>,
    /// Offsets in `bytes` of the intervals after the first.
    pub(super) restarts: Vec<usize>,
}

impl EntropyData {
    /// Copies the scan's data up to the next marker that is not a restart marker, which must
    /// be the end of the image (anything else means more scans, left to jpeg-decoder).
    pub(super) fn unstuff(data: &[u8]) -> Option<EntropyData> {
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
                0xD9 => return Some(EntropyData { bytes, restarts }),
                _ => return None,
            }
            at = next + 1;
        }
    }
}

/// A big-endian bit reader over unstuffed data; reads past the end give zero bits.
#[derive(Clone)]
struct Bits<'a> {
    data: &'a [u8],
    /// Next byte to load.
    at: usize,
    /// Bits not yet consumed, left-aligned; `count` of them are valid.
    buffer: u64,
    count: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], at: usize) -> Bits<'a> {
        Bits {
            data,
            at,
            buffer: 0,
            count: 0,
        }
    }

    /// The bit offset of the next unread bit.
    fn position(&self) -> usize {
        self.at * 8 - self.count as usize
    }

    /// Whether more bits have been read than the data holds.
    fn overran(&self) -> bool {
        self.position() > self.data.len() * 8
    }

    /// Tops the buffer up to at least 56 valid bits. The bits past `count` are either zero
    /// or the true next bits, so loading the same bytes again is harmless.
    #[inline(always)]
    fn refill(&mut self) {
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
    fn peek(&self, bits: u32) -> u64 {
        self.buffer >> (64 - bits)
    }

    #[inline(always)]
    fn consume(&mut self, bits: u32) {
        self.buffer <<= bits;
        self.count -= bits;
    }

    /// `bits` more bits as a signed coefficient (JPEG's "receive and extend").
    #[inline(always)]
    fn signed(&mut self, bits: u32) -> i32 {
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
struct Huffman {
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
enum Class {
    Dc,
    Ac,
}

impl Huffman {
    fn new(spec: &HuffmanSpec, class: Class) -> Option<Huffman> {
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
    fn decode(&self, bits: &mut Bits) -> Option<u8> {
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
const ZIGZAG_TO_NATURAL: [usize; 64] = [
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
    /// For each zigzag index, where the coefficient is kept in an n x n block (or none).
    kept_slot: [u8; 64],
}

const NOT_KEPT: u8 = u8::MAX;

impl ScanTables {
    pub(super) fn of(header: &Header, n: usize) -> Option<ScanTables> {
        let mut kept_slot = [NOT_KEPT; 64];
        for (zigzag, &natural) in ZIGZAG_TO_NATURAL.iter().enumerate() {
            let (row, col) = (natural / 8, natural % 8);
            if row < n && col < n {
                kept_slot[zigzag] = (row * n + col) as u8;
            }
        }
        let mut tables = ScanTables {
            dc: Vec::new(),
            ac: Vec::new(),
            quant: Vec::new(),
            kept_slot,
        };
        for s in &header.scan {
            let dc = header.dc.get(s.dc_table)?.as_ref()?;
            let ac = header.ac.get(s.ac_table)?.as_ref()?;
            tables.dc.push(Huffman::new(dc, Class::Dc)?);
            tables.ac.push(Huffman::new(ac, Class::Ac)?);
            let q = header.quant[header.components[s.frame_index].quant_table].as_ref()?;
            let mut factors = vec![0i32; n * n];
            for (zigzag, &slot) in kept_slot.iter().enumerate() {
                if slot != NOT_KEPT {
                    factors[usize::from(slot)] = i32::from(q[zigzag]);
                }
            }
            tables.quant.push(factors);
        }
        Some(tables)
    }
}

/// Decodes one MCU into `out` (its kept coefficients, blocks in scan order; DC values as
/// differences from the previous block's).
#[inline]
fn decode_mcu(
    bits: &mut Bits,
    layout: &Layout,
    tables: &ScanTables,
    out: &mut [i16],
) -> Option<()> {
    let per_block = layout.n * layout.n;
    out.fill(0);
    // The reader in locals (registers) for the whole MCU, not written back per code.
    let mut local = bits.clone();
    for (c, component) in layout.components.iter().enumerate() {
        let (dc, ac) = (&tables.dc[c], &tables.ac[c]);
        let blocks =
            &mut out[component.first_block * per_block..][..component.h * component.v * per_block];
        for block in blocks.chunks_exact_mut(per_block) {
            decode_block(&mut local, dc, ac, &tables.kept_slot, block)?;
        }
    }
    *bits = local;
    Some(())
}

/// Decodes one block's DC difference and AC coefficients, keeping those `kept_slot` places.
#[inline(always)]
fn decode_block(
    bits: &mut Bits,
    dc: &Huffman,
    ac: &Huffman,
    kept_slot: &[u8; 64],
    block: &mut [i16],
) -> Option<()> {
    let (dc_fast, ac_fast) = (&*dc.fast, &*ac.fast);
    if bits.count < 32 {
        bits.refill();
    }
    let entry = dc_fast[bits.peek(FAST_BITS) as usize];
    block[0] = if entry != 0 {
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
    while k < 64 {
        if bits.count < 32 {
            bits.refill();
        }
        let entry = ac_fast[bits.peek(FAST_BITS) as usize];
        let (run, value) = if entry != 0 {
            bits.consume((entry & 0xFF) as u32);
            let run = ((entry >> 8) & 0xFF) as usize;
            let value = entry >> 16;
            if value == 0 {
                if run == 0 {
                    break; // end of block
                }
                k += 16;
                continue;
            }
            (run, value)
        } else {
            let symbol = ac.decode(bits)?;
            let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
            if size == 0 {
                if run != 15 {
                    break; // end of block
                }
                k += 16;
                continue;
            }
            if size > 10 {
                return None;
            }
            (run, bits.signed(size))
        };
        k += run;
        if k > 63 {
            return None;
        }
        let slot = kept_slot[k];
        if slot != NOT_KEPT {
            block[usize::from(slot)] = value as i16;
        }
        k += 1;
    }
    Some(())
}

/// Decodes MCUs from `bits` into `out` (one MCU's coefficients after another), as many as
/// it holds, and checks the data did not run out.
fn decode_run(
    bits: &mut Bits,
    layout: &Layout,
    tables: &ScanTables,
    out: &mut [i16],
) -> Option<()> {
    for mcu in out.chunks_exact_mut(layout.coefficients_per_mcu()) {
        decode_mcu(bits, layout, tables, mcu)?;
    }
    (!bits.overran()).then_some(())
}

/// Decodes all MCUs; returns their coefficients and how the work was split.
pub(super) fn decode_entropy(
    data: &EntropyData,
    layout: &Layout,
    tables: &ScanTables,
    restart_interval: usize,
    parallel: bool,
) -> Option<(Vec<i16>, EntropySplit)> {
    let per_mcu = layout.coefficients_per_mcu();
    let total = layout.mcu_count();
    let mut coefficients = crate::io::system::zeroed_large(total * per_mcu);
    if !data.restarts.is_empty() {
        if restart_interval == 0 || data.restarts.len() + 1 != total.div_ceil(restart_interval) {
            return None; // markers the header did not announce, or too few or too many
        }
        let starts: Vec<usize> = std::iter::once(0)
            .chain(data.restarts.iter().copied())
            .collect();
        let decode_intervals = |first: usize, out: &mut [i16]| -> Option<()> {
            for (i, mcus) in out.chunks_mut(restart_interval * per_mcu).enumerate() {
                let start = starts[first + i];
                let end = starts
                    .get(first + i + 1)
                    .copied()
                    .unwrap_or(data.bytes.len());
                let mut bits = Bits::new(&data.bytes[..end], start);
                decode_run(&mut bits, layout, tables, mcus)?;
            }
            Some(())
        };
        if !parallel {
            decode_intervals(0, &mut coefficients)?;
            return Some((coefficients, EntropySplit::Serial));
        }
        // At least two intervals here (there is a marker).
        let half = starts.len() / 2;
        let (first, second) = coefficients.split_at_mut(half * restart_interval * per_mcu);
        let (a, b) = rayon::join(
            || decode_intervals(0, first),
            || decode_intervals(half, second),
        );
        a?;
        b?;
        return Some((coefficients, EntropySplit::AtRestartMarker));
    }
    if !parallel {
        let mut bits = Bits::new(&data.bytes, 0);
        decode_run(&mut bits, layout, tables, &mut coefficients)?;
        return Some((coefficients, EntropySplit::Serial));
    }
    let split = decode_speculatively(data, layout, tables, &mut coefficients)?;
    Some((coefficients, split))
}

/// What the second thread decoded from the middle: each MCU's start bit and coefficients.
struct FromTheMiddle {
    starts: Vec<usize>,
    coefficients: Vec<i16>,
}

/// The second thread's work: decode from the middle byte as if an MCU began there, at most
/// `limit` MCUs. A decoding error (likely before the codes resynchronise) starts over from
/// the next byte.
fn decode_from_middle(
    data: &[u8],
    layout: &Layout,
    tables: &ScanTables,
    limit: usize,
) -> FromTheMiddle {
    let per_mcu = layout.coefficients_per_mcu();
    let mut found = FromTheMiddle {
        starts: Vec::with_capacity(limit),
        coefficients: crate::io::system::zeroed_large(limit * per_mcu),
    };
    let mut start = data.len() / 2;
    'attempt: while start < data.len() {
        found.starts.clear();
        let mut bits = Bits::new(data, start);
        for mcu in found.coefficients.chunks_exact_mut(per_mcu) {
            if bits.count < 32 {
                bits.refill();
            }
            let position = bits.position();
            if position >= data.len() * 8 {
                break 'attempt;
            }
            found.starts.push(position);
            if decode_mcu(&mut bits, layout, tables, mcu).is_none() {
                found.starts.pop();
                if position + END_SLACK_BITS >= data.len() * 8 {
                    break 'attempt; // the padding after the last MCU
                }
                start = position / 8 + 1;
                continue 'attempt;
            }
            if bits.overran() {
                found.starts.pop(); // ran into the zeros past the end: not a true MCU
                break 'attempt;
            }
        }
        break;
    }
    found.coefficients.truncate(found.starts.len() * per_mcu);
    found
}

/// Where a decoding error is taken for the end of the data rather than for a false start.
const END_SLACK_BITS: usize = 64;

/// Decodes the MCUs on two threads, the second starting in the middle of the data; see the
/// module's notes.
fn decode_speculatively(
    data: &EntropyData,
    layout: &Layout,
    tables: &ScanTables,
    coefficients: &mut [i16],
) -> Option<EntropySplit> {
    let per_mcu = layout.coefficients_per_mcu();
    let total = layout.mcu_count();
    let middle_bit = data.bytes.len() / 2 * 8;
    std::thread::scope(|scope| {
        let mut second =
            Some(scope.spawn(|| decode_from_middle(&data.bytes, layout, tables, total)));
        let mut found: Option<FromTheMiddle> = None;
        let mut cursor = 0;
        let mut bits = Bits::new(&data.bytes, 0);
        for mcu in 0..total {
            if bits.count < 32 {
                bits.refill();
            }
            let here = bits.position();
            if here >= middle_bit {
                if let Some(handle) = second.take() {
                    found = Some(handle.join().ok()?);
                }
                // Past the middle: is this an MCU start where the second thread stood?
                if let Some(theirs) = found.as_ref() {
                    while cursor < theirs.starts.len() && theirs.starts[cursor] < here {
                        cursor += 1;
                    }
                    let give_up = match theirs.starts.get(cursor) {
                        Some(&start) if start == here => {
                            let wanted = (total - mcu) * per_mcu;
                            let first = cursor * per_mcu;
                            match theirs.coefficients.get(first..first + wanted) {
                                Some(blocks) => {
                                    coefficients[mcu * per_mcu..].copy_from_slice(blocks);
                                    return Some(EntropySplit::Speculative { met_at_mcu: mcu });
                                }
                                None => true, // it stopped short (damaged data)
                            }
                        }
                        Some(_) => false,
                        None => true, // past all its starts
                    };
                    if give_up {
                        found = None; // finish alone
                    }
                }
            }
            decode_mcu(
                &mut bits,
                layout,
                tables,
                &mut coefficients[mcu * per_mcu..][..per_mcu],
            )?;
        }
        (!bits.overran()).then_some(EntropySplit::SpeculativeUnmet)
    })
}

/// Turns the DC differences into values: a running sum per component, restarted at each
/// restart interval.
pub(super) fn undo_dc_prediction(
    coefficients: &mut [i16],
    layout: &Layout,
    restart_interval: usize,
) {
    let per_block = layout.n * layout.n;
    let mut predictions = vec![0i32; layout.components.len()];
    for (index, mcu) in coefficients
        .chunks_exact_mut(layout.coefficients_per_mcu())
        .enumerate()
    {
        if restart_interval > 0 && index % restart_interval == 0 {
            predictions.fill(0);
        }
        for (c, component) in layout.components.iter().enumerate() {
            for b in 0..component.h * component.v {
                let dc = &mut mcu[(component.first_block + b) * per_block];
                predictions[c] += i32::from(*dc);
                *dc = predictions[c].clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            }
        }
    }
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
