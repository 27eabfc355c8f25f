//! Sharing the Huffman decoding between two threads (see the module above), and the store
//! of the decoded coefficients, which may live in the two threads' own buffers.

use super::entropy::MAX_SCAN_COMPONENTS;
use super::entropy::{decode_mcus, decode_run, EntropyData, McuReader, ScanTables};
use super::header::Layout;
use super::EntropySplit;

/// Every MCU's kept coefficients (blocks in scan order, DC as values) and the bit where it
/// began in the data: the first thread's buffers, and from the MCU where the threads met,
/// the second thread's, read in place.
pub(super) struct Coefficients {
    per_mcu: usize,
    /// MCUs from the first, up to `tail_from`.
    head: Vec<i16>,
    head_starts: Vec<usize>,
    /// MCU `tail_from + i` is MCU `tail_skip + i` of this buffer.
    tail: Vec<i16>,
    tail_starts: Vec<usize>,
    tail_from: usize,
    tail_skip: usize,
    /// What the tail's DC values lack, per component: the second thread started its
    /// predictions at zero, not at the true values (wrapping, as the values are kept).
    tail_dc_offset: [i16; MAX_SCAN_COMPONENTS],
}

impl Coefficients {
    pub(super) fn whole(per_mcu: usize, head: Vec<i16>, head_starts: Vec<usize>) -> Coefficients {
        Coefficients {
            per_mcu,
            head,
            head_starts,
            tail: Vec::new(),
            tail_starts: Vec::new(),
            tail_from: usize::MAX,
            tail_skip: 0,
            tail_dc_offset: [0; MAX_SCAN_COMPONENTS],
        }
    }

    /// MCU `index`'s coefficients, and what to add (wrapping) to its DC values, per
    /// component in scan order.
    #[inline(always)]
    pub(super) fn mcu(&self, index: usize) -> (&[i16], [i16; MAX_SCAN_COMPONENTS]) {
        if index < self.tail_from {
            (
                &self.head[index * self.per_mcu..][..self.per_mcu],
                [0; MAX_SCAN_COMPONENTS],
            )
        } else {
            let at = index - self.tail_from + self.tail_skip;
            (
                &self.tail[at * self.per_mcu..][..self.per_mcu],
                self.tail_dc_offset,
            )
        }
    }

    /// The bit of the unstuffed data where MCU `index` began.
    pub(super) fn start_bit(&self, index: usize) -> Option<usize> {
        if index < self.tail_from {
            self.head_starts.get(index).copied()
        } else {
            self.tail_starts
                .get(index - self.tail_from + self.tail_skip)
                .copied()
        }
    }
}

/// Decodes all MCUs, on two threads when `parallel`; returns their coefficients and how the
/// work was split.
pub(super) fn decode_entropy(
    data: &EntropyData,
    layout: &Layout,
    tables: &ScanTables,
    restart_interval: usize,
    parallel: bool,
) -> Option<(Coefficients, EntropySplit)> {
    let per_mcu = layout.coefficients_per_mcu();
    let total = layout.mcu_count();
    // Pages are touched only where MCUs are written (the second thread's share is not).
    let mut coefficients = crate::io::system::zeroed_large(total * per_mcu);
    if !data.restarts.is_empty() {
        if restart_interval == 0 || data.restarts.len() + 1 != total.div_ceil(restart_interval) {
            return None; // markers the header did not announce, or too few or too many
        }
        let starts: Vec<usize> = std::iter::once(0)
            .chain(data.restarts.iter().copied())
            .collect();
        // Each interval starts with fresh predictions, so its DC values come out whole.
        let decode_intervals = |first: usize, out: &mut [i16]| -> Option<Vec<usize>> {
            let mut mcu_starts = Vec::with_capacity(out.len() / per_mcu);
            for (i, mcus) in out.chunks_mut(restart_interval * per_mcu).enumerate() {
                let start = starts[first + i];
                let end = starts
                    .get(first + i + 1)
                    .copied()
                    .unwrap_or(data.bytes.len());
                let mut reader = McuReader::new(&data.bytes[..end], start);
                decode_run(&mut reader, layout, tables, mcus, &mut mcu_starts)?;
            }
            Some(mcu_starts)
        };
        if !parallel {
            let starts = decode_intervals(0, &mut coefficients)?;
            return Some((
                Coefficients::whole(per_mcu, coefficients, starts),
                EntropySplit::Serial,
            ));
        }
        // At least two intervals here (there is a marker).
        let half = starts.len() / 2;
        let (first, second) = coefficients.split_at_mut(half * restart_interval * per_mcu);
        let (a, b) = rayon::join(
            || decode_intervals(0, first),
            || decode_intervals(half, second),
        );
        let mut starts = a?;
        starts.extend(b?);
        return Some((
            Coefficients::whole(per_mcu, coefficients, starts),
            EntropySplit::AtRestartMarker,
        ));
    }
    if !parallel {
        let mut reader = McuReader::new(&data.bytes, 0);
        let mut starts = Vec::with_capacity(total);
        decode_run(&mut reader, layout, tables, &mut coefficients, &mut starts)?;
        return Some((
            Coefficients::whole(per_mcu, coefficients, starts),
            EntropySplit::Serial,
        ));
    }
    decode_speculatively(data, layout, tables, coefficients)
}

/// What the second thread decoded from the middle: each MCU's start bit and coefficients.
struct FromTheMiddle {
    starts: Vec<usize>,
    coefficients: Vec<i16>,
}

impl FromTheMiddle {
    /// The second thread's DC predictions before its MCU `index`: zero at its start, then
    /// the DC value of each component's last block in the MCU before.
    fn predictions_before(&self, index: usize, layout: &Layout) -> [i16; MAX_SCAN_COMPONENTS] {
        let mut predictions = [0; MAX_SCAN_COMPONENTS];
        if index == 0 {
            return predictions;
        }
        let per_block = layout.n * layout.n;
        let previous = &self.coefficients[(index - 1) * layout.coefficients_per_mcu()..];
        for (prediction, component) in predictions.iter_mut().zip(&layout.components) {
            let last_block = component.first_block + component.h * component.v - 1;
            *prediction = previous[last_block * per_block];
        }
        predictions
    }
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
    let end_bit = data.len() * 8;
    let mut start = data.len() / 2;
    let decoded = loop {
        found.starts.clear();
        let mut reader = McuReader::new(data, start);
        let (decoded, failed) = decode_mcus(
            &mut reader,
            layout,
            tables,
            &mut found.coefficients,
            end_bit,
            Some(&mut found.starts),
        );
        if !failed {
            if reader.overran() && decoded > 0 {
                found.starts.pop(); // ran into the zeros past the end: not a true MCU
                break decoded - 1;
            }
            break decoded;
        }
        let position = reader.position();
        if position + END_SLACK_BITS >= end_bit {
            break decoded; // the padding after the last MCU
        }
        start = position / 8 + 1;
    };
    found.coefficients.truncate(decoded * per_mcu);
    found
}

/// Where a decoding error is taken for the end of the data rather than for a false start.
const END_SLACK_BITS: usize = 64;

/// Decodes the MCUs on two threads, the second starting in the middle of the data; see the
/// module's notes. `head` is the first thread's buffer, room for every MCU.
fn decode_speculatively(
    data: &EntropyData,
    layout: &Layout,
    tables: &ScanTables,
    mut head: Vec<i16>,
) -> Option<(Coefficients, EntropySplit)> {
    let per_mcu = layout.coefficients_per_mcu();
    let total = layout.mcu_count();
    let middle_bit = data.bytes.len() / 2 * 8;
    let mut head_starts = Vec::with_capacity(total);
    let ((mut reader, first_half, failed), theirs) = rayon::join(
        || {
            let mut reader = McuReader::new(&data.bytes, 0);
            let (decoded, failed) = decode_mcus(
                &mut reader,
                layout,
                tables,
                &mut head,
                middle_bit,
                Some(&mut head_starts),
            );
            (reader, decoded, failed)
        },
        || decode_from_middle(&data.bytes, layout, tables, total),
    );
    if failed {
        return None;
    }
    // Past the middle: at each MCU start, did the second thread stand there too?
    let mut mcu = first_half;
    let mut cursor = 0;
    while mcu < total {
        let here = reader.position();
        while cursor < theirs.starts.len() && theirs.starts[cursor] < here {
            cursor += 1;
        }
        match theirs.starts.get(cursor) {
            Some(&start) if start == here => {
                if theirs.starts.len() - cursor < total - mcu {
                    break; // it stopped short (damaged data): finish alone
                }
                let mut tail_dc_offset = reader.predictions;
                let before = theirs.predictions_before(cursor, layout);
                for (offset, theirs) in tail_dc_offset.iter_mut().zip(before) {
                    *offset = offset.wrapping_sub(theirs);
                }
                let coefficients = Coefficients {
                    per_mcu,
                    head,
                    head_starts,
                    tail: theirs.coefficients,
                    tail_starts: theirs.starts,
                    tail_from: mcu,
                    tail_skip: cursor,
                    tail_dc_offset,
                };
                return Some((coefficients, EntropySplit::Speculative { met_at_mcu: mcu }));
            }
            Some(_) => {}
            None => break, // past all its starts: finish alone
        }
        let one = &mut head[mcu * per_mcu..][..per_mcu];
        let starts = Some(&mut head_starts);
        if decode_mcus(&mut reader, layout, tables, one, usize::MAX, starts).1 {
            return None;
        }
        mcu += 1;
    }
    decode_run(
        &mut reader,
        layout,
        tables,
        &mut head[mcu * per_mcu..],
        &mut head_starts,
    )?;
    Some((
        Coefficients::whole(per_mcu, head, head_starts),
        EntropySplit::SpeculativeUnmet,
    ))
}
