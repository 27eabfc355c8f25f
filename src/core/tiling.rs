//! Tiling for image-to-image models: cut an image into tiles, give each tile `context`
//! pixels of its neighbours on every side (clamped at the image border, where the model sees
//! the same edge an untiled run sees), run the model, keep only the tile's own core.
//!
//! Cores abut without overlapping, so nothing needs blending: with a context at least the
//! model's receptive field, every output pixel is computed from exactly the pixels an
//! untiled run uses, and the tiled result equals the untiled one (within float rounding).
//! Tiles are balanced (a 1000-px side with 512-px tiles gives two 500-px tiles, not 512 + 488).
//!
//! Also here: the planar float buffers models take, and the alpha bleed that keeps
//! transparent edges free of halos.

pub use super::geometry::Rect;

/// How big tiles are: a fixed side in input pixels (0: the whole image at once), or the
/// largest that fits a memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileSize {
    Fixed(u32),
    Auto,
}

impl Default for TileSize {
    fn default() -> Self {
        TileSize::Fixed(256)
    }
}

impl std::str::FromStr for TileSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(TileSize::Auto);
        }
        text.parse().map(TileSize::Fixed).map_err(|_| {
            format!("'{text}': a tile is a side in pixels (0 = whole image) or \"auto\"")
        })
    }
}

impl std::fmt::Display for TileSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TileSize::Fixed(side) => write!(f, "{side}"),
            TileSize::Auto => f.write_str("auto"),
        }
    }
}

/// The largest tile side (a multiple of 16, at least 32) whose window, the tile plus
/// `context` on each side, needs no more than `budget` bytes at `bytes_per_pixel` of
/// working memory per input pixel.
pub fn tile_for_budget(budget: u64, bytes_per_pixel: f64, context: u32) -> u32 {
    let window = (budget as f64 / bytes_per_pixel.max(1.0)).sqrt();
    let side = (window - 2.0 * f64::from(context)).clamp(0.0, 16_384.0) as u32;
    (side / 16 * 16).max(32)
}

/// One tile: the core it produces and the (larger) input region it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub core: Rect,
    pub input: Rect,
}

/// Cuts `length` into `parts` balanced spans: (start, length) pairs.
fn spans(length: u32, tile: u32) -> Vec<(u32, u32)> {
    let tile = if tile == 0 { length.max(1) } else { tile };
    let parts = length.div_ceil(tile).max(1);
    let base = length / parts;
    let extra = length % parts;
    let mut out = Vec::with_capacity(parts as usize);
    let mut start = 0;
    for i in 0..parts {
        let len = base + u32::from(i < extra);
        out.push((start, len));
        start += len;
    }
    out
}

/// The tiles of a `width x height` image: cores of at most `tile` pixels a side (0: the
/// whole image in one tile), each read with `context` pixels around it (clamped at the image
/// border, where the model sees the same edge an untiled run sees).
pub fn plan(width: u32, height: u32, tile: u32, context: u32) -> Vec<Tile> {
    let mut tiles = Vec::new();
    for (y, h) in spans(height, tile) {
        for (x, w) in spans(width, tile) {
            let core = Rect {
                x,
                y,
                width: w,
                height: h,
            };
            tiles.push(Tile {
                core,
                input: expand(core, context, width, height),
            });
        }
    }
    tiles
}

/// Grows every window of `tiles` to the size of the largest (shifted inwards at the image
/// border, so each keeps all it read before and more), making them one size: such tiles can
/// be stacked into one batch. Only for batches: the larger border windows cost work.
pub fn one_window_size(tiles: &mut [Tile], width: u32, height: u32) {
    let window_width = tiles.iter().map(|t| t.input.width).max().unwrap_or(0);
    let window_height = tiles.iter().map(|t| t.input.height).max().unwrap_or(0);
    for tile in tiles {
        tile.input = Rect {
            x: tile.input.x.min(width - window_width),
            y: tile.input.y.min(height - window_height),
            width: window_width,
            height: window_height,
        };
    }
}

/// `tiles` in runs of at most `batch` tiles that read windows of one size, in plan order.
pub fn batches(tiles: &[Tile], batch: usize) -> Vec<Vec<Tile>> {
    let mut out: Vec<Vec<Tile>> = Vec::new();
    for tile in tiles {
        match out.last_mut() {
            Some(last)
                if last.len() < batch.max(1)
                    && (last[0].input.width, last[0].input.height)
                        == (tile.input.width, tile.input.height) =>
            {
                last.push(*tile)
            }
            _ => out.push(vec![*tile]),
        }
    }
    out
}

/// `core` grown by `context` on every side, clamped to the image.
pub fn expand(core: Rect, context: u32, width: u32, height: u32) -> Rect {
    let x0 = core.x.saturating_sub(context);
    let y0 = core.y.saturating_sub(context);
    let x1 = (core.x + core.width + context).min(width);
    let y1 = (core.y + core.height + context).min(height);
    Rect {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    }
}

/// Splits a core into four (for retrying a tile that ran out of memory).
pub fn quarter(core: Rect) -> Vec<Rect> {
    let (w0, h0) = (core.width / 2, core.height / 2);
    let mut out = Vec::new();
    for (y, h) in [(core.y, h0), (core.y + h0, core.height - h0)] {
        for (x, w) in [(core.x, w0), (core.x + w0, core.width - w0)] {
            if w > 0 && h > 0 {
                out.push(Rect {
                    x,
                    y,
                    width: w,
                    height: h,
                });
            }
        }
    }
    out
}

/// A planar float image (channels × height × width), the layout of an NCHW model input.
#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    pub channels: usize,
    pub width: u32,
    pub height: u32,
    pub data: Vec<f32>,
}

impl Planar {
    pub fn new(channels: usize, width: u32, height: u32) -> Planar {
        Planar {
            channels,
            width,
            height,
            data: vec![0.0; channels * width as usize * height as usize],
        }
    }

    /// From interleaved samples (`channels` per pixel).
    pub fn from_interleaved(samples: &[f32], channels: usize, width: u32, height: u32) -> Planar {
        let mut planar = Planar::new(channels, width, height);
        let plane = width as usize * height as usize;
        for (i, pixel) in samples.chunks_exact(channels).enumerate() {
            for (c, v) in pixel.iter().enumerate() {
                planar.data[c * plane + i] = *v;
            }
        }
        planar
    }

    /// From interleaved 8-bit RGB, as 0..1 samples; rows in parallel.
    pub fn from_rgb8(samples: &[u8], width: u32, height: u32) -> Planar {
        use rayon::prelude::*;
        let mut planar = Planar::new(3, width, height);
        let (w, plane) = (width as usize, width as usize * height as usize);
        if plane == 0 {
            return planar;
        }
        let (r, rest) = planar.data.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let unit = |v: u8| f32::from(v) / 255.0;
        r.par_chunks_mut(w)
            .zip(g.par_chunks_mut(w))
            .zip(b.par_chunks_mut(w))
            .zip(samples.par_chunks_exact(w * 3))
            .for_each(|(((r, g), b), row)| {
                for (x, pixel) in row.chunks_exact(3).enumerate() {
                    r[x] = unit(pixel[0]);
                    g[x] = unit(pixel[1]);
                    b[x] = unit(pixel[2]);
                }
            });
        planar
    }

    /// Back to interleaved samples.
    pub fn to_interleaved(&self) -> Vec<f32> {
        let plane = self.width as usize * self.height as usize;
        let mut out = vec![0.0; plane * self.channels];
        for c in 0..self.channels {
            for i in 0..plane {
                out[i * self.channels + c] = self.data[c * plane + i];
            }
        }
        out
    }

    /// A copy of the region `r`.
    pub fn crop(&self, r: Rect) -> Planar {
        let mut out = Planar::new(self.channels, r.width, r.height);
        let (w, ow) = (self.width as usize, r.width as usize);
        for c in 0..self.channels {
            let src = c * w * self.height as usize;
            let dst = c * ow * r.height as usize;
            for row in 0..r.height as usize {
                let from = src + (r.y as usize + row) * w + r.x as usize;
                out.data[dst + row * ow..dst + (row + 1) * ow]
                    .copy_from_slice(&self.data[from..from + ow]);
            }
        }
        out
    }

    /// Copies the region `from` of `source` to (`x`, `y`) of `self`.
    pub fn paste(&mut self, source: &Planar, from: Rect, x: u32, y: u32) {
        self.paste_slice(&source.data, source.width, source.height, from, x, y)
            .expect("a planar image matches its own size");
    }

    /// Like [`Planar::paste`] from raw planar samples of `width x height` (a model's output
    /// buffer); refuses a buffer of the wrong length or a region outside either image.
    pub fn paste_slice(
        &mut self,
        source: &[f32],
        width: u32,
        height: u32,
        from: Rect,
        x: u32,
        y: u32,
    ) -> Result<(), String> {
        let (sw, dw) = (width as usize, self.width as usize);
        if source.len() != self.channels * sw * height as usize
            || from.x + from.width > width
            || from.y + from.height > height
            || x + from.width > self.width
            || y + from.height > self.height
        {
            return Err(format!(
                "a {width}x{height} model output does not hold the expected region {from:?}"
            ));
        }
        let (w, rows) = (from.width as usize, self.height as usize);
        let copy_row = |index: usize, row: &mut [f32]| {
            let (c, dy) = (index / rows, index % rows);
            if dy < y as usize || dy >= (y + from.height) as usize {
                return;
            }
            let s = c * sw * height as usize + (from.y as usize + dy - y as usize) * sw;
            let s = s + from.x as usize;
            row[x as usize..x as usize + w].copy_from_slice(&source[s..s + w]);
        };
        // A whole image's output (megabytes) is copied on every core; a tile's on one.
        if w * from.height as usize >= 1 << 18 {
            use rayon::prelude::*;
            self.data
                .par_chunks_mut(dw)
                .enumerate()
                .for_each(|(index, row)| copy_row(index, row));
        } else {
            let first = y as usize;
            for c in 0..self.channels {
                for dy in first..first + from.height as usize {
                    let index = c * rows + dy;
                    copy_row(index, &mut self.data[index * dw..(index + 1) * dw]);
                }
            }
        }
        Ok(())
    }

    /// Clamps every sample to 0..=1 (models overshoot).
    pub fn clamp_unit(&mut self) {
        use rayon::prelude::*;
        self.data
            .par_chunks_mut(1 << 16)
            .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0)));
    }
}

/// Fills the colour of fully transparent pixels with the average colour of their nearest
/// visible neighbours (up to `passes` pixels away), so a model that sees colour without
/// alpha does not pull black (or whatever the transparent area holds) into visible edges.
/// `rgb` is interleaved RGB, `alpha` one value per pixel.
pub fn bleed_into_transparent(
    rgb: &mut [f32],
    alpha: &[f32],
    width: u32,
    height: u32,
    passes: u32,
) {
    let (w, h) = (width as usize, height as usize);
    let mut known: Vec<bool> = alpha.iter().map(|&a| a > 0.0).collect();
    for _ in 0..passes {
        let mut newly = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if known[i] {
                    continue;
                }
                let mut sum = [0.0f32; 3];
                let mut n = 0.0f32;
                for (dx, dy) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if known[j] {
                        for c in 0..3 {
                            sum[c] += rgb[j * 3 + c];
                        }
                        n += 1.0;
                    }
                }
                if n > 0.0 {
                    newly.push((i, [sum[0] / n, sum[1] / n, sum[2] / n]));
                }
            }
        }
        if newly.is_empty() {
            break;
        }
        for (i, colour) in newly {
            rgb[i * 3..i * 3 + 3].copy_from_slice(&colour);
            known[i] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb8_to_planar_matches_the_float_route() {
        let (w, h) = (37u32, 5u32);
        let raw: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let floats: Vec<f32> = raw.iter().map(|&v| f32::from(v) / 255.0).collect();
        let direct = Planar::from_rgb8(&raw, w, h);
        assert_eq!(direct.data, Planar::from_interleaved(&floats, 3, w, h).data);
    }

    #[test]
    fn a_large_paste_on_every_core_equals_the_one_row_at_a_time_copy() {
        // 600 x 500 crosses the size from which rows are copied in parallel.
        let (w, h) = (640u32, 520u32);
        let source = Planar {
            channels: 3,
            width: w,
            height: h,
            data: (0..w * h * 3).map(|i| i as f32).collect(),
        };
        let from = Rect {
            x: 20,
            y: 10,
            width: 600,
            height: 500,
        };
        let mut parallel = Planar::new(3, 700, 560);
        parallel.paste(&source, from, 50, 40);
        let mut serial = Planar::new(3, 700, 560);
        for c in 0..3usize {
            for row in 0..500usize {
                for col in 0..600usize {
                    let s = c * (w * h) as usize + (10 + row) * w as usize + 20 + col;
                    serial.data[c * 700 * 560 + (40 + row) * 700 + 50 + col] = source.data[s];
                }
            }
        }
        assert_eq!(parallel.data, serial.data);
        // A small paste (one tile) takes the single-threaded route to the same result.
        let small = Rect {
            x: 3,
            y: 2,
            width: 30,
            height: 20,
        };
        let mut one = Planar::new(3, 64, 64);
        one.paste(&source, small, 7, 9);
        assert_eq!(
            one.data[2 * 64 * 64 + 9 * 64 + 7],
            source.data[2 * (w * h) as usize + 2 * w as usize + 3]
        );
        assert_eq!(one.data[0], 0.0);
    }

    #[test]
    fn cores_cover_the_image_once_and_are_balanced() {
        for (w, h, tile) in [(1000, 300, 512), (17, 9, 8), (64, 64, 0), (5, 5, 64)] {
            let tiles = plan(w, h, tile, 7);
            let mut hits = vec![0u8; (w * h) as usize];
            for t in &tiles {
                assert!(t.input.x <= t.core.x && t.input.y <= t.core.y);
                assert!(t.input.x + t.input.width <= w && t.input.y + t.input.height <= h);
                for y in t.core.y..t.core.y + t.core.height {
                    for x in t.core.x..t.core.x + t.core.width {
                        hits[(y * w + x) as usize] += 1;
                    }
                }
            }
            assert!(hits.iter().all(|&n| n == 1), "{w}x{h} tile {tile}");
        }
        let widths: Vec<u32> = plan(1000, 10, 512, 0)
            .iter()
            .map(|t| t.core.width)
            .collect();
        assert_eq!(widths, [500, 500]);
    }

    #[test]
    fn context_is_clamped_at_the_border() {
        let t = plan(100, 100, 50, 8);
        let window = |x, y, size| Rect {
            x,
            y,
            width: size,
            height: size,
        };
        assert_eq!(t[0].input, window(0, 0, 58));
        assert_eq!(t[3].input, window(42, 42, 58));
    }

    #[test]
    fn one_window_size_grows_windows_inwards_keeping_what_they_read() {
        // Uneven cores (34 + 33 + 33, 24 + 23 + 23): the middle windows are the largest,
        // 33 + 2 x 5 by 23 + 2 x 5.
        let before = plan(100, 70, 34, 5);
        let mut tiles = before.clone();
        one_window_size(&mut tiles, 100, 70);
        for (old, new) in before.iter().zip(&tiles) {
            let (o, i) = (old.input, new.input);
            assert_eq!((i.width, i.height), (43, 33));
            assert_eq!(old.core, new.core);
            assert!(i.x <= o.x && i.y <= o.y);
            assert!(i.x + i.width >= o.x + o.width && i.y + i.height >= o.y + o.height);
            assert!(i.x + i.width <= 100 && i.y + i.height <= 70);
        }
        // Two tiles a side: every window is already one size, nothing grows.
        let mut two = plan(100, 100, 50, 8);
        one_window_size(&mut two, 100, 100);
        assert_eq!(two, plan(100, 100, 50, 8));
    }

    #[test]
    fn the_budget_tile_is_the_largest_window_that_fits() {
        // 1 GiB at 4 KiB per pixel: a 512-px window; minus 2 x 32 context: 448.
        assert_eq!(tile_for_budget(1 << 30, 4096.0, 32), 448);
        // Rounded down to 16, never below 32.
        assert_eq!(tile_for_budget(1 << 30, 4096.0, 30), 448);
        assert_eq!(tile_for_budget(1 << 20, 4096.0, 64), 32);
        assert_eq!("auto".parse::<TileSize>(), Ok(TileSize::Auto));
        assert_eq!("0".parse::<TileSize>(), Ok(TileSize::Fixed(0)));
        assert!("big".parse::<TileSize>().is_err());
    }

    #[test]
    fn batches_hold_same_size_windows_in_plan_order() {
        let mut tiles = plan(300, 200, 64, 8);
        one_window_size(&mut tiles, 300, 200);
        let groups = batches(&tiles, 4);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), tiles.len());
        assert!(groups.iter().all(|g| g.len() <= 4));
        assert_eq!(groups.concat(), tiles);
        assert!(batches(&tiles, 0).iter().all(|g| g.len() == 1));
    }

    #[test]
    fn planar_round_trips_and_crops() {
        let samples: Vec<f32> = (0..4 * 3 * 3).map(|v| v as f32).collect();
        let p = Planar::from_interleaved(&samples, 3, 4, 3);
        assert_eq!(p.to_interleaved(), samples);
        let c = p.crop(Rect {
            x: 1,
            y: 1,
            width: 2,
            height: 2,
        });
        assert_eq!(c.data[0], samples[(4 + 1) * 3]);
        let mut q = Planar::new(3, 4, 3);
        q.paste(
            &c,
            Rect {
                x: 0,
                y: 0,
                width: 2,
                height: 2,
            },
            1,
            1,
        );
        assert_eq!(
            q.crop(Rect {
                x: 1,
                y: 1,
                width: 2,
                height: 2
            }),
            c
        );
    }

    #[test]
    fn bleeding_fills_transparent_pixels_from_visible_ones() {
        let mut rgb = vec![0.0; 3 * 3];
        rgb[0..3].copy_from_slice(&[1.0, 0.5, 0.25]);
        let alpha = [1.0, 0.0, 0.0];
        bleed_into_transparent(&mut rgb, &alpha, 3, 1, 8);
        assert_eq!(&rgb[6..9], &[1.0, 0.5, 0.25]);
    }
}
