//! The IO shell: decoding untrusted files, encoding outputs, durable writes, external
//! programs and what the machine has to spare. The pure core never calls into here.

pub mod atomic;
pub mod clock;
pub mod comfyui;
pub mod decode;
pub mod deflate;
pub mod encode;
pub mod exif;
pub mod external;
pub mod gif;
pub mod hash;
pub mod jpeg_reduced;
pub mod metadata;
pub mod names;
pub mod onnx;
pub mod png_encode;
pub mod system;
pub mod traffic;
pub mod xmp;
