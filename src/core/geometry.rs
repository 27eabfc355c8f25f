//! Proxy geometry: how a full-resolution image maps onto a model-sized proxy canvas.
//!
//! The rules follow imgproxyproc: `scale = min(W/w, H/h)` of the upright image, the scaled
//! size is truncated to whole pixels, and a pixel target is centre-padded to exactly `W x H`.
//! Percent targets give a canvas equal to the scaled size (no padding). All arithmetic is
//! integer where it decides a size, so `4032 * (1024/4032)` is 1024, never 1023.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One side of a split target as the user wrote it: `512` or `25%`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extent {
    /// An exact number of pixels; the proxy canvas is padded to it.
    Pixels(u32),
    /// A percentage of the original side, in (0, 1000].
    Percent(f64),
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExtentError {
    #[error("'{0}' is not a size: write pixels like 512 or a percentage like 25%")]
    Unparsable(String),
    #[error("'{0}': a pixel size must be between 1 and 65535")]
    PixelsOutOfRange(String),
    #[error("'{0}': a percentage must be above 0% and at most 1000%")]
    PercentOutOfRange(String),
}

impl FromStr for Extent {
    type Err = ExtentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Some(number) = trimmed.strip_suffix('%') {
            let percent: f64 = number
                .trim()
                .parse()
                .map_err(|_| ExtentError::Unparsable(text.to_string()))?;
            if !(percent > 0.0 && percent <= 1000.0 && percent.is_finite()) {
                return Err(ExtentError::PercentOutOfRange(text.to_string()));
            }
            return Ok(Extent::Percent(percent));
        }
        let pixels: u64 = trimmed
            .parse()
            .map_err(|_| ExtentError::Unparsable(text.to_string()))?;
        if pixels == 0 || pixels > 65535 {
            return Err(ExtentError::PixelsOutOfRange(text.to_string()));
        }
        Ok(Extent::Pixels(pixels as u32))
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extent::Pixels(px) => write!(f, "{px}"),
            Extent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A split target: width and height, each in pixels or percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub width: Extent,
    pub height: Extent,
}

impl Target {
    pub const fn pixels(width: u32, height: u32) -> Self {
        Target {
            width: Extent::Pixels(width),
            height: Extent::Pixels(height),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Target {
    type Err = ExtentError;

    /// Parses `1024x1024`, `25%` (both sides) or `25%x50%`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.split_once('x') {
            Some((w, h)) => Ok(Target {
                width: w.parse()?,
                height: h.parse()?,
            }),
            None => {
                let both: Extent = lower.parse()?;
                Ok(Target {
                    width: both,
                    height: both,
                })
            }
        }
    }
}

/// A rectangle in pixels: a tile, or the part of a proxy (or delta) that holds the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Where the scaled original sits inside the proxy canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyGeometry {
    /// Upright (EXIF orientation applied) size of the original.
    pub original_width: u32,
    pub original_height: u32,
    /// Size of the proxy image file (the canvas, padding included).
    pub canvas_width: u32,
    pub canvas_height: u32,
    /// Size of the resampled original inside the canvas.
    pub scaled_width: u32,
    pub scaled_height: u32,
    /// Offset of the scaled original inside the canvas (left and top padding).
    pub pad_left: u32,
    pub pad_top: u32,
}

impl ProxyGeometry {
    /// Plans the proxy for an upright original of `width x height`.
    #[must_use]
    pub fn plan(width: u32, height: u32, target: Target) -> Self {
        assert!(width > 0 && height > 0, "images have at least one pixel");
        let (w, h) = (u64::from(width), u64::from(height));
        // Each side as a rational bound num/den relative to the original side.
        let ratio = |extent: Extent, side: u64| -> (u64, u64) {
            match extent {
                Extent::Pixels(px) => (u64::from(px), side),
                // Percent as a rational with 1e6 resolution keeps the math integral.
                Extent::Percent(p) => ((p * 10_000.0).round() as u64, 1_000_000),
            }
        };
        let (nw, dw) = ratio(target.width, w);
        let (nh, dh) = ratio(target.height, h);
        // scale = min(nw/dw, nh/dh): compare nw*dh with nh*dw.
        let (num, den) = if nw * dh <= nh * dw {
            (nw, dw)
        } else {
            (nh, dh)
        };
        let scaled = |side: u64| -> u32 { ((side * num) / den).clamp(1, 65535 * 10) as u32 };
        let (scaled_width, scaled_height) = (scaled(w), scaled(h));
        let canvas_width = match target.width {
            Extent::Pixels(px) => px.max(scaled_width),
            Extent::Percent(_) => scaled_width,
        };
        let canvas_height = match target.height {
            Extent::Pixels(px) => px.max(scaled_height),
            Extent::Percent(_) => scaled_height,
        };
        ProxyGeometry {
            original_width: width,
            original_height: height,
            canvas_width,
            canvas_height,
            scaled_width,
            scaled_height,
            pad_left: (canvas_width - scaled_width) / 2,
            pad_top: (canvas_height - scaled_height) / 2,
        }
    }

    /// Recovers the geometry from an original and a canvas size alone, for deltas that
    /// arrive without metadata: the canvas is taken as a pixel target. A padding of one pixel
    /// or less on an axis is what truncating a percent target leaves, so it is read as none.
    #[must_use]
    pub fn infer(width: u32, height: u32, canvas_width: u32, canvas_height: u32) -> Self {
        let mut g = Self::plan(width, height, Target::pixels(canvas_width, canvas_height));
        if g.canvas_width - g.scaled_width <= 1 && g.canvas_height - g.scaled_height <= 1 {
            g.scaled_width = g.canvas_width;
            g.scaled_height = g.canvas_height;
            g.pad_left = 0;
            g.pad_top = 0;
        }
        g
    }

    pub fn pad_right(&self) -> u32 {
        self.canvas_width - self.scaled_width - self.pad_left
    }

    pub fn pad_bottom(&self) -> u32 {
        self.canvas_height - self.scaled_height - self.pad_top
    }

    /// The part of the canvas that holds the scaled original (everything but the padding).
    pub fn area(&self) -> Rect {
        Rect {
            x: self.pad_left,
            y: self.pad_top,
            width: self.scaled_width,
            height: self.scaled_height,
        }
    }

    pub fn is_padded(&self) -> bool {
        self.canvas_width != self.scaled_width || self.canvas_height != self.scaled_height
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landscape_photo_into_square_is_letterboxed() {
        let g = ProxyGeometry::plan(4032, 3024, Target::pixels(1024, 1024));
        assert_eq!((g.scaled_width, g.scaled_height), (1024, 768));
        assert_eq!((g.pad_left, g.pad_top), (0, 128));
        assert_eq!(g.pad_bottom(), 128);
    }

    #[test]
    fn exact_fit_never_loses_a_pixel_to_float_truncation() {
        for w in [4031u32, 4032, 4033, 3000, 1023, 999] {
            let g = ProxyGeometry::plan(w, 17, Target::pixels(1024, 65535));
            assert_eq!(g.scaled_width, 1024, "w={w}");
        }
    }

    #[test]
    fn percent_targets_have_no_padding() {
        let g = ProxyGeometry::plan(4032, 3024, "25%".parse().unwrap());
        assert_eq!((g.canvas_width, g.canvas_height), (1008, 756));
        assert!(!g.is_padded());
    }

    #[test]
    fn uneven_percentages_keep_the_aspect() {
        let g = ProxyGeometry::plan(1000, 500, "50%x10%".parse().unwrap());
        assert_eq!((g.scaled_width, g.scaled_height), (100, 50));
    }

    #[test]
    fn tiny_image_is_never_scaled_to_zero() {
        let g = ProxyGeometry::plan(4000, 1, Target::pixels(16, 16));
        assert_eq!((g.scaled_width, g.scaled_height), (16, 1));
    }

    #[test]
    fn sizes_are_validated() {
        assert!("0".parse::<Extent>().is_err());
        assert!("0%".parse::<Extent>().is_err());
        assert!("1001%".parse::<Extent>().is_err());
        assert!("abc".parse::<Extent>().is_err());
        assert_eq!("1000%".parse::<Extent>(), Ok(Extent::Percent(1000.0)));
        assert_eq!("512".parse::<Extent>(), Ok(Extent::Pixels(512)));
    }

    #[test]
    fn inference_reads_a_truncated_percent_canvas_as_unpadded() {
        let planned = ProxyGeometry::plan(1001, 999, "25%".parse().unwrap());
        let inferred = ProxyGeometry::infer(1001, 999, planned.canvas_width, planned.canvas_height);
        assert_eq!(inferred, planned);
    }

    #[test]
    fn inference_matches_the_plan_for_pixel_targets() {
        for (w, h, cw, ch) in [
            (4032, 3024, 1024, 1024),
            (17, 9, 64, 64),
            (4032, 1008, 512, 512),
        ] {
            let planned = ProxyGeometry::plan(w, h, Target::pixels(cw, ch));
            assert_eq!(ProxyGeometry::infer(w, h, cw, ch), planned);
        }
    }
}
