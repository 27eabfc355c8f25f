//! A fast raw-deflate encoder (RFC 1951) for filtered PNG rows.
//!
//! PNG-filtered photographs compress mostly by entropy coding: residuals cluster around zero,
//! and the only repeats worth finding are runs of one byte (flat areas). This encoder finds
//! exactly those, as zlib's `Z_RLE` strategy does (matches at distance 1), and codes each block
//! of about 64 KiB with its own Huffman tables, so it needs no hash chains and no window
//! search. On the 15-MP merge it is within about 1% of zlib-rs's RLE strategy in size at a
//! fraction of its time (README, "PNG encoder settings").
//!
//! Streams are written for concatenation: a non-final stream ends with an empty stored block
//! (a sync flush), so bands deflated on separate cores join into one valid stream.

/// Input bytes per Huffman block: small enough to follow local statistics, large enough that
/// the trees (about 60 bytes) cost little.
const BLOCK_BYTES: usize = 64 * 1024;
/// Shortest run coded as a match; shorter runs are cheaper as literals.
const MIN_RUN: usize = 4;
const MAX_RUN: usize = 258;
/// The most bytes one stored block holds.
const STORED_BYTES: usize = 65_535;
const END_OF_BLOCK: usize = 256;
/// Literal/length symbols: 256 literals, end of block, 29 length codes.
const LITLEN_SYMBOLS: usize = 286;
/// Longest literal/length code: 14 bits (deflate allows 15), so four literals (56 bits) and
/// the fewer than 8 bits left over fit one 64-bit buffer. Costs nothing measurable in size:
/// a block's 286 symbols rarely need 15-bit codes.
const LITLEN_LIMIT: u8 = 14;
/// Order in which code-length code lengths are sent (RFC 1951, 3.2.7).
const CODE_LENGTH_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// Appends the raw deflate stream of `data` to `out`. With `is_last` the final block is
/// marked final; otherwise the stream ends byte-aligned with an empty stored block, ready for
/// another stream to follow it.
pub fn deflate_runs(data: &[u8], is_last: bool, out: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU has BMI2 (and BMI1, which every BMI2 CPU has).
        return unsafe { deflate_runs_bmi2(data, is_last, out) };
    }
    deflate_runs_any(data, is_last, out);
}

/// [`deflate_runs`] compiled for BMI2: the bit writer shifts by variable amounts twice per
/// pair of literals, one micro-operation each with BMI2 instead of three.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2")]
fn deflate_runs_bmi2(data: &[u8], is_last: bool, out: &mut Vec<u8>) {
    deflate_runs_any(data, is_last, out);
}

/// [`deflate_runs`] for any CPU (inlined, with the block coder, into each compiled variant).
#[inline(always)]
fn deflate_runs_any(data: &[u8], is_last: bool, out: &mut Vec<u8>) {
    out.reserve(data.len() / 2 + 64);
    let mut bits = BitWriter::new(out);
    let mut block = Block::default();
    let count = chunk_count(data.len(), BLOCK_BYTES);
    for (index, raw) in chunks_or_one_empty(data, BLOCK_BYTES).enumerate() {
        block.analyse(raw);
        block.write(&mut bits, raw, is_last && index + 1 == count);
    }
    if !is_last {
        // Sync flush: an empty stored block, then byte alignment, LEN 0 and NLEN 0xFFFF.
        bits.put(0, 3);
        bits.align();
        bits.flush();
        bits.out.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
    } else {
        bits.align();
        bits.flush();
    }
}

/// One block's statistics: literal/length symbol counts and where its runs are.
#[derive(Default)]
struct Block {
    litlen_freq: Vec<u32>,
    /// Runs at distance 1 as (offset in the block, length), in order.
    runs: Vec<(u32, u16)>,
}

impl Block {
    /// Finds the runs of `raw` (bytes equal to the one before them, `MIN_RUN` or more in a
    /// row) and counts every symbol. Runs stay inside the block, and none starts in the last
    /// few bytes (fewer than 8) that no whole word reaches: those are coded as literals.
    #[inline(always)]
    fn analyse(&mut self, raw: &[u8]) {
        const STARTS: u64 = 0x0000_0080_8080_8080; // bytes 0..=4 of a word
        self.litlen_freq.clear();
        self.litlen_freq.resize(LITLEN_SYMBOLS, 0);
        self.runs.clear();
        let mut histograms = [[0u32; 256]; 4];
        let n = raw.len();
        let mut literals_from = 0;
        let mut k = 1;
        // Eight positions at a time: which bytes equal their predecessor, and where four
        // such bytes start in a row (checked at five starts per word, so none is skipped).
        while k + 8 <= n {
            let current = u64::from_le_bytes(raw[k..k + 8].try_into().expect("8 bytes"));
            let previous = u64::from_le_bytes(raw[k - 1..k + 7].try_into().expect("8 bytes"));
            let equal = zero_bytes(current ^ previous);
            let starts = equal & (equal >> 8) & (equal >> 16) & (equal >> 24) & STARTS;
            if starts == 0 {
                k += 5;
                continue;
            }
            let start = k + (starts.trailing_zeros() / 8) as usize;
            count_bytes(&mut histograms, &raw[literals_from..start]);
            let byte = raw[start - 1];
            let limit = (n - start).min(MAX_RUN);
            let run = raw[start..start + limit]
                .iter()
                .position(|&b| b != byte)
                .unwrap_or(limit);
            debug_assert!(run >= MIN_RUN);
            self.runs.push((start as u32, run as u16));
            self.litlen_freq[257 + length_code(run)] += 1;
            k = start + run;
            literals_from = k;
        }
        count_bytes(&mut histograms, &raw[literals_from..]);
        for (symbol, f) in self.litlen_freq[..256].iter_mut().enumerate() {
            *f += histograms.iter().map(|h| h[symbol]).sum::<u32>();
        }
        self.litlen_freq[END_OF_BLOCK] = 1;
    }

    /// Writes `raw` as one block: dynamic Huffman codes, or stored when that is smaller.
    #[inline(always)]
    fn write(&self, bits: &mut BitWriter<'_>, raw: &[u8], final_block: bool) {
        let freq = &self.litlen_freq;
        // One distance code (distance 1) when there are runs; deflate wants one anyway.
        let dist_freq = [u32::from(!self.runs.is_empty()).max(1), 0];
        let litlen_lengths = code_lengths(freq, LITLEN_LIMIT);
        let dist_lengths = code_lengths(&dist_freq, 15);
        let header = TreeHeader::new(&litlen_lengths, &dist_lengths);

        let mut dynamic_bits = 3 + header.bits();
        for (symbol, &f) in freq.iter().enumerate() {
            dynamic_bits += u64::from(f) * u64::from(litlen_lengths[symbol]);
            if symbol > END_OF_BLOCK {
                let extra = LENGTH_EXTRA[symbol - 257] + dist_lengths[0];
                dynamic_bits += u64::from(f) * u64::from(extra);
            }
        }
        // Stored blocks (at most 65,535 bytes each): 3 header bits, alignment, 4 length bytes.
        let stored_bits =
            chunk_count(raw.len(), STORED_BYTES) as u64 * (3 + 7 + 32) + 8 * raw.len() as u64;
        if stored_bits < dynamic_bits {
            write_stored(bits, raw, final_block);
            return;
        }

        bits.put(u32::from(final_block), 1);
        bits.put(2, 2); // dynamic Huffman codes
        header.write(bits);
        let litlen_codes = canonical_codes(&litlen_lengths);
        let (dist_code, dist_len) = canonical_codes(&dist_lengths)[0];
        // Literal codes packed as code | length << 16, for two literals per write.
        let mut literal = [0u32; 256];
        for (packed, &(code, len)) in literal.iter_mut().zip(&litlen_codes) {
            *packed = code | u32::from(len) << 16;
        }
        let mut at = 0;
        for &(offset, length) in &self.runs {
            let offset = offset as usize;
            write_literals(bits, &raw[at..offset], &literal);
            let length = usize::from(length);
            let index = length_code(length);
            let (code, len) = litlen_codes[257 + index];
            bits.put(code, len);
            let extra = LENGTH_EXTRA[index];
            bits.put((length - usize::from(LENGTH_BASE[index])) as u32, extra);
            bits.put(dist_code, dist_len);
            at = offset + length;
        }
        write_literals(bits, &raw[at..], &literal);
        let (code, len) = litlen_codes[END_OF_BLOCK];
        bits.put(code, len);
    }
}

/// 0x80 in each byte of `x` that is zero, 0 elsewhere (exact: no borrow between bytes).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Counts `bytes` into four histograms in turn, so repeated bytes do not wait on each other.
#[inline(always)]
fn count_bytes(histograms: &mut [[u32; 256]; 4], bytes: &[u8]) {
    let mut quads = bytes.chunks_exact(4);
    for q in &mut quads {
        histograms[0][usize::from(q[0])] += 1;
        histograms[1][usize::from(q[1])] += 1;
        histograms[2][usize::from(q[2])] += 1;
        histograms[3][usize::from(q[3])] += 1;
    }
    for &b in quads.remainder() {
        histograms[0][usize::from(b)] += 1;
    }
}

/// Writes `bytes` as literals, four codes (at most 56 bits) per step and one store of the
/// buffer's whole bytes after them, with the bit buffer and the stage position in locals
/// (registers) for the loop.
#[inline(always)]
fn write_literals(bits: &mut BitWriter<'_>, bytes: &[u8], literal: &[u32; 256]) {
    let (mut buffer, mut count, mut used) = (bits.buffer, bits.count, bits.used);
    let mut quads = bytes.chunks_exact(4);
    for quad in &mut quads {
        let [a, b, c, d] = [quad[0], quad[1], quad[2], quad[3]].map(|x| literal[usize::from(x)]);
        let (a_len, c_len) = (a >> 16, c >> 16);
        let first = u64::from(a & 0xFFFF) | u64::from(b & 0xFFFF) << a_len;
        let second = u64::from(c & 0xFFFF) | u64::from(d & 0xFFFF) << c_len;
        let first_len = a_len + (b >> 16);
        buffer |= first << count | second << (count + first_len);
        count += first_len + c_len + (d >> 16);
        store_whole_bytes(
            &mut bits.stage,
            &mut used,
            &mut buffer,
            &mut count,
            bits.out,
        );
    }
    (bits.buffer, bits.count, bits.used) = (buffer, count, used);
    for &byte in quads.remainder() {
        let packed = literal[usize::from(byte)];
        bits.put(packed & 0xFFFF, (packed >> 16) as u8);
    }
}

/// Length code index (0..29) of a match length 3..=258.
fn length_code(length: usize) -> usize {
    match LENGTH_BASE.binary_search(&(length as u16)) {
        Ok(i) => i,
        Err(i) => i - 1,
    }
}

/// `data` in chunks of `size`, or one empty chunk when `data` is empty: a stream, and a
/// stored block, always has at least one block.
fn chunks_or_one_empty(data: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    data.chunks(size).chain(data.is_empty().then_some(data))
}

/// How many chunks `chunks_or_one_empty` gives for `len` bytes.
fn chunk_count(len: usize, size: usize) -> usize {
    len.div_ceil(size).max(1)
}

fn write_stored(bits: &mut BitWriter<'_>, raw: &[u8], final_block: bool) {
    let count = chunk_count(raw.len(), STORED_BYTES);
    for (i, chunk) in chunks_or_one_empty(raw, STORED_BYTES).enumerate() {
        bits.put(u32::from(final_block && i + 1 == count), 1);
        bits.put(0, 2);
        bits.align();
        bits.flush();
        let len = chunk.len() as u16;
        bits.out.extend_from_slice(&len.to_le_bytes());
        bits.out.extend_from_slice(&(!len).to_le_bytes());
        bits.out.extend_from_slice(chunk);
    }
}

/// The dynamic block header: HLIT, HDIST, HCLEN and the run-length coded code lengths.
struct TreeHeader {
    hlit: usize,
    hdist: usize,
    hclen: usize,
    /// Code-length symbols (0..=18) with their extra-bit values.
    symbols: Vec<(u8, u8)>,
    cl_lengths: Vec<u8>,
    cl_codes: Vec<(u32, u8)>,
}

impl TreeHeader {
    fn new(litlen: &[u8], dist: &[u8]) -> Self {
        let hlit = 257.max(litlen.iter().rposition(|&l| l != 0).map_or(0, |p| p + 1));
        let hdist = 1.max(dist.iter().rposition(|&l| l != 0).map_or(0, |p| p + 1));
        let all: Vec<u8> = litlen[..hlit]
            .iter()
            .chain(&dist[..hdist])
            .copied()
            .collect();
        let symbols = run_length_code(&all);
        let mut freq = [0u32; 19];
        for &(s, _) in &symbols {
            freq[usize::from(s)] += 1;
        }
        let cl_lengths = code_lengths(&freq, 7);
        let hclen = 4.max(
            CODE_LENGTH_ORDER
                .iter()
                .rposition(|&s| cl_lengths[s] != 0)
                .map_or(0, |p| p + 1),
        );
        let cl_codes = canonical_codes(&cl_lengths);
        TreeHeader {
            hlit,
            hdist,
            hclen,
            symbols,
            cl_lengths,
            cl_codes,
        }
    }

    fn bits(&self) -> u64 {
        let mut total = 5 + 5 + 4 + 3 * self.hclen as u64;
        for &(s, _) in &self.symbols {
            total += u64::from(self.cl_lengths[usize::from(s)]) + extra_bits(s);
        }
        total
    }

    fn write(&self, bits: &mut BitWriter<'_>) {
        bits.put((self.hlit - 257) as u32, 5);
        bits.put((self.hdist - 1) as u32, 5);
        bits.put((self.hclen - 4) as u32, 4);
        for &s in &CODE_LENGTH_ORDER[..self.hclen] {
            bits.put(u32::from(self.cl_lengths[s]), 3);
        }
        for &(s, extra) in &self.symbols {
            let (code, len) = self.cl_codes[usize::from(s)];
            bits.put(code, len);
            bits.put(u32::from(extra), extra_bits(s) as u8);
        }
    }
}

/// Extra bits after a code-length symbol: 16 has 2, 17 has 3, 18 has 7.
fn extra_bits(symbol: u8) -> u64 {
    match symbol {
        16 => 2,
        17 => 3,
        18 => 7,
        _ => 0,
    }
}

/// Code lengths as code-length symbols: 16 repeats the previous length 3-6 times, 17 and 18
/// give runs of 3-10 and 11-138 zeros.
fn run_length_code(lengths: &[u8]) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lengths.len() {
        let l = lengths[i];
        let run = lengths[i..].iter().take_while(|&&x| x == l).count();
        if l == 0 && run >= 3 {
            let n = run.min(138);
            if n >= 11 {
                out.push((18, (n - 11) as u8));
            } else {
                out.push((17, (n - 3) as u8));
            }
            i += n;
        } else if l != 0 && run >= 4 {
            out.push((l, 0));
            let n = (run - 1).min(6);
            out.push((16, (n - 3) as u8));
            i += 1 + n;
        } else {
            out.push((l, 0));
            i += 1;
        }
    }
    out
}

/// Huffman code lengths for `freq`, none longer than `limit`. Symbols with zero frequency get
/// length 0. At least two symbols always get a code, so every code is complete (a lone symbol
/// is paired with a neighbour), which every inflater accepts.
fn code_lengths(freq: &[u32], limit: u8) -> Vec<u8> {
    let mut used: Vec<(u32, usize)> = freq
        .iter()
        .enumerate()
        .filter(|&(_, &f)| f > 0)
        .map(|(s, &f)| (f, s))
        .collect();
    let mut lengths = vec![0u8; freq.len()];
    if used.len() < 2 {
        let first = used.first().map_or(0, |&(_, s)| s);
        let other = if first == 0 { 1 } else { 0 };
        lengths[first] = 1;
        lengths[other] = 1;
        return lengths;
    }
    used.sort_unstable();
    // Huffman's algorithm over the sorted weights with two queues (leaves, then merged nodes),
    // recording each node's parent; depths follow from the parents.
    let n = used.len();
    let mut weight: Vec<u64> = used.iter().map(|&(f, _)| u64::from(f)).collect();
    let mut parent = vec![0usize; 2 * n - 1];
    weight.resize(2 * n - 1, 0);
    let (mut leaf, mut node) = (0usize, n);
    for next in n..2 * n - 1 {
        let mut pick = || {
            if leaf < n && (node >= next || weight[leaf] <= weight[node]) {
                leaf += 1;
                leaf - 1
            } else {
                node += 1;
                node - 1
            }
        };
        let (a, b) = (pick(), pick());
        weight[next] = weight[a] + weight[b];
        parent[a] = next;
        parent[b] = next;
    }
    let mut depth = vec![0u32; 2 * n - 1];
    for i in (0..2 * n - 2).rev() {
        depth[i] = depth[parent[i]] + 1;
    }
    // Count codes per length, folding lengths over the limit back in (as miniz does), then
    // hand the shortest lengths to the most frequent symbols.
    let limit = usize::from(limit);
    let mut per_length = vec![0u32; limit + 1];
    for &d in &depth[..n] {
        per_length[(d as usize).min(limit)] += 1;
    }
    let kraft = |per_length: &[u32]| -> u64 {
        (1..=limit)
            .map(|l| u64::from(per_length[l]) << (limit - l))
            .sum()
    };
    let full = 1u64 << limit;
    let mut total = kraft(&per_length);
    while total > full {
        per_length[limit] -= 1;
        for l in (1..limit).rev() {
            if per_length[l] != 0 {
                per_length[l] -= 1;
                per_length[l + 1] += 2;
                break;
            }
        }
        total -= 1;
    }
    // `used` is sorted by ascending frequency: the rarest symbols take the longest codes.
    let mut symbols = used.iter().map(|&(_, s)| s);
    for l in (1..=limit).rev() {
        for _ in 0..per_length[l] {
            lengths[symbols.next().expect("one length per symbol")] = l as u8;
        }
    }
    lengths
}

/// Canonical Huffman codes (RFC 1951, 3.2.2), bit-reversed for LSB-first output.
fn canonical_codes(lengths: &[u8]) -> Vec<(u32, u8)> {
    let mut count = [0u32; 16];
    for &l in lengths {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; 16];
    let mut code = 0u32;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    lengths
        .iter()
        .map(|&l| {
            if l == 0 {
                return (0, 0);
            }
            let c = next[usize::from(l)];
            next[usize::from(l)] += 1;
            (c.reverse_bits() >> (32 - u32::from(l)), l)
        })
        .collect()
}

/// LSB-first bit output into a byte vector.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Fewer than 8 bits between calls (the whole bytes are stored after every addition).
    buffer: u64,
    count: u32,
    /// Whole bytes wait here and go to `out` about 4 KiB at a time: a store instead of a
    /// `Vec` capacity check per addition (the literal loop is the encoder's hot path).
    stage: [u8; STAGE_BYTES + 8],
    used: usize,
}

/// Bytes staged before they go to `out` (the stage has 8 more, for the last 8-byte store).
const STAGE_BYTES: usize = 4096;

/// Stores the buffer's 8 bytes at the stage's `used` and keeps only the bits past the whole
/// bytes (fewer than 8): no branch on the codes' lengths. A full stage goes to `out`.
/// `count` must be at most 63.
#[inline(always)]
fn store_whole_bytes(
    stage: &mut [u8; STAGE_BYTES + 8],
    used: &mut usize,
    buffer: &mut u64,
    count: &mut u32,
    out: &mut Vec<u8>,
) {
    debug_assert!(*count < 64 && *used < STAGE_BYTES);
    stage[*used..*used + 8].copy_from_slice(&buffer.to_le_bytes());
    let whole = *count / 8;
    *used += whole as usize;
    *buffer >>= whole * 8;
    *count %= 8;
    if *used >= STAGE_BYTES {
        out.extend_from_slice(&stage[..*used]);
        *used = 0;
    }
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter {
            out,
            buffer: 0,
            count: 0,
            stage: [0; STAGE_BYTES + 8],
            used: 0,
        }
    }

    /// Adds the low `len` (at most 32) bits of `value`.
    #[inline(always)]
    fn put(&mut self, value: u32, len: u8) {
        debug_assert!(len <= 32 && (len == 32 || value >> len == 0));
        self.buffer |= u64::from(value) << self.count;
        self.count += u32::from(len);
        store_whole_bytes(
            &mut self.stage,
            &mut self.used,
            &mut self.buffer,
            &mut self.count,
            self.out,
        );
    }

    /// Pads with zero bits to a byte boundary.
    fn align(&mut self) {
        if self.count > 0 {
            self.put(0, (8 - self.count) as u8);
        }
    }

    /// Writes the stage to `out` (which may then be written to directly, after `align`).
    fn flush(&mut self) {
        self.out.extend_from_slice(&self.stage[..self.used]);
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 1 << 22];
        let config = zlib_rs::InflateConfig { window_bits: -15 };
        let (written, code) = zlib_rs::decompress_slice(&mut out, stream, config);
        assert_eq!(code, zlib_rs::ReturnCode::Ok, "inflate failed");
        written.to_vec()
    }

    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        let mut noise = Vec::with_capacity(300_000);
        let mut x = 0x1234_5678u32;
        for _ in 0..300_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.push(x as u8);
        }
        let residuals: Vec<u8> = noise.iter().map(|&b| (b % 7).wrapping_sub(3)).collect();
        let mut runs = Vec::new();
        for i in 0..5000u32 {
            runs.extend(std::iter::repeat_n((i % 5) as u8, (i % 300) as usize));
            runs.push(i as u8);
        }
        // Symbol k appears fib(k) times in one block: Huffman's codes would reach 21 bits,
        // so the 14-bit limit (four literals per 64-bit store) decides the lengths.
        let mut skewed = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for symbol in 0..22u8 {
            skewed.extend(std::iter::repeat_n(symbol, a));
            (a, b) = (b, a + b);
        }
        for i in (1..skewed.len()).rev() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            skewed.swap(i, x as usize % (i + 1));
        }
        skewed.truncate(BLOCK_BYTES);
        vec![
            ("empty", Vec::new()),
            ("skewed", skewed),
            ("one byte", vec![42]),
            ("zeros", vec![0; 200_000]),
            ("noise", noise),
            ("residuals", residuals),
            ("runs", runs),
            (
                "one symbol then another",
                [vec![7; 70_000], vec![8; 3]].concat(),
            ),
        ]
    }

    #[test]
    fn the_bmi2_variant_writes_the_portable_stream() {
        // On a CPU with BMI2 deflate_runs runs the variant compiled for it; it must write
        // the same bytes as the portable code (on other CPUs both are the portable code).
        for (name, data) in samples() {
            for is_last in [false, true] {
                let (mut dispatched, mut portable) = (Vec::new(), Vec::new());
                deflate_runs(&data, is_last, &mut dispatched);
                deflate_runs_any(&data, is_last, &mut portable);
                assert_eq!(dispatched, portable, "{name}, last {is_last}");
            }
        }
    }

    #[test]
    fn every_stream_inflates_to_its_input() {
        for (name, data) in samples() {
            let mut out = Vec::new();
            deflate_runs(&data, true, &mut out);
            assert_eq!(inflate(&out), data, "{name}");
        }
    }

    #[test]
    fn streams_ended_by_a_sync_flush_concatenate() {
        let parts = samples();
        let mut stream = Vec::new();
        let mut whole = Vec::new();
        for (i, (_, data)) in parts.iter().enumerate() {
            deflate_runs(data, i + 1 == parts.len(), &mut stream);
            whole.extend_from_slice(data);
        }
        assert_eq!(inflate(&stream), whole);
    }

    #[test]
    fn incompressible_data_grows_by_a_few_bytes_per_block_at_most() {
        let (_, noise) = samples().swap_remove(3);
        let mut out = Vec::new();
        deflate_runs(&noise, true, &mut out);
        assert!(
            out.len() <= noise.len() + noise.len() / 1000 + 16,
            "{}",
            out.len()
        );
    }

    #[test]
    fn runs_are_coded_as_matches() {
        let mut out = Vec::new();
        deflate_runs(&vec![0; 200_000], true, &mut out);
        // 775 runs of 258 at a few bits each, four blocks of trees: far below a byte per run.
        assert!(out.len() < 600, "{} bytes", out.len());
        // A run of four starting at every offset of a word is found.
        for offset in 0..8 {
            let mut data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
            data[10 + offset..15 + offset].fill(200);
            let mut block = Block::default();
            block.analyse(&data);
            assert_eq!(block.runs, [((11 + offset) as u32, 4)], "offset {offset}");
        }
    }

    #[test]
    fn code_lengths_respect_the_limit_and_fill_the_code() {
        // Fibonacci frequencies force the deepest possible tree.
        let mut freq = vec![0u32; 40];
        let (mut a, mut b) = (1u32, 1u32);
        for f in freq.iter_mut() {
            *f = a;
            (a, b) = (b, a.saturating_add(b));
        }
        for limit in [7u8, 15] {
            let lengths = code_lengths(&freq, limit);
            assert!(lengths.iter().all(|&l| (1..=limit).contains(&l)));
            let kraft: f64 = lengths.iter().map(|&l| 0.5f64.powi(i32::from(l))).sum();
            assert!((kraft - 1.0).abs() < 1e-12, "limit {limit}: {kraft}");
        }
    }
}
