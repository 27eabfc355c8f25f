#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| darkroom_fuzz::decode(data, image::ImageFormat::Png));
