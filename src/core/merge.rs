//! Applying delta(s) to the full-resolution original.
//!
//! Each delta layer is cropped to the proxy's unpadded area *before* resizing (padding never
//! bleeds into the edges), upsampled to the original's size with a float Lanczos3, and added
//! to the original's colour samples in its own encoding (8 or 16 bits; one 8-bit delta step is
//! 257 at 16 bits). Layers apply in order with clipping after each, mirroring how the refined
//! delta was computed. Alpha is never touched. The work runs in row bands, in place, so the
//! only large buffer besides the original is one horizontally-resampled copy of each delta.

use super::guided::{
    AffineUpsampler, GuidedError, GuidedField, GuidedParams, SliceScratch, UpsampledMask,
};
use super::resample::Taps;
use image::DynamicImage;
use rayon::prelude::*;

pub use super::delta::DeltaLayer;
pub use super::geometry::Rect;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("the delta's area {area:?} lies outside the {width}x{height} delta image")]
    AreaOutsideDelta { area: Rect, width: u32, height: u32 },
    #[error("a colour delta cannot apply to a gray original; promote the original to RGB first")]
    ColourDeltaOnGray,
    #[error("unsupported delta layout {0:?}: expected 8/16-bit gray or RGB")]
    DeltaLayout(image::ColorType),
    #[error("unsupported original layout {0:?}")]
    OriginalLayout(image::ColorType),
    #[error("the delta layers cover different areas ({0:?} and {1:?}); a guided merge needs one proxy area")]
    AreasDiffer(Rect, Rect),
    #[error(transparent)]
    Guided(#[from] GuidedError),
}

/// A layer ready to produce full-width delta rows.
enum Prepared<'a> {
    /// The layer's area already has the original's size: rows are read directly.
    Direct(&'a DeltaLayer),
    /// Resampled band by band: a band of output rows resamples, horizontally, only the source
    /// rows its vertical taps reach, so no image-sized float buffer is ever held.
    Resampled {
        layer: &'a DeltaLayer,
        horizontal: Taps,
        vertical: Taps,
        row_len: usize,
    },
}

/// Horizontally resampled source rows `first..first + count` of one layer, for one band.
#[derive(Default)]
struct BandRows {
    first: usize,
    count: usize,
    values: Vec<f32>,
    source: Vec<f32>,
}

impl Prepared<'_> {
    /// Makes `band` hold the horizontally resampled source rows that output rows `y0..y1` read.
    fn load_band(&self, y0: usize, y1: usize, band: &mut BandRows) {
        let Prepared::Resampled {
            layer,
            horizontal,
            vertical,
            row_len,
        } = self
        else {
            return;
        };
        // Vertical taps move forward with y, so the span is from y0's first tap to y1-1's last.
        let first = vertical.get(y0).0;
        let (last_start, last_weights) = vertical.get(y1 - 1);
        let end = last_start + last_weights.len();
        if band.first == first && band.count == end - first && !band.values.is_empty() {
            return;
        }
        let c = layer.channels();
        band.first = first;
        band.count = end - first;
        band.values.resize(band.count * row_len, 0.0);
        band.source.resize(layer.area.width as usize * c, 0.0);
        for (i, out) in band.values.chunks_exact_mut(*row_len).enumerate() {
            layer.decode_row((first + i) as u32, &mut band.source);
            match c {
                1 => resample_row::<1>(&band.source, out, horizontal),
                _ => resample_row::<3>(&band.source, out, horizontal),
            }
        }
    }

    /// Delta row `y` (full width, the layer's channels), from `band` when resampled.
    fn row(&self, y: usize, band: &BandRows, out: &mut [f32]) {
        match self {
            Prepared::Direct(layer) => layer.decode_row(y as u32, out),
            Prepared::Resampled {
                row_len, vertical, ..
            } => {
                let (start, weights) = vertical.get(y);
                out.fill(0.0);
                for (k, &w) in weights.iter().enumerate() {
                    let at = (start + k - band.first) * row_len;
                    for (o, s) in out.iter_mut().zip(&band.values[at..at + row_len]) {
                        *o += w * s;
                    }
                }
            }
        }
    }
}

fn prepare(layer: &DeltaLayer, out_w: u32, out_h: u32) -> Result<Prepared<'_>, MergeError> {
    use image::ColorType as C;
    if !matches!(layer.image.color(), C::L8 | C::Rgb8 | C::L16 | C::Rgb16) {
        return Err(MergeError::DeltaLayout(layer.image.color()));
    }
    let a = layer.area;
    if a.width == 0
        || a.height == 0
        || a.x + a.width > layer.image.width()
        || a.y + a.height > layer.image.height()
    {
        return Err(MergeError::AreaOutsideDelta {
            area: a,
            width: layer.image.width(),
            height: layer.image.height(),
        });
    }
    if a.width == out_w && a.height == out_h {
        return Ok(Prepared::Direct(layer));
    }
    Ok(Prepared::Resampled {
        layer,
        horizontal: Taps::lanczos3(a.width, out_w),
        vertical: Taps::lanczos3(a.height, out_h),
        row_len: out_w as usize * layer.channels(),
    })
}

/// One row through 1-D taps, with `C` interleaved channels.
fn resample_row<const C: usize>(src: &[f32], out: &mut [f32], taps: &Taps) {
    for (x, px) in out.chunks_exact_mut(C).enumerate() {
        let (start, weights) = taps.get(x);
        let window = &src[start * C..(start + weights.len()) * C];
        let mut acc = [0f32; C];
        for (w, s) in weights.iter().zip(window.chunks_exact(C)) {
            for ch in 0..C {
                acc[ch] += w * s[ch];
            }
        }
        px.copy_from_slice(&acc);
    }
}

/// A sample type of the original (8 or 16 bits).
trait Sample: Copy + Send + Sync {
    const MAX: f32;
    /// How many of this sample's units one 8-bit delta level is.
    const UNIT: f32;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Sample for u8 {
    const MAX: f32 = 255.0;
    const UNIT: f32 = 1.0;
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    /// `v` is already clamped to 0..=MAX; `floor(v + 0.5)` rounds without a libm call.
    fn from_f32(v: f32) -> Self {
        (v + 0.5) as u8
    }
}

impl Sample for u16 {
    const MAX: f32 = 65535.0;
    const UNIT: f32 = 257.0;
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    fn from_f32(v: f32) -> Self {
        (v + 0.5) as u16
    }
}

/// Rows per parallel work item: large enough that re-resampling the few source rows shared
/// with the next band costs little, small enough to balance the cores.
const BAND_ROWS: usize = 64;

/// Everything needed to merge rows of one original: the prepared layers and the original's
/// layout. Rows can be merged in any order and from any thread.
pub struct MergePlan<'a> {
    layers: Vec<(Prepared<'a>, usize)>,
    /// The guided merge's colour maps, applied to each row before the layers.
    affine: Option<AffineUpsampler<'a>>,
    /// New content enlarged by a super-resolution model, blended in after the layers.
    content: Option<ContentPlan<'a>>,
    width: usize,
    total: usize,
    colour: usize,
}

/// Per-thread buffers for [`MergePlan`].
pub struct RowScratch {
    raw: Vec<f32>,
    change: Vec<f32>,
    current: Vec<f32>,
    /// One band of resampled source rows per layer.
    bands: Vec<BandRows>,
    row16: Vec<u16>,
    /// The guided merge's buffers, and the row as it was before it.
    slice: Option<SliceScratch>,
    before: Vec<f32>,
    content_weights: Vec<f32>,
}

impl<'a> MergePlan<'a> {
    /// Plans `layers` (their resampling taps) for an original laid out like `original`.
    pub fn new(original: &DynamicImage, layers: &'a [DeltaLayer]) -> Result<Self, MergeError> {
        use image::ColorType as C;
        let (w, h) = (original.width(), original.height());
        if !matches!(
            original.color(),
            C::L8 | C::La8 | C::Rgb8 | C::Rgba8 | C::L16 | C::La16 | C::Rgb16 | C::Rgba16
        ) {
            return Err(MergeError::OriginalLayout(original.color()));
        }
        let colour = original.color().has_color();
        let mut prepared = Vec::with_capacity(layers.len());
        for layer in layers {
            let dc = layer.channels();
            if dc == 3 && !colour {
                return Err(MergeError::ColourDeltaOnGray);
            }
            prepared.push((prepare(layer, w, h)?, dc));
        }
        Ok(MergePlan {
            layers: prepared,
            affine: None,
            content: None,
            width: w as usize,
            total: usize::from(original.color().channel_count()),
            colour: if colour { 3 } else { 1 },
        })
    }

    /// Plans a guided merge: each row of `original` goes through `field`'s colour maps, then
    /// gets `residual` (the field's residual layer) added.
    pub fn guided(
        original: &DynamicImage,
        field: &'a GuidedField,
        residual: &'a DeltaLayer,
    ) -> Result<Self, MergeError> {
        let mut plan = MergePlan::new(original, std::slice::from_ref(residual))?;
        plan.affine = Some(field.upsampler(original.width(), original.height(), plan.colour));
        Ok(plan)
    }

    /// Blends `layer` (new content, enlarged) over the merge where `field` found new content.
    #[must_use]
    pub fn with_content(
        mut self,
        field: &'a GuidedField,
        layer: &'a ContentLayer,
        original_height: usize,
    ) -> Self {
        if let Some(region) = field.content() {
            let rgb = layer.image.to_rgb16();
            self.content = Some(ContentPlan {
                weights: UpsampledMask::new(
                    &region.weights,
                    (field.width, field.height),
                    (self.width, original_height),
                ),
                rect: layer.rect,
                samples: rgb.into_raw(),
            });
        }
        self
    }

    pub fn scratch(&self) -> RowScratch {
        let colour_samples = self.width * self.colour;
        RowScratch {
            raw: vec![0f32; self.width * 3],
            change: vec![0f32; colour_samples],
            current: vec![0f32; colour_samples],
            bands: self.layers.iter().map(|_| BandRows::default()).collect(),
            row16: Vec::new(),
            slice: self.affine.as_ref().map(AffineUpsampler::scratch),
            before: Vec::new(),
            content_weights: Vec::new(),
        }
    }

    /// Applies every layer to `original` in place, in parallel bands. `original` must have the
    /// layout the plan was made for. `progress` gets the rows finished, from worker threads.
    pub fn apply_in_place(
        &self,
        original: &mut DynamicImage,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), MergeError> {
        let layout = original.width() as usize * usize::from(original.color().channel_count());
        if layout != self.width * self.total {
            return Err(MergeError::OriginalLayout(original.color()));
        }
        match original {
            DynamicImage::ImageLuma8(b) => apply_typed(b, self, progress),
            DynamicImage::ImageLumaA8(b) => apply_typed(b, self, progress),
            DynamicImage::ImageRgb8(b) => apply_typed(b, self, progress),
            DynamicImage::ImageRgba8(b) => apply_typed(b, self, progress),
            DynamicImage::ImageLuma16(b) => apply_typed(b, self, progress),
            DynamicImage::ImageLumaA16(b) => apply_typed(b, self, progress),
            DynamicImage::ImageRgb16(b) => apply_typed(b, self, progress),
            DynamicImage::ImageRgba16(b) => apply_typed(b, self, progress),
            other => return Err(MergeError::OriginalLayout(other.color())),
        }
        Ok(())
    }

    /// Applies every layer to the consecutive rows in `rows`, the first being row `y0`.
    fn apply_rows<S: Sample>(&self, y0: usize, rows: &mut [S], s: &mut RowScratch) {
        let row_samples = self.width * self.total;
        let n = rows.len() / row_samples;
        for ((layer, _), band) in self.layers.iter().zip(s.bands.iter_mut()) {
            layer.load_band(y0, y0 + n, band);
        }
        for (i, row) in rows.chunks_exact_mut(row_samples).enumerate() {
            self.apply_row(y0 + i, row, s);
        }
    }

    /// Merged rows `start..end` of `original`, serialised big-endian (the sample order of PNG
    /// and TIFF; 8-bit samples are plain bytes) into `out`, which is cleared first. The
    /// original is only read, so bands can be rendered in parallel and compressed at once.
    pub fn render_rows_big_endian(
        &self,
        original: &DynamicImage,
        start: usize,
        end: usize,
        out: &mut Vec<u8>,
        s: &mut RowScratch,
    ) {
        out.clear();
        let samples = self.width * self.total;
        let rows8 = |buf: &[u8], out: &mut Vec<u8>, s: &mut RowScratch| {
            out.extend_from_slice(&buf[start * samples..end * samples]);
            self.apply_rows(start, out, s);
        };
        let rows16 = |buf: &[u16], out: &mut Vec<u8>, s: &mut RowScratch| {
            let mut rows = std::mem::take(&mut s.row16);
            rows.clear();
            rows.extend_from_slice(&buf[start * samples..end * samples]);
            self.apply_rows(start, &mut rows, s);
            out.extend(rows.iter().flat_map(|v| v.to_be_bytes()));
            s.row16 = rows;
        };
        match original {
            DynamicImage::ImageLuma8(b) => rows8(b, out, s),
            DynamicImage::ImageLumaA8(b) => rows8(b, out, s),
            DynamicImage::ImageRgb8(b) => rows8(b, out, s),
            DynamicImage::ImageRgba8(b) => rows8(b, out, s),
            DynamicImage::ImageLuma16(b) => rows16(b, out, s),
            DynamicImage::ImageLumaA16(b) => rows16(b, out, s),
            DynamicImage::ImageRgb16(b) => rows16(b, out, s),
            DynamicImage::ImageRgba16(b) => rows16(b, out, s),
            _ => unreachable!("layout checked in MergePlan::new"),
        }
    }

    /// Applies every layer to row `y` (given in `row`) in place.
    fn apply_row<S: Sample>(&self, y: usize, row: &mut [S], s: &mut RowScratch) {
        let (total, colour) = (self.total, self.colour);
        let single = self.layers.len() == 1 && self.affine.is_none();
        if !single {
            gather(row, &mut s.current, total, colour);
        }
        let mut untouched = false;
        if let Some(affine) = &self.affine {
            let slice = s.slice.as_mut().expect("scratch made by this plan");
            if affine.has_untouched() {
                affine.weights_row(y, slice);
                s.before.clear();
                s.before.extend_from_slice(&s.current);
                untouched = true;
            }
            affine.transform_row(y, &mut s.current, S::UNIT, slice);
            if self.layers.is_empty() {
                for v in &mut s.current {
                    *v = v.clamp(0.0, S::MAX);
                }
                if let Some(content) = &self.content {
                    content.blend_row(y, &mut s.current, S::UNIT, colour, &mut s.content_weights);
                }
                if untouched {
                    keep_untouched(&mut s.current, &s.before, &slice.weights, colour);
                }
                scatter_visible(&s.current, row, total, colour);
            }
        }
        for (index, (layer, dc)) in self.layers.iter().enumerate() {
            layer.row(y, &s.bands[index], &mut s.raw[..self.width * dc]);
            // Changes laid out like the original's colour samples, in its units.
            if *dc == colour {
                for (c, r) in s.change.iter_mut().zip(s.raw.iter()) {
                    *c = r * S::UNIT;
                }
            } else {
                for (px, r) in s.change.chunks_exact_mut(colour).zip(s.raw.iter()) {
                    px.fill(r * S::UNIT);
                }
            }
            if single {
                apply_in_place(row, &s.change, total, colour);
            } else {
                for (v, c) in s.current.iter_mut().zip(s.change.iter()) {
                    *v = (*v + c).clamp(0.0, S::MAX);
                }
                if index + 1 == self.layers.len() {
                    if let Some(content) = &self.content {
                        content.blend_row(
                            y,
                            &mut s.current,
                            S::UNIT,
                            colour,
                            &mut s.content_weights,
                        );
                    }
                    if untouched {
                        let weights = &s.slice.as_ref().expect("scratch made by this plan").weights;
                        keep_untouched(&mut s.current, &s.before, weights, colour);
                    }
                    if self.affine.is_some() {
                        scatter_visible(&s.current, row, total, colour);
                    } else {
                        scatter(&s.current, row, total, colour);
                    }
                }
            }
        }
    }
}

fn apply_typed<S: Sample>(pixels: &mut [S], plan: &MergePlan<'_>, progress: &(dyn Fn(u64) + Sync)) {
    let row_samples = plan.width * plan.total;
    pixels
        .par_chunks_mut(row_samples * BAND_ROWS)
        .enumerate()
        .for_each_init(
            || plan.scratch(),
            |scratch, (band, chunk)| {
                plan.apply_rows(band * BAND_ROWS, chunk, scratch);
                progress((chunk.len() / row_samples) as u64);
            },
        );
}

/// `row += change` on the colour samples, clamped and rounded; alpha untouched.
fn apply_in_place<S: Sample>(row: &mut [S], change: &[f32], total: usize, colour: usize) {
    if total == colour {
        for (p, c) in row.iter_mut().zip(change) {
            *p = S::from_f32((p.to_f32() + c).clamp(0.0, S::MAX));
        }
    } else {
        for (px, ch) in row.chunks_exact_mut(total).zip(change.chunks_exact(colour)) {
            for (p, c) in px[..colour].iter_mut().zip(ch) {
                *p = S::from_f32((p.to_f32() + c).clamp(0.0, S::MAX));
            }
        }
    }
}

/// New content enlarged by a super-resolution model: `image` (RGB) covers `rect` of the
/// original.
pub struct ContentLayer {
    pub image: DynamicImage,
    pub rect: Rect,
}

/// A [`ContentLayer`] ready to blend: its samples and the upsampled content weights.
struct ContentPlan<'a> {
    weights: UpsampledMask<'a>,
    rect: Rect,
    /// RGB, 16 bits (one 8-bit level is 257), `rect.width` per row.
    samples: Vec<u16>,
}

impl ContentPlan<'_> {
    /// `row = row + weight (content - row)` over the part of row `y` the layer covers.
    fn blend_row(
        &self,
        y: usize,
        row: &mut [f32],
        unit: f32,
        colour: usize,
        weights: &mut Vec<f32>,
    ) {
        let r = self.rect;
        let Some(ly) = y
            .checked_sub(r.y as usize)
            .filter(|ly| *ly < r.height as usize)
        else {
            return;
        };
        self.weights.row(y, weights);
        let line = &self.samples[ly * r.width as usize * 3..][..r.width as usize * 3];
        let to_units = unit / 257.0;
        for (lx, px) in line.chunks_exact(3).enumerate() {
            let x = r.x as usize + lx;
            let w = weights[x];
            if w == 0.0 {
                continue;
            }
            let target = [0, 1, 2].map(|c| f32::from(px[c]) * to_units);
            if colour == 3 {
                for (v, t) in row[x * 3..x * 3 + 3].iter_mut().zip(target) {
                    *v += w * (t - *v);
                }
            } else {
                let t = (target[0] + target[1] + target[2]) / 3.0;
                row[x] += w * (t - row[x]);
            }
        }
    }
}

/// `merged = before + weight (merged - before)` per pixel: exactly `before` where the weight
/// is 0 (the model changed nothing near the pixel).
fn keep_untouched(merged: &mut [f32], before: &[f32], weights: &[f32], colour: usize) {
    for ((m, b), w) in merged
        .chunks_exact_mut(colour)
        .zip(before.chunks_exact(colour))
        .zip(weights)
    {
        if *w == 0.0 {
            m.copy_from_slice(b);
        } else if *w < 1.0 {
            for (mv, bv) in m.iter_mut().zip(b) {
                *mv = bv + w * (*mv - bv);
            }
        }
    }
}

fn gather<S: Sample>(row: &[S], out: &mut [f32], total: usize, colour: usize) {
    for (px, o) in row.chunks_exact(total).zip(out.chunks_exact_mut(colour)) {
        for (v, p) in o.iter_mut().zip(px) {
            *v = p.to_f32();
        }
    }
}

fn scatter<S: Sample>(values: &[f32], row: &mut [S], total: usize, colour: usize) {
    for (px, v) in row.chunks_exact_mut(total).zip(values.chunks_exact(colour)) {
        for (p, x) in px.iter_mut().zip(v) {
            *p = S::from_f32(*x);
        }
    }
}

/// [`scatter`] that leaves fully transparent pixels as they were: their colour is not seen,
/// and whatever a program keeps there (a mask, a second picture) is kept.
fn scatter_visible<S: Sample>(values: &[f32], row: &mut [S], total: usize, colour: usize) {
    if total == colour {
        return scatter(values, row, total, colour);
    }
    for (px, v) in row.chunks_exact_mut(total).zip(values.chunks_exact(colour)) {
        if px[total - 1].to_f32() == 0.0 {
            continue;
        }
        for (p, x) in px.iter_mut().zip(v) {
            *p = S::from_f32(*x);
        }
    }
}

/// Applies `layers` in order to `original` in place. `progress` is called with the number
/// of rows finished, from worker threads.
pub fn apply_layers(
    original: &mut DynamicImage,
    layers: &[DeltaLayer],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), MergeError> {
    MergePlan::new(original, layers)?.apply_in_place(original, progress)
}

/// A guided merge ready to plan: the fitted maps and their residual layer.
pub struct GuidedMerge {
    pub field: GuidedField,
    pub residual: DeltaLayer,
    /// The processed proxy's fitted area (RGB, 8 bits), kept when it holds new content.
    processed: Option<DynamicImage>,
}

/// What a super-resolution model should enlarge for a guided merge's new content: `crop`
/// (the processed proxy around the content, with context) to `rect`'s size, which is where
/// it lands in the original.
pub struct ContentRequest {
    pub crop: DynamicImage,
    pub rect: Rect,
}

/// Proxy pixels of context around new content that its enlargement sees.
const CONTENT_CONTEXT: u32 = 8;

impl GuidedMerge {
    /// New content enlarged by `enlarge` for a `width x height` original, if the model
    /// painted any.
    pub fn enlarge_content<E>(
        &self,
        width: u32,
        height: u32,
        enlarge: Enlarge<'_, E>,
    ) -> Result<Option<ContentLayer>, E> {
        let Some(request) = self.content_request(width, height) else {
            return Ok(None);
        };
        let image = enlarge(request.crop, (request.rect.width, request.rect.height))?;
        Ok(Some(ContentLayer {
            image,
            rect: request.rect,
        }))
    }

    /// The enlargement new content needs on a `width x height` original, if the model
    /// painted any.
    #[must_use]
    pub fn content_request(&self, width: u32, height: u32) -> Option<ContentRequest> {
        let region = self.field.content()?;
        let processed = self.processed.as_ref()?;
        let (pw, ph) = (processed.width(), processed.height());
        let a = region.area;
        let x0 = a.x.saturating_sub(CONTENT_CONTEXT);
        let y0 = a.y.saturating_sub(CONTENT_CONTEXT);
        let x1 = (a.x + a.width + CONTENT_CONTEXT).min(pw);
        let y1 = (a.y + a.height + CONTENT_CONTEXT).min(ph);
        let scale = |v: u32, from: u32, to: u32| {
            ((f64::from(v) * f64::from(to) / f64::from(from)).round() as u32).min(to)
        };
        let (rx0, rx1) = (scale(x0, pw, width), scale(x1, pw, width));
        let (ry0, ry1) = (scale(y0, ph, height), scale(y1, ph, height));
        if rx1 <= rx0 || ry1 <= ry0 {
            return None;
        }
        Some(ContentRequest {
            crop: processed.crop_imm(x0, y0, x1 - x0, y1 - y0),
            rect: Rect {
                x: rx0,
                y: ry0,
                width: rx1 - rx0,
                height: ry1 - ry0,
            },
        })
    }
}

/// Fits a guided merge from the proxy canvas and the delta layers made against it (main, then
/// refined), replaying the layers on the proxy to recover what the model returned. The
/// residual is gray when `gray_original` and every layer is gray.
pub fn prepare_guided(
    proxy: &DynamicImage,
    layers: &[DeltaLayer],
    gray_original: bool,
    params: &GuidedParams,
) -> Result<GuidedMerge, MergeError> {
    let Some(first) = layers.first() else {
        return Err(MergeError::Guided(GuidedError::Empty(0, 0)));
    };
    let area = first.area;
    for layer in layers {
        prepare(layer, area.width, area.height)?;
        if layer.area != area {
            return Err(MergeError::AreasDiffer(area, layer.area));
        }
    }
    if area.x + area.width > proxy.width() || area.y + area.height > proxy.height() {
        return Err(MergeError::AreaOutsideDelta {
            area,
            width: proxy.width(),
            height: proxy.height(),
        });
    }
    let (w, h) = (area.width as usize, area.height as usize);
    let base = proxy
        .crop_imm(area.x, area.y, area.width, area.height)
        .to_rgb32f()
        .into_raw()
        .into_iter()
        .map(|v| v * 255.0)
        .collect::<Vec<f32>>();
    let mut processed = base.clone();
    let mut change = Vec::new();
    for layer in layers {
        let c = layer.channels();
        change.resize(w * c, 0.0);
        for (y, row) in processed.chunks_exact_mut(w * 3).enumerate() {
            layer.decode_row(y as u32, &mut change);
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                for (ch, v) in px.iter_mut().enumerate() {
                    let d = if c == 3 {
                        change[x * 3 + ch]
                    } else {
                        change[x]
                    };
                    *v = (*v + d).clamp(0.0, 255.0);
                }
            }
        }
    }
    let field = GuidedField::fit(&base, &processed, w, h, params)?;
    let gray = gray_original && layers.iter().all(|l| l.channels() == 1);
    let residual = field.residual_layer(gray);
    let processed = field.content().map(|_| {
        let samples = processed.iter().map(|v| v.round() as u8).collect();
        DynamicImage::ImageRgb8(
            image::ImageBuffer::from_raw(area.width, area.height, samples).expect("sized"),
        )
    });
    Ok(GuidedMerge {
        field,
        residual,
        processed,
    })
}

/// Merges in memory: `layers` (made against `proxy`) into `original`, additively or, with
/// `guided`, through the guided merge. A gray original is promoted to RGB when a layer has
/// colour. The file-level merge streams PNG bands instead; this is for callers that keep the
/// image (enhance via the proxy, benchmarks, tests).
pub fn merge_image(
    original: DynamicImage,
    proxy: &DynamicImage,
    layers: &[DeltaLayer],
    guided: Option<&GuidedParams>,
) -> Result<DynamicImage, MergeError> {
    let mut image = promote_for_colour(original, layers);
    match guided {
        None => apply_layers(&mut image, layers, &|_| {})?,
        Some(params) => {
            let gray = !image.color().has_color();
            let prepared = prepare_guided(proxy, layers, gray, params)?;
            MergePlan::guided(&image, &prepared.field, &prepared.residual)?
                .apply_in_place(&mut image, &|_| {})?;
        }
    }
    Ok(image)
}

/// How new content is enlarged: the crop of the processed proxy, and the size to make it.
pub type Enlarge<'a, E> = &'a dyn Fn(DynamicImage, (u32, u32)) -> Result<DynamicImage, E>;

/// [`merge_image`] with the guided merge, where new content comes from `enlarge` (a
/// super-resolution model) instead of the upsampled residual.
pub fn merge_image_enlarging_content<E>(
    original: DynamicImage,
    proxy: &DynamicImage,
    layers: &[DeltaLayer],
    params: &GuidedParams,
    enlarge: Enlarge<'_, E>,
) -> Result<Result<DynamicImage, E>, MergeError> {
    let mut image = promote_for_colour(original, layers);
    let gray = !image.color().has_color();
    let prepared = prepare_guided(proxy, layers, gray, params)?;
    let content = match prepared.enlarge_content(image.width(), image.height(), enlarge) {
        Ok(content) => content,
        Err(e) => return Ok(Err(e)),
    };
    let height = image.height() as usize;
    let mut plan = MergePlan::guided(&image, &prepared.field, &prepared.residual)?;
    if let Some(layer) = &content {
        plan = plan.with_content(&prepared.field, layer, height);
    }
    plan.apply_in_place(&mut image, &|_| {})?;
    Ok(Ok(image))
}

/// Promotes a gray original to RGB(A) when a colour delta is to be applied to it (a model
/// that colourised a gray proxy); other originals are returned unchanged.
#[must_use]
pub fn promote_for_colour(original: DynamicImage, layers: &[DeltaLayer]) -> DynamicImage {
    let needs_colour = layers.iter().any(|l| l.image.color().has_color());
    if !needs_colour || original.color().has_color() {
        return original;
    }
    let sixteen = original.color().bytes_per_pixel() / original.color().channel_count() == 2;
    match (original.color().has_alpha(), sixteen) {
        (false, false) => DynamicImage::ImageRgb8(original.to_rgb8()),
        (true, false) => DynamicImage::ImageRgba8(original.to_rgba8()),
        (false, true) => DynamicImage::ImageRgb16(original.to_rgb16()),
        (true, true) => DynamicImage::ImageRgba16(original.to_rgba16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageBuffer;

    fn neutral(w: u32, h: u32) -> DeltaLayer {
        DeltaLayer {
            image: DynamicImage::ImageRgb8(ImageBuffer::from_pixel(
                w,
                h,
                image::Rgb([127, 127, 127]),
            )),
            area: Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
        }
    }

    #[test]
    fn rendered_rows_equal_the_in_place_merge_for_8_and_16_bits() {
        for original in [
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(29, 170, |x, y| {
                image::Rgba([(x * 9) as u8, y as u8, 200, (x + y) as u8])
            })),
            DynamicImage::ImageRgb16(ImageBuffer::from_fn(29, 170, |x, y| {
                image::Rgb([(x * 2000) as u16, (y * 300) as u16, 40000])
            })),
        ] {
            let layers = [
                DeltaLayer {
                    image: DynamicImage::ImageRgb8(ImageBuffer::from_fn(7, 40, |x, y| {
                        image::Rgb([(100 + x * 9) as u8, (150 - y) as u8, 127])
                    })),
                    area: Rect {
                        x: 0,
                        y: 0,
                        width: 7,
                        height: 40,
                    },
                },
                neutral(3, 3),
            ];
            let mut in_place = original.clone();
            apply_layers(&mut in_place, &layers, &|_| {}).unwrap();
            let plan = MergePlan::new(&original, &layers).unwrap();
            let mut scratch = plan.scratch();
            let mut bytes = Vec::new();
            let mut all = Vec::new();
            for (start, end) in [(0, 5), (5, 6), (6, 100), (99, 170)] {
                plan.render_rows_big_endian(&original, start, end, &mut bytes, &mut scratch);
                let skip = if start == 99 { 1 } else { 0 };
                let row_bytes = bytes.len() / (end - start);
                all.extend_from_slice(&bytes[skip * row_bytes..]);
            }
            let expected: Vec<u8> = match &in_place {
                DynamicImage::ImageRgb16(b) => b.iter().flat_map(|v| v.to_be_bytes()).collect(),
                other => other.as_bytes().to_vec(),
            };
            assert_eq!(all, expected, "{:?}", original.color());
        }
    }

    #[test]
    fn neutral_delta_leaves_every_sample_unchanged() {
        let mut original = DynamicImage::ImageRgba16(ImageBuffer::from_fn(37, 23, |x, y| {
            image::Rgba([(x * 1700) as u16, (y * 2800) as u16, 65535, (x * y) as u16])
        }));
        let before = original.clone();
        apply_layers(&mut original, &[neutral(9, 6)], &|_| {}).unwrap();
        assert_eq!(original, before);
    }

    #[test]
    fn a_uniform_change_is_applied_everywhere_and_clipped() {
        let mut original = DynamicImage::ImageRgb8(ImageBuffer::from_fn(20, 20, |x, _| {
            image::Rgb([x as u8 * 12, 250, 3])
        }));
        let layer = DeltaLayer {
            image: DynamicImage::ImageRgb8(ImageBuffer::from_pixel(
                5,
                5,
                image::Rgb([137, 137, 117]),
            )),
            area: Rect {
                x: 0,
                y: 0,
                width: 5,
                height: 5,
            },
        };
        apply_layers(&mut original, &[layer], &|_| {}).unwrap();
        let out = original.to_rgb8();
        for (x, _, p) in out.enumerate_pixels() {
            assert_eq!(p.0, [x as u8 * 12 + 10, 255, 0]);
        }
    }

    #[test]
    fn sixteen_bit_original_moves_257_per_delta_level() {
        let mut original =
            DynamicImage::ImageLuma16(ImageBuffer::from_pixel(4, 4, image::Luma([1000u16])));
        let layer = DeltaLayer {
            image: DynamicImage::ImageLuma8(ImageBuffer::from_pixel(2, 2, image::Luma([128u8]))),
            area: Rect {
                x: 0,
                y: 0,
                width: 2,
                height: 2,
            },
        };
        apply_layers(&mut original, &[layer], &|_| {}).unwrap();
        assert!(original.to_luma16().iter().all(|&v| v == 1257));
    }

    #[test]
    fn padding_outside_the_area_never_reaches_the_output() {
        // A delta whose padding holds a huge change; only the central area is neutral.
        let mut img = ImageBuffer::from_pixel(8, 8, image::Rgb([255u8, 0, 255]));
        for y in 2..6 {
            for x in 0..8 {
                img.put_pixel(x, y, image::Rgb([127, 127, 127]));
            }
        }
        let layer = DeltaLayer {
            image: DynamicImage::ImageRgb8(img),
            area: Rect {
                x: 0,
                y: 2,
                width: 8,
                height: 4,
            },
        };
        let mut original =
            DynamicImage::ImageRgb8(ImageBuffer::from_pixel(32, 16, image::Rgb([90, 90, 90])));
        let before = original.clone();
        apply_layers(&mut original, &[layer], &|_| {}).unwrap();
        assert_eq!(original, before);
    }

    #[test]
    fn colour_delta_on_gray_is_refused_until_promoted() {
        let mut gray = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(4, 4, image::Luma([9u8])));
        let layers = [neutral(2, 2)];
        assert_eq!(
            apply_layers(&mut gray, &layers, &|_| {}),
            Err(MergeError::ColourDeltaOnGray)
        );
        let mut promoted = promote_for_colour(gray, &layers);
        apply_layers(&mut promoted, &layers, &|_| {}).unwrap();
        assert_eq!(promoted.color(), image::ColorType::Rgb8);
    }
}
