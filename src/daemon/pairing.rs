//! Pairing a file returned by an external tool with the proxy it was made from. Pure: it
//! sees names, sizes and signatures, never files.
//!
//! In order: (1) by name, the proxy's stem is a prefix of the returned stem (ComfyUI's
//! `photo_dr000042_proxy_00001_.png`); (2) by the job id darkroom put in the proxy's name
//! (`dr000042` anywhere in the returned name, or the proxy's `darkroom:job` PNG text chunk
//! when the tool kept it); (3) by content, the best signature correlation among pending
//! proxies of the same size, above a threshold and clearly ahead of the runner-up. An
//! ambiguous content match is held, never guessed.

use crate::core::signature::Signature;

/// A proxy that can still take a return.
#[derive(Debug, Clone)]
pub struct PendingProxy {
    pub job_id: i64,
    /// The proxy file's stem, e.g. `photo_dr000042_proxy`.
    pub stem: String,
    pub width: u32,
    pub height: u32,
    pub signature: Option<Signature>,
}

/// How a return was paired, or why it was not.
#[derive(Debug, Clone, PartialEq)]
pub enum Pairing {
    Name(i64),
    JobId(i64),
    Content {
        job_id: i64,
        correlation: f64,
    },
    /// Two or more proxies match about as well: the return is held.
    Ambiguous(Vec<(i64, f64)>),
    /// Nothing matches well enough; the best candidate, if any, for the log.
    NoMatch(Option<(i64, f64)>),
}

impl Pairing {
    /// The job it pairs with, when it does.
    pub fn job_id(&self) -> Option<i64> {
        match self {
            Pairing::Name(id) | Pairing::JobId(id) => Some(*id),
            Pairing::Content { job_id, .. } => Some(*job_id),
            _ => None,
        }
    }

    /// `name`, `job-id` or `content`, as recorded in the journal and metadata.
    pub fn method(&self) -> &'static str {
        match self {
            Pairing::Name(_) => "name",
            Pairing::JobId(_) => "job-id",
            Pairing::Content { .. } => "content",
            Pairing::Ambiguous(_) => "ambiguous",
            Pairing::NoMatch(_) => "none",
        }
    }
}

/// The name darkroom gives the proxy of job `id` made from an original with stem `stem`.
pub fn proxy_stem(original_stem: &str, job_id: i64) -> String {
    format!("{original_stem}_{}_proxy", job_token(job_id))
}

/// `dr000042`: the job id as it appears in proxy names.
pub fn job_token(job_id: i64) -> String {
    format!("dr{job_id:06}")
}

/// (1) The pending proxy whose stem is the longest prefix of `returned_stem`.
pub fn by_name(returned_stem: &str, pending: &[PendingProxy]) -> Option<i64> {
    pending
        .iter()
        .filter(|p| returned_stem.starts_with(&p.stem))
        .max_by_key(|p| p.stem.len())
        .map(|p| p.job_id)
}

/// (2) A `dr<digits>` token in a file stem, delimited by anything but letters and digits.
pub fn job_id_in_name(stem: &str) -> Option<i64> {
    let bytes = stem.as_bytes();
    let mut start = 0;
    while let Some(offset) = stem[start..].find("dr") {
        let at = start + offset;
        let before_ok = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let digits_end = bytes[at + 2..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| at + 2 + n);
        let after_ok = digits_end == bytes.len() || !bytes[digits_end].is_ascii_alphabetic();
        if before_ok && after_ok && digits_end >= at + 8 {
            if let Ok(id) = stem[at + 2..digits_end].parse() {
                return Some(id);
            }
        }
        start = at + 2;
    }
    None
}

/// (3) The pending proxy of the same size whose signature correlates best with `signature`.
pub fn by_content(
    signature: &Signature,
    size: (u32, u32),
    pending: &[PendingProxy],
    threshold: f64,
    margin: f64,
) -> Pairing {
    let mut scored: Vec<(i64, f64)> = pending
        .iter()
        .filter(|p| (p.width, p.height) == size)
        .filter_map(|p| {
            p.signature
                .as_ref()
                .map(|s| (p.job_id, s.correlation(signature)))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    match scored.as_slice() {
        [] => Pairing::NoMatch(None),
        [(id, best), rest @ ..] => {
            if *best < threshold {
                return Pairing::NoMatch(Some((*id, *best)));
            }
            let close: Vec<(i64, f64)> = rest
                .iter()
                .filter(|(_, c)| best - c < margin)
                .copied()
                .collect();
            if close.is_empty() {
                Pairing::Content {
                    job_id: *id,
                    correlation: *best,
                }
            } else {
                let mut all = vec![(*id, *best)];
                all.extend(close);
                Pairing::Ambiguous(all)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, Rgb, RgbImage};

    fn pending(id: i64, stem: &str, seed: u32) -> PendingProxy {
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(32, 32, |x, y| {
            let v = ((x * seed + y * (seed ^ 7)) % 251) as u8;
            Rgb([v, v, v])
        }));
        PendingProxy {
            job_id: id,
            stem: stem.into(),
            width: 32,
            height: 32,
            signature: Some(Signature::of(&image)),
        }
    }

    #[test]
    fn names_pair_by_longest_prefix() {
        let list = [
            pending(1, "a_dr000001_proxy", 3),
            pending(12, "a_dr000012_proxy", 5),
        ];
        assert_eq!(by_name("a_dr000012_proxy_00001_", &list), Some(12));
        assert_eq!(by_name("a_dr000001_proxy", &list), Some(1));
        assert_eq!(by_name("something_else", &list), None);
    }

    #[test]
    fn job_tokens_are_found_only_as_whole_tokens() {
        assert_eq!(job_id_in_name("result-dr000042"), Some(42));
        assert_eq!(job_id_in_name("dr000042_upscaled"), Some(42));
        assert_eq!(job_id_in_name("x_dr0000421x"), None);
        assert_eq!(job_id_in_name("hydr000042"), None);
        assert_eq!(
            job_id_in_name("dr42"),
            None,
            "ids are written with six digits at least"
        );
        assert_eq!(job_token(42), "dr000042");
    }

    #[test]
    fn content_takes_a_clear_winner_and_holds_a_tie() {
        let a = pending(1, "a", 3);
        let b = pending(2, "b", 11);
        let sig = a.signature.clone().unwrap();
        assert_eq!(
            by_content(&sig, (32, 32), &[a.clone(), b.clone()], 0.9, 0.02).job_id(),
            Some(1)
        );
        let twin = PendingProxy {
            job_id: 3,
            ..a.clone()
        };
        assert!(matches!(
            by_content(&sig, (32, 32), &[a.clone(), twin], 0.9, 0.02),
            Pairing::Ambiguous(v) if v.len() == 2
        ));
        assert!(matches!(
            by_content(&sig, (64, 64), &[a, b], 0.9, 0.02),
            Pairing::NoMatch(None)
        ));
    }
}
