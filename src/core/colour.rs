//! Colour management for training sets: an embedded ICC profile converted to sRGB with a real
//! colour-management engine (`moxcms`, the CMS the `image` crate itself uses), relative
//! colorimetric intent.

use image::{DynamicImage, ImageBuffer};
use moxcms::{ColorProfile, Layout, TransformOptions};

/// What happened to an image's colours.
#[derive(Debug, Clone, PartialEq)]
pub enum ColourResult {
    /// No profile: the pixels are taken as sRGB, as browsers and trainers do.
    AssumedSrgb,
    /// Converted from the embedded profile (its description, when it has one).
    Converted(String),
    /// The profile could not be used; the pixels were kept as they were.
    Kept(String),
}

impl ColourResult {
    pub fn describe(&self) -> String {
        match self {
            ColourResult::AssumedSrgb => "no ICC profile: taken as sRGB".into(),
            ColourResult::Converted(from) => format!("converted from ICC '{from}' to sRGB"),
            ColourResult::Kept(why) => format!("ICC profile not applied ({why}); pixels kept"),
        }
    }
}

/// The sRGB profile outputs are tagged with (JPEG, WebP, TIFF; PNG gets an `sRGB` chunk).
/// Its header date is fixed, so the same input gives the same output bytes whenever it runs.
pub fn srgb_icc() -> Vec<u8> {
    static PROFILE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut profile = ColorProfile::new_srgb()
            .encode()
            .expect("the built-in sRGB profile encodes");
        // moxcms stamps the encoding time into the header (bytes 24..36, six big-endian u16s);
        // the profile ID is left zero, so the date can be rewritten without a checksum.
        const DATE: [u16; 6] = [2024, 1, 1, 0, 0, 0];
        for (i, field) in DATE.iter().enumerate() {
            profile[24 + 2 * i..26 + 2 * i].copy_from_slice(&field.to_be_bytes());
        }
        profile
    });
    PROFILE.clone()
}

/// Converts `image` from `icc` to sRGB. Grey images (and grey profiles) are left alone.
pub fn to_srgb(image: DynamicImage, icc: Option<&[u8]>) -> (DynamicImage, ColourResult) {
    let Some(icc) = icc else {
        return (image, ColourResult::AssumedSrgb);
    };
    let source = match ColorProfile::new_from_slice(icc) {
        Ok(p) => p,
        Err(e) => return (image, ColourResult::Kept(format!("unreadable: {e}"))),
    };
    let name = profile_name(&source);
    transform(image, &source, &ColorProfile::new_srgb(), name)
}

/// Converts `image` from sRGB to `icc` (the inverse of [`to_srgb`]): what a tool returns in
/// sRGB goes back into its original's colour space.
pub fn from_srgb(image: DynamicImage, icc: &[u8]) -> (DynamicImage, ColourResult) {
    let target = match ColorProfile::new_from_slice(icc) {
        Ok(p) => p,
        Err(e) => return (image, ColourResult::Kept(format!("unreadable: {e}"))),
    };
    let name = profile_name(&target);
    transform(image, &ColorProfile::new_srgb(), &target, name)
}

/// Converts `image` from `source` to `target`; `name` names the profile that is not sRGB.
fn transform(
    image: DynamicImage,
    source: &ColorProfile,
    target: &ColorProfile,
    name: String,
) -> (DynamicImage, ColourResult) {
    if !image.color().has_color() {
        return (image, ColourResult::Kept("grey image".into()));
    }
    let options = TransformOptions::default();
    let failed = |e: moxcms::CmsError| ColourResult::Kept(format!("{name}: {e}"));
    match image {
        DynamicImage::ImageRgb8(mut buffer) => {
            match source.create_transform_8bit(Layout::Rgb, target, Layout::Rgb, options) {
                Ok(t) => {
                    let src = buffer.as_raw().clone();
                    if let Err(e) = t.transform(&src, &mut buffer) {
                        return (DynamicImage::ImageRgb8(buffer), failed(e));
                    }
                    (
                        DynamicImage::ImageRgb8(buffer),
                        ColourResult::Converted(name),
                    )
                }
                Err(e) => (DynamicImage::ImageRgb8(buffer), failed(e)),
            }
        }
        DynamicImage::ImageRgba8(mut buffer) => {
            match source.create_transform_8bit(Layout::Rgba, target, Layout::Rgba, options) {
                Ok(t) => {
                    let src = buffer.as_raw().clone();
                    if let Err(e) = t.transform(&src, &mut buffer) {
                        return (DynamicImage::ImageRgba8(buffer), failed(e));
                    }
                    (
                        DynamicImage::ImageRgba8(buffer),
                        ColourResult::Converted(name),
                    )
                }
                Err(e) => (DynamicImage::ImageRgba8(buffer), failed(e)),
            }
        }
        DynamicImage::ImageRgb16(buffer) => convert16(buffer, Layout::Rgb, source, target, name)
            .map_or_else(
                |(b, r)| (DynamicImage::ImageRgb16(b), r),
                |(b, r)| (DynamicImage::ImageRgb16(b), r),
            ),
        DynamicImage::ImageRgba16(buffer) => convert16(buffer, Layout::Rgba, source, target, name)
            .map_or_else(
                |(b, r)| (DynamicImage::ImageRgba16(b), r),
                |(b, r)| (DynamicImage::ImageRgba16(b), r),
            ),
        other => {
            let converted = if other.color().has_alpha() {
                DynamicImage::ImageRgba16(other.to_rgba16())
            } else {
                DynamicImage::ImageRgb16(other.to_rgb16())
            };
            transform(converted, source, target, name)
        }
    }
}

type Converted16<P> = (ImageBuffer<P, Vec<u16>>, ColourResult);

fn convert16<P: image::Pixel<Subpixel = u16>>(
    mut buffer: ImageBuffer<P, Vec<u16>>,
    layout: Layout,
    source: &ColorProfile,
    target: &ColorProfile,
    name: String,
) -> Result<Converted16<P>, Converted16<P>> {
    let transform =
        match source.create_transform_16bit(layout, target, layout, TransformOptions::default()) {
            Ok(t) => t,
            Err(e) => return Err((buffer, ColourResult::Kept(format!("{name}: {e}")))),
        };
    let src = buffer.as_raw().clone();
    match transform.transform(&src, &mut buffer) {
        Ok(()) => Ok((buffer, ColourResult::Converted(name))),
        Err(e) => Err((buffer, ColourResult::Kept(format!("{name}: {e}")))),
    }
}

/// The profile's description, or "unnamed".
fn profile_name(profile: &ColorProfile) -> String {
    use moxcms::ProfileText;
    match &profile.description {
        Some(ProfileText::PlainString(s)) => s.clone(),
        Some(ProfileText::Localizable(list)) => list
            .first()
            .map(|l| l.value.clone())
            .unwrap_or_else(|| "unnamed".into()),
        Some(ProfileText::Description(d)) => d.ascii_string.clone(),
        None => "unnamed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_p3_red_leaves_the_srgb_gamut_clipped_and_srgb_is_identity() {
        let p3 = ColorProfile::new_display_p3().encode().unwrap();
        let image =
            DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 4, image::Rgb([200u8, 60, 60])));
        let (out, result) = to_srgb(image.clone(), Some(&p3));
        assert!(matches!(result, ColourResult::Converted(_)), "{result:?}");
        let p = out.to_rgb8().get_pixel(0, 0).0;
        // P3 (200, 60, 60) is more saturated than sRGB can show: red rises, green/blue fall.
        assert!(p[0] > 210 && p[1] < 50 && p[2] < 55, "{p:?}");
        let (same, _) = to_srgb(image.clone(), Some(&srgb_icc()));
        let q = same.to_rgb8().get_pixel(0, 0).0;
        for c in 0..3 {
            assert!((i32::from(q[c]) - [200, 60, 60][c]).abs() <= 1, "{q:?}");
        }
        let (kept, result) = to_srgb(image, Some(b"not a profile"));
        assert!(matches!(result, ColourResult::Kept(_)));
        assert_eq!(kept.to_rgb8().get_pixel(0, 0).0, [200, 60, 60]);
    }

    #[test]
    fn the_srgb_profile_carries_a_fixed_date_so_outputs_are_reproducible() {
        let profile = srgb_icc();
        // Bytes 24..36 of an ICC header are the creation date: 2024-01-01 00:00:00.
        assert_eq!(
            &profile[24..36],
            &[0x07, 0xe8, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let parsed = ColorProfile::new_from_slice(&profile).unwrap();
        assert!(parsed.is_matrix_shaper());
    }
}
