//! Prints size and time of darkroom's PNG encoder settings on one image, for the README's
//! PNG table: `cargo run --release --example png_tradeoffs -- IMAGE`.

use darkroom::io::png_encode::{encode, FilterChoice, PngOptions, Strategy};
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: png_tradeoffs IMAGE");
    let image = darkroom::io::decode::load(path.as_ref(), &Default::default())
        .expect("decodable image")
        .image;
    println!("| filter | deflate | time (median of 3) | bytes |");
    println!("|---|---|---|---|");
    for filter in [FilterChoice::Adaptive, FilterChoice::Paeth] {
        for (level, strategy) in [
            (0u32, Strategy::Runs),
            (2u32, Strategy::Default),
            (6, Strategy::Default),
            (2, Strategy::Rle),
            (2, Strategy::HuffmanOnly),
        ] {
            let options = PngOptions {
                level,
                filter,
                strategy,
                ..PngOptions::default()
            };
            let mut times = Vec::new();
            let mut size = 0;
            for _ in 0..3 {
                let start = Instant::now();
                size = encode(&image, None, &[], &options).unwrap().len();
                times.push(start.elapsed());
            }
            times.sort();
            let deflate = if strategy == Strategy::Runs {
                "darkroom Runs".to_string()
            } else {
                format!("zlib level {level} {strategy:?}")
            };
            println!(
                "| {filter:?} | {deflate} | {:.0} ms | {size} |",
                times[1].as_secs_f64() * 1000.0
            );
        }
    }
}
