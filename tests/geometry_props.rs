//! Padding geometry, for many sizes: the merge reconstructs exactly the original's size and
//! nothing of the padded border reaches the output, however wild the padding in the delta.

use darkroom::core::delta::{compute, DeltaDepth};
use darkroom::core::geometry::{ProxyGeometry, Target};
use darkroom::core::merge::{apply_layers, DeltaLayer};
use darkroom::core::proxy::make_proxy;
use image::{DynamicImage, ImageBuffer, Rgb};
use proptest::prelude::*;

fn original(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 % 256) as u8,
            (y * 5 % 256) as u8,
            ((x + y) % 256) as u8,
        ])
    }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn padding_never_reaches_the_output(w in 1u32..300, h in 1u32..300, tw in 1u32..128, th in 1u32..128) {
        let img = original(w, h);
        let g = ProxyGeometry::plan(w, h, Target::pixels(tw, th));
        prop_assert_eq!((g.canvas_width, g.canvas_height), (tw.max(g.scaled_width), th.max(g.scaled_height)));
        let proxy = make_proxy(&img, &g).unwrap();
        // The "model" leaves the content alone but paints the padding white.
        let mut processed = proxy.to_rgb8();
        for (x, y, p) in processed.enumerate_pixels_mut() {
            let inside = x >= g.pad_left && x < g.pad_left + g.scaled_width && y >= g.pad_top && y < g.pad_top + g.scaled_height;
            if !inside {
                *p = Rgb([255, 255, 255]);
            }
        }
        let deltas = compute(&proxy, &DynamicImage::ImageRgb8(processed), DeltaDepth::Eight, false).unwrap();
        let mut merged = img.clone();
        let layer = DeltaLayer {
            image: deltas.main,
            area: g.area(),
        };
        apply_layers(&mut merged, &[layer], &|_| {}).unwrap();
        prop_assert_eq!((merged.width(), merged.height()), (w, h));
        prop_assert!(merged == img, "padding leaked into a {}x{} merge via {}x{}", w, h, tw, th);
    }
}
