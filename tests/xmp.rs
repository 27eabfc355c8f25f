//! XMP and IPTC survive every recipe: a Lightroom-style export (a 15 KB XMP packet with
//! keywords, rating, title and `tiff:Orientation`, an IPTC block, EXIF orientation 6) goes
//! through merge, upscale and enhance into PNG, JPEG, WebP and TIFF outputs.

mod common;

use common::{run_ok, shared_dir, testdata};
use darkroom::io::xmp;
use std::path::Path;

/// A Lightroom-like XMP packet of about 15 KB.
fn packet() -> String {
    let keywords: String = (0..400)
        .map(|i| format!("<rdf:li>harbour keyword {i:03}</rdf:li>"))
        .collect();
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description rdf:about=\"\" xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\" \
         xmlns:dc=\"http://purl.org/dc/elements/1.1/\" xmlns:tiff=\"http://ns.adobe.com/tiff/1.0/\" \
         xmp:Rating=\"4\" tiff:Orientation=\"6\"><dc:title><rdf:Alt><rdf:li xml:lang=\"x-default\">\
         Evening at the harbour</rdf:li></rdf:Alt></dc:title><dc:subject><rdf:Bag>{keywords}\
         </rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>{}<?xpacket end=\"w\"?>",
        " ".repeat(2048)
    )
}

/// An IPTC record inside a Photoshop resource block (8BIM 0x0404): a caption.
fn iptc() -> Vec<u8> {
    let caption = b"Boats at dusk";
    let mut record = vec![0x1c, 0x02, 0x78];
    record.extend_from_slice(&(caption.len() as u16).to_be_bytes());
    record.extend_from_slice(caption);
    let mut block = b"8BIM\x04\x04\0\0".to_vec();
    block.extend_from_slice(&(record.len() as u32).to_be_bytes());
    block.extend_from_slice(&record);
    if record.len() % 2 == 1 {
        block.push(0);
    }
    block
}

/// `jpeg` with an XMP APP1 and an IPTC APP13 added after its existing APP segments.
fn with_packets(jpeg: &[u8]) -> Vec<u8> {
    let packets = xmp::Packets {
        xmp: Some(packet().into_bytes()),
        iptc: Some(iptc()),
    };
    let canvas = xmp::Canvas {
        width: 1,
        height: 1,
        alpha: false,
    };
    // embed() only adds segments; it keeps the packet as given (orientation 6 stays here).
    xmp::embed(
        jpeg.to_vec(),
        darkroom::io::encode::OutputFormat::Jpeg,
        &packets,
        canvas,
    )
}

fn check_output(path: &Path, expect_iptc: bool) {
    let bytes = std::fs::read(path).unwrap();
    let format = darkroom::io::decode::sniff(&bytes).unwrap();
    let read = xmp::read(&bytes, format);
    let text = String::from_utf8(
        read.xmp
            .unwrap_or_else(|| panic!("{}: no XMP", path.display())),
    )
    .unwrap();
    assert!(
        text.contains("harbour keyword 399")
            && text.contains("Evening at the harbour")
            && text.contains("xmp:Rating=\"4\""),
        "{}: the packet's keywords, title and rating",
        path.display()
    );
    assert!(
        text.contains("tiff:Orientation=\"1\"") && !text.contains("tiff:Orientation=\"6\""),
        "{}: the pixels are upright, and so is the packet",
        path.display()
    );
    assert_eq!(text.len(), packet().len());
    if expect_iptc {
        assert_eq!(
            read.iptc.as_deref(),
            Some(iptc().as_slice()),
            "{}",
            path.display()
        );
    }
}

#[test]
fn xmp_and_iptc_are_carried_through_merge_into_every_output_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = with_packets(&std::fs::read(testdata("photo_exif_orientation6.jpg")).unwrap());
    std::fs::write(d.join("export.jpg"), source).unwrap();
    run_ok(d, &["split", "export.jpg", "256", "256"]);
    run_ok(
        d,
        &["delta", "export.jpg", "export_proxy.png", "256", "256"],
    );
    for (name, iptc) in [
        ("out.png", false),
        ("out.jpg", true),
        ("out.webp", false),
        ("out.tif", true),
    ] {
        run_ok(
            d,
            &["merge", "export.jpg", "export_proxy_delta.png", "-o", name],
        );
        check_output(&d.join(name), iptc);
    }
}

#[test]
fn xmp_is_carried_through_upscale_and_enhance() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let small = image::open(testdata("photo_coffee_600x400.png"))
        .unwrap()
        .resize_exact(48, 32, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let mut jpeg = Vec::new();
    small
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    std::fs::write(d.join("small.jpg"), with_packets(&jpeg)).unwrap();
    let models = shared_dir().join("models");
    let models = models.to_str().unwrap();
    let model = [
        "--model",
        "waifu2x-upconv7-photo-x2",
        "--models-dir",
        models,
    ];
    run_ok(
        d,
        &[&["upscale", "small.jpg", "-o", "up.png"][..], &model[..]].concat(),
    );
    check_output(&d.join("up.png"), false);
    run_ok(
        d,
        &[&["upscale", "small.jpg", "-o", "up.jpg"][..], &model[..]].concat(),
    );
    check_output(&d.join("up.jpg"), true);
    run_ok(
        d,
        &[
            &["enhance", "small.jpg", "-o", "enhanced.webp"][..],
            &model[..],
        ]
        .concat(),
    );
    check_output(&d.join("enhanced.webp"), false);
}
